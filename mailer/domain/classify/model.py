"""The classifier's values: what arrived (Kind), why a delivery failed (Reason), what a person wants (Intent)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    BOUNCE = "bounce"  # a delivery failure or delay report (RFC 3464 or an MTA's own prose)
    AUTOREPLY = "autoreply"  # RFC 3834 auto-response: out of office, vacation, ticket receipt
    FEEDBACK = "feedback"  # RFC 5965 abuse / complaint report from a mailbox provider
    DELIVERED = "delivered"  # a DSN that reports success (Action: delivered / relayed / expanded)
    HUMAN_REPLY = "human_reply"  # a person answered
    OTHER = "other"  # anything else, including bytes we could not read


class Reason(StrEnum):
    """Sisimai's reason names, so results compare with its corpus and documentation."""

    USER_UNKNOWN = "userunknown"
    HAS_MOVED = "hasmoved"
    HOST_UNKNOWN = "hostunknown"
    NOT_ACCEPT = "notaccept"
    MAILBOX_FULL = "mailboxfull"
    SUSPEND = "suspend"
    FILTERED = "filtered"
    BLOCKED = "blocked"
    REJECTED = "rejected"
    POLICY_VIOLATION = "policyviolation"
    SPAM_DETECTED = "spamdetected"
    VIRUS_DETECTED = "virusdetected"
    SECURITY_ERROR = "securityerror"
    AUTH_FAILURE = "authfailure"
    BAD_REPUTATION = "badreputation"
    REQUIRE_PTR = "requireptr"
    NOT_COMPLIANT_RFC = "notcompliantrfc"
    NO_RELAYING = "norelaying"
    CONTENT_ERROR = "contenterror"
    MESG_TOO_BIG = "mesgtoobig"
    EXCEED_LIMIT = "exceedlimit"
    TOO_MANY_CONN = "toomanyconn"
    EXPIRED = "expired"
    NETWORK_ERROR = "networkerror"
    SYSTEM_ERROR = "systemerror"
    SYSTEM_FULL = "systemfull"
    MAILER_ERROR = "mailererror"
    SYNTAX_ERROR = "syntaxerror"
    ON_HOLD = "onhold"  # a failure whose cause the report does not say
    UNDEFINED = "undefined"
    # Not failures: the reason a non-bounce report names its recipient.
    VACATION = "vacation"
    FEEDBACK = "feedback"
    DELIVERED = "delivered"


# Sisimai's narrow "hard": the address itself is dead, so mailing it again can never work.
HARD_REASONS = frozenset(
    {Reason.USER_UNKNOWN, Reason.HAS_MOVED, Reason.HOST_UNKNOWN, Reason.NOT_ACCEPT}
)


class Intent(StrEnum):
    PROMISE_TO_PAY = "promise_to_pay"
    PAID_ALREADY = "paid_already"
    DISPUTE = "dispute"
    HARDSHIP = "hardship"  # asks for more time or instalments
    STOP_CONTACT = "stop_contact"
    OTHER = "other"  # a question or anything a person should read


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    reason: Reason
    status: str  # enhanced status code, e.g. "5.1.1"; "" when the report gives none
    permanent: bool  # 5xx: retrying will not help; 4xx: the MTA gave up on a temporary error
    diagnostic: str = ""  # the remote server's words, for the evidence log

    @property
    def hard(self) -> bool:
        """Never mail this address again (unknown user/host), as opposed to a full box or a block."""
        if self.reason is Reason.NOT_ACCEPT:
            return self.permanent  # a null MX is final; a 4xx "not accepting" may pass
        return self.reason in HARD_REASONS

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent back from the reader's worker process: rebuilt by a plain constructor call,
        # twice as fast to unpickle as the dataclass's generic state (see Classification).
        return FailedRecipient, (
            self.address, self.reason, self.status, self.permanent, self.diagnostic,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "reason": str(self.reason),
            "hard": self.hard,
            "permanent": self.permanent,
            "status": self.status or None,
            "diagnostic": self.diagnostic,
        }


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    recipients: tuple[FailedRecipient, ...] = ()
    intent: Intent | None = None  # only for human replies
    promised_date: date | None = None
    return_date: date | None = None  # auto-replies: when the person is back
    reply_text: str = ""  # human replies: the new text, without quotes or signature
    references: tuple[str, ...] = ()  # Message-IDs this answers or bounces
    original_message_id: str | None = None  # bounces: Message-ID of the message that failed
    from_address: str | None = None
    message_id: str | None = None  # the message's own Message-ID, in <...> form
    subject: str = ""
    errors: tuple[
        str, ...
    ] = ()  # what could not be read; a non-empty tuple means quarantine-worthy

    def __reduce__(self) -> tuple[Any, ...]:
        # A catch-up's classifications come back from the reader's worker process by the
        # thousand, to the process that records them and limits the catch-up: a constructor
        # call unpickles in half the time of the dataclass's generic __getstate__/__setstate__.
        return Classification, (
            self.kind, self.recipients, self.intent, self.promised_date, self.return_date,
            self.reply_text, self.references, self.original_message_id, self.from_address,
            self.message_id, self.subject, self.errors,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "recipients": [r.to_json() for r in self.recipients],
            "intent": str(self.intent) if self.intent is not None else None,
            "promised_date": self.promised_date.isoformat() if self.promised_date else None,
            "return_date": self.return_date.isoformat() if self.return_date else None,
            "reply_text": self.reply_text,
            "references": list(self.references),
            "original_message_id": self.original_message_id,
            "from_address": self.from_address,
            "subject": self.subject,
            "errors": list(self.errors),
        }
