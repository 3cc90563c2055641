"""The business's own mailboxes over IMAP: Sent copies, reconciliation and the watcher."""

from mailer.mailbox.imap import ImapMailbox

__all__ = ["ImapMailbox"]
