"""The business's own mailboxes over IMAP: Sent copies now, the INBOX watcher later."""

from mailer.mailbox.imap import ImapMailbox

__all__ = ["ImapMailbox"]
