"""The pure inbound classifier: raw message bytes in, a Classification out, never an exception."""

from __future__ import annotations

import email.utils
import re
from datetime import date
from email.message import Message
from typing import Any

from mailer.domain.classify import detect, dsn, mime
from mailer.domain.classify.autoreply import looks_like_out_of_office, return_date
from mailer.domain.classify.intent import classify_intent
from mailer.domain.classify.model import (
    Classification,
    FailedRecipient,
    Intent,
    Kind,
    Reason,
)
from mailer.domain.classify.reply import extract_reply
from mailer.domain.classify.report import Report, read_report

__all__ = [
    "Classification",
    "FailedRecipient",
    "Intent",
    "Kind",
    "Reason",
    "classify",
    "extract_reply",
    "score_entry",
]

_MAX_BYTES = 20 * 1024 * 1024  # larger than any bounce or reply; bigger input is read truncated


def classify(raw: bytes, *, today: date | None = None) -> Classification:
    """Classify one message as received from IMAP.

    Relative dates ("el viernes", "back on the 15th") are resolved from the message's own Date
    header, which is when its author wrote them; `today` is the fallback when that header is
    missing or unreadable (pass the day the message was received). Without either, relative dates
    are not resolved. Never raises: unreadable input gives kind "other" and a note in `errors`.
    """
    try:
        return _classify(raw[:_MAX_BYTES], today)
    except Exception as exc:
        return Classification(
            kind=Kind.OTHER, errors=(f"unreadable message: {type(exc).__name__}: {exc}"[:300],)
        )


def score_entry(raw: bytes) -> dict[str, Any]:
    """Adapter for ../shared/corpus/score.py --func: the same JSON `mailer classify --json` prints."""
    return classify(raw).to_json()


def _classify(raw: bytes, today: date | None) -> Classification:
    msg = mime.parse(bytes(raw))  # anything but bytes raises here and is reported as unreadable
    head = mime.Headers(msg)
    subject = head["Subject"]
    from_address = mime.first_address(head["From"])
    references = _references(head)
    if not any(
        head.present(h) for h in ("From", "Date", "Subject", "Message-ID", "To", "Received")
    ):
        return Classification(
            kind=Kind.OTHER, subject=subject, errors=("no message headers: not an email",)
        )
    report = read_report(msg)
    body = report.text  # the sender's own words, whatever report is read below
    inner = report.original
    if not report.blocks and inner is not None and _is_report(inner):
        # A bounce wrapped in a provider's notice (OCN, forwarding gateways): read the inner one.
        report = read_report(inner)
    original = mime.Headers(report.original)
    own_ids = mime.message_ids(head["Message-ID"])
    common: dict[str, Any] = {
        "subject": subject,
        "from_address": from_address,
        "message_id": f"<{own_ids[0]}>" if own_ids else None,
    }

    original_id = None
    if report.original is not None:
        ids = mime.message_ids(original["Message-ID"])
        original_id = ids[0] if ids else None
        if original_id and original_id not in references:
            references = (*references, original_id)

    if detect.is_feedback(head, subject, report):
        return Classification(
            kind=Kind.FEEDBACK,
            recipients=tuple(_feedback_recipients(head, original, report)),
            references=references,
            original_message_id=original_id,
            **common,
        )

    has_dsn = report.report_type in ("delivery-status", "global-delivery-status") or any(
        "final-recipient" in b or "action" in b for b in report.blocks
    )
    if has_dsn and dsn.only_successes(report):
        return Classification(
            kind=Kind.DELIVERED,
            recipients=tuple(dsn.delivered_recipients(report)),
            references=references,
            original_message_id=original_id,
            **common,
        )

    if has_dsn or _bounce_signals(head, subject, report):
        recipients = dsn.failed_recipients(
            report,
            exclude=_not_recipients(head, original),
            listed=sorted(_addresses(head, "X-Failed-Recipients", "X-Bounced-Address")),
            fallback_to=original["To"],
        )
        if recipients or has_dsn or detect.is_daemon_sender(head):
            return Classification(
                kind=Kind.BOUNCE,
                recipients=tuple(recipients),
                references=references,
                original_message_id=original_id,
                **common,
            )

    # Only replies need a reference day (relative dates), so the Date header is read here.
    if (
        detect.autoreply_headers(head)
        or detect.has_autoreply_subject(subject)
        or (detect.looks_like_list_or_bulk(head) and looks_like_out_of_office(subject, body))
    ):
        ref = _message_date(head) or today
        back = return_date(subject + "\n" + body, ref) if ref else None
        vacation = (
            (
                FailedRecipient(
                    address=from_address, reason=Reason.VACATION, status="", permanent=False
                ),
            )
            if from_address
            else ()
        )
        return Classification(
            kind=Kind.AUTOREPLY,
            recipients=vacation,
            return_date=back,
            references=references,
            **common,
        )

    if detect.looks_like_list_or_bulk(head) or not body.strip():
        return Classification(kind=Kind.OTHER, references=references, **common)

    text = extract_reply(body)
    ref = _message_date(head) or today
    intent, promised = classify_intent(text, ref) if ref else classify_intent(text, date.min)
    if ref is None:
        promised = None
    return Classification(
        kind=Kind.HUMAN_REPLY,
        intent=intent,
        promised_date=promised,
        reply_text=text,
        references=references,
        **common,
    )


def _is_report(msg: Message) -> bool:
    if mime.content_type(msg) == "multipart/report":
        return True
    head = mime.Headers(msg)
    return detect.is_daemon_sender(head) and detect.has_bounce_subject(head["Subject"])


def _bounce_signals(head: mime.Headers, subject: str, report: Report) -> bool:
    if head["X-Failed-Recipients"] or detect.is_daemon_sender(head):
        return True
    if dsn.ses_notification(report.prose):
        return True
    if detect.empty_return_path(head) and report.original is not None:
        # A null sender returning our message: a bounce whatever its subject says.
        return detect.says_undelivered(report.prose)
    if detect.has_bounce_subject(subject):
        return (
            detect.empty_return_path(head)
            or report.original is not None
            or detect.autoreply_headers(head)
        )
    return False


def _not_recipients(head: mime.Headers, original: mime.Headers) -> set[str]:
    """The reporting system and the original sender (us): never the address that failed."""
    senders = _addresses(head, "From", "To", "Return-Path", "Sender") | _addresses(
        original, "From", "Return-Path", "Sender", "Reply-To"
    )
    # Sanitised corpora and aliases make the sender and the recipient the same string at times;
    # an address the original was sent to is never excluded.
    return senders - _addresses(original, "To", "Cc") - _addresses(head, "X-Failed-Recipients")


def _addresses(head: mime.Headers, *names: str) -> set[str]:
    out: set[str] = set()
    for name in names:
        value = head[name]
        if "@" not in value:
            continue  # nothing getaddresses could return
        for addr in mime.addresses(value):
            if "@" in addr:
                out.add(addr.lower())
    return out


def _feedback_recipients(
    head: mime.Headers, original: mime.Headers, report: Report
) -> list[FailedRecipient]:
    addresses: list[str] = []
    if head["X-Apple-Unsubscribe"]:
        # Apple Mail's one-click unsubscribe comes from the subscriber's own address.
        addresses.append(mime.first_address(head["From"]) or "")
    elif report.original is not None and original["X-HmXmrOriginalRecipient"]:
        # Outlook.com (JMRP) complaints name the complaining recipient in the returned headers.
        addresses.append(dsn.clean_address(original["X-HmXmrOriginalRecipient"]) or "")
    addresses = [a for a in addresses if a]
    for block in report.blocks:
        for name in ("original-rcpt-to", "removal-recipient"):
            for value in block.get(name, "").split("\n"):
                addr = dsn.clean_address(value)
                if addr and addr not in addresses:
                    addresses.append(addr)
    if not addresses:
        to = dsn.clean_address(original["To"])
        if to:
            addresses.append(to)
    return [
        FailedRecipient(address=a, reason=Reason.FEEDBACK, status="", permanent=False)
        for a in addresses
    ]


def _references(head: mime.Headers) -> tuple[str, ...]:
    ids: list[str] = []
    for name in ("In-Reply-To", "References"):
        for mid in mime.message_ids(head[name]):
            if mid not in ids:
                ids.append(mid)
    return tuple(ids)


# The Date header as nearly every mail program writes it (RFC 5322 section 3.3), read directly;
# anything else goes to email.utils, which gives the same day for these.
_PLAIN_DATE = re.compile(
    r"(?:[A-Z][a-z]{2}, )?([0-3]?\d) ([A-Z][a-z]{2}) ([1-9]\d{3}) (?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d)?"
    r" [+-](?:[01]\d|2[0-3])[0-5]\d",
    re.ASCII,
)
_MONTHS = {
    m: n
    for n, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def _message_date(head: mime.Headers) -> date | None:
    value = head["Date"]
    if not value:
        return None
    plain = _PLAIN_DATE.fullmatch(value)
    if plain is not None and plain.group(2) in _MONTHS:
        try:
            # The day as written, in the writer's own offset, as parsedate_to_datetime(...).date().
            return date(int(plain.group(3)), _MONTHS[plain.group(2)], int(plain.group(1)))
        except ValueError:
            pass  # no such day: left to email.utils, as any other odd date
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.date() if parsed is not None else None
