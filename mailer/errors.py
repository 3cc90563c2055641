"""The one error tree, split by what the caller does next: retry, record, or ask a person."""

from __future__ import annotations


class MailerError(Exception):
    """Base of every error mailer raises on purpose."""


class TemporaryError(MailerError):
    """Try again later: a 4xx reply, a timeout, a dropped connection, a locked database."""


class PermanentError(MailerError):
    """Record it and move on: retrying cannot help (a 5xx reply, a malformed message)."""

    def __init__(self, message: str, *, code: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class NeedsReviewError(MailerError):
    """A person must decide: a dispute, a refusal, every identity blocked."""


class ConfigError(MailerError):
    """Staff-edited input (config, campaign, template, CSV) is wrong; nothing was changed.

    Carries every problem found, each already formatted as ``file:line: message``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ImportRefusedError(ConfigError):
    """A ledger file was refused whole; ``problems`` lists each bad row as ``file:line: why``."""


class AmbiguousDeliveryError(TemporaryError):
    """The message may or may not have been accepted (the connection died after DATA was sent).

    Never retried blindly: the outbox first looks for the Message-ID in the mailbox.
    """


class IdentityUnavailableError(TemporaryError):
    """The sender identity itself cannot send now (login refused, TLS certificate not trusted).

    Not the message's fault: it waits, and a person is told to fix the identity.
    """
