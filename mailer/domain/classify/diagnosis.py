"""One reason per failed recipient: the server's words, the status code and the SMTP command combined."""

from __future__ import annotations

import re

from mailer.domain.classify.model import Reason
from mailer.domain.classify.reasons import reason_from_status, reason_from_text

# Where in the SMTP session the remote server refused: Sisimai's strongest hint after the text.
_COMMAND_RE = (
    (
        "CONN",
        re.compile(
            r"after (?:initial connection|connect)|connection refused|greeting|banner", re.I
        ),
    ),
    ("HELO", re.compile(r"after (?:helo|ehlo)|in reply to (?:helo|ehlo)", re.I)),
    (
        "MAIL",
        re.compile(
            r"after mail from|in reply to mail from|>>> mail from|mail from:?<[^>]*>(?: size=\d+)?:",
            re.I,
        ),
    ),
    (
        "RCPT",
        re.compile(
            r"after rcpt(?: to| command)|in reply to rcpt to|>>> rcpt to|rcpt to:?<[^>]*>:|did not like our rcpt|rcpt_to",
            re.I,
        ),
    ),
    (
        "DATA",
        re.compile(
            r"after (?:end of )?data|in reply to (?:end of )?data|>>> data|after the message|message body",
            re.I,
        ),
    ),
)
_USER_STATUS = re.compile(r"^[45]\.(?:1\.\d+|4\.1|5\.0)$")  # codes servers give unknown users
_FILTER_STATUS = re.compile(r"^[45]\.(?:2\.[01]|7\.1|3\.0)$")  # codes of mailbox filters
# Text reasons a specific status code overrides: they are what a server says in passing
# ("Recipient address rejected: ...") while the code names the real cause.
_WEAK_TEXT = frozenset(
    {Reason.USER_UNKNOWN, Reason.FILTERED, Reason.SYSTEM_ERROR, Reason.CONTENT_ERROR}
)
_STRONG_STATUS = frozenset(
    {
        Reason.AUTH_FAILURE,
        Reason.REQUIRE_PTR,
        Reason.NOT_ACCEPT,
        Reason.CONTENT_ERROR,
        Reason.HOST_UNKNOWN,
        Reason.HAS_MOVED,
        Reason.MESG_TOO_BIG,
        Reason.EXCEED_LIMIT,
        Reason.MAILBOX_FULL,
        Reason.SYSTEM_FULL,
        Reason.SUSPEND,
        Reason.POLICY_VIOLATION,
    }
)


def smtp_command(text: str) -> str:
    """The SMTP command the remote server answered, when the report says: CONN/HELO/MAIL/RCPT/DATA."""
    for command, pattern in _COMMAND_RE:
        if pattern.search(text):
            return command
    return ""


def decide_reason(
    diagnostic: str, status: str, context: str, *, reported_status: bool = True
) -> Reason | None:
    """Combine the server's words, the status code and the SMTP command into one reason."""
    # The line that names the recipient speaks for it; later lines may be another attempt's.
    text_reason = reason_from_text(diagnostic.strip().split("\n", 1)[0]) or reason_from_text(
        diagnostic
    )
    status_reason = reason_from_status(status) if status else None
    command = smtp_command(diagnostic or context)
    reason = text_reason
    if status_reason is not None and (
        reason is None or (reason in _WEAK_TEXT and status_reason in _STRONG_STATUS)
    ):
        reason = status_reason
    # "User unknown" after the message was sent, with a filter's code, or in a DSN whose status
    # names no cause, is a filter's answer (Sisimai's "filtered"): the address may well exist.
    if (
        reason is Reason.USER_UNKNOWN
        and command != "RCPT"
        and not _USER_STATUS.match(status)
        and (
            command == "DATA"
            or _FILTER_STATUS.match(status)
            or (reported_status and status[1:] == ".0.0")
        )
    ):
        reason = Reason.FILTERED
    if (
        reason in (None, Reason.USER_UNKNOWN, Reason.HOST_UNKNOWN, Reason.FILTERED, Reason.ON_HOLD)
        and command == "MAIL"
    ):
        reason = Reason.REJECTED  # refused at MAIL FROM: it is our sender that was refused
    if reason in (
        None,
        Reason.USER_UNKNOWN,
        Reason.FILTERED,
        Reason.REJECTED,
        Reason.ON_HOLD,
    ) and command in ("CONN", "HELO"):
        reason = Reason.BLOCKED  # refused before any address was given: our server was refused
    if reason is Reason.HOST_UNKNOWN and status.startswith("4"):
        reason = Reason.NETWORK_ERROR  # a DNS failure that may pass
    if reason is None and context and context != diagnostic:
        reason = reason_from_text(context)
    return reason
