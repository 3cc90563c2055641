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
# Reports that name the command in a field of their own: m-FILTER ("-------SMTP command\nDATA"),
# X3 and Notes ("SMTP:RCPT host 192.0.2.8: 553 ...").
_NAMED_COMMAND = re.compile(
    r"smtp command\W{0,20}(data|rcpt|mail|helo|ehlo)\b|\bsmtp:(data|rcpt|mail|helo|ehlo)\s", re.I
)
_USER_STATUS = re.compile(r"^[45]\.(?:1\.\d+|4\.1|5\.0)$")  # codes servers give unknown users
# Codes that name a refusal of the mailbox or the message, not an unknown address: X.2.0/X.2.1
# (mailbox status, "mailbox disabled"), X.3.0 (the destination system) and X.7.1 ("delivery not
# authorized"). With them, "user unknown" is a filter's wording unless it was said at RCPT.
_FILTER_STATUS = re.compile(r"^[45]\.(?:2\.[01]|3\.0|7\.1)$")
# qmail appends its give-up sentence to the last error it met; that error is the cause.
_QMAIL_GAVE_UP = re.compile(
    r"i'?m not going to try again; this\s+message has been in the queue too long\.?", re.I
)
# Exchange Online refuses addresses its directory does not know with 5.4.1 ("Recipient address
# rejected: Access denied", directory-based edge blocking), although RFC 3463 says X.4.1 is
# "no answer from host": the words decide, not the code.
_DIRECTORY_REJECT = re.compile(r"recipient address rejected", re.I)
# Text reasons a specific status code overrides: they are what a server says in passing ("not
# found", "content rejected") while a code such as X.2.2 or X.7.26 names the real cause.
_WEAK_TEXT = frozenset(
    {Reason.USER_UNKNOWN, Reason.FILTERED, Reason.SYSTEM_ERROR, Reason.CONTENT_ERROR}
)
# What a server says around a refusal ("rejected by policy", "access denied"): a code naming a bad
# destination mailbox (X.1.1) is the more specific signal and beats it.
_REFUSAL_TEXT = frozenset(
    {
        Reason.POLICY_VIOLATION,
        Reason.FILTERED,
        Reason.SECURITY_ERROR,
        Reason.SYSTEM_ERROR,
        Reason.CONTENT_ERROR,
    }
)
# The reasons the SMTP command can change (below); for any other the command is not looked for.
_COMMAND_DECIDES = frozenset(
    {
        None,
        Reason.USER_UNKNOWN,
        Reason.HOST_UNKNOWN,
        Reason.FILTERED,
        Reason.REJECTED,
        Reason.ON_HOLD,
    }
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
    named = _NAMED_COMMAND.search(text)
    if named:
        word = (named.group(1) or named.group(2)).upper()
        return "HELO" if word == "EHLO" else word
    return ""


def decide_reason(diagnostic: str, status: str, context: str) -> Reason | None:
    """Combine the server's words, the status code and the SMTP command into one reason."""
    gave_up = _QMAIL_GAVE_UP.search(diagnostic)
    if gave_up and diagnostic[: gave_up.start()].strip():
        diagnostic = diagnostic[: gave_up.start()]
    # The line that names the recipient speaks for it; later lines may be another attempt's.
    text_reason = reason_from_text(diagnostic.strip().split("\n", 1)[0]) or reason_from_text(
        diagnostic
    )
    status_reason = reason_from_status(status) if status else None
    if status[1:] == ".4.1" and _DIRECTORY_REJECT.search(diagnostic):
        status_reason = Reason.USER_UNKNOWN
        if text_reason is None or text_reason is Reason.EXPIRED:
            text_reason = Reason.USER_UNKNOWN
    reason = text_reason
    if status_reason is not None and (
        reason is None
        or (reason in _WEAK_TEXT and status_reason in _STRONG_STATUS)
        or (reason in _REFUSAL_TEXT and status[1:] == ".1.1")
    ):
        reason = status_reason
    command = ""
    if reason in _COMMAND_DECIDES:
        # Exim and Sendmail say where the session failed in their prose, not in the DSN's
        # Diagnostic-Code: look there when the server's own words do not say.
        command = smtp_command(diagnostic) or (smtp_command(context) if context else "")
    # "User unknown" after the message was sent, or under a code that names a refusal rather
    # than an unknown address, is a filter's answer (Sisimai's "filtered"): the address may well
    # exist. A code that names no cause (X.0.0) leaves the words to decide.
    if (
        reason is Reason.USER_UNKNOWN
        and command != "RCPT"
        and not _USER_STATUS.match(status)
        and (command == "DATA" or _FILTER_STATUS.match(status))
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
    if reason is None and gave_up:
        reason = Reason.EXPIRED
    return reason
