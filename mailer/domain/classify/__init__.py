"""The pure inbound classifier: raw message bytes in, a Classification out, never an exception."""

from __future__ import annotations

import email.utils
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
    subject = mime.header(msg, "Subject")
    from_address = mime.first_address(mime.header(msg, "From"))
    references = _references(msg)
    errors: list[str] = []
    if not any(msg.get(h) for h in ("From", "Date", "Subject", "Message-ID", "To", "Received")):
        errors.append("no message headers: not an email")
        return Classification(kind=Kind.OTHER, subject=subject, errors=tuple(errors))
    ref = _message_date(msg) or today
    report = read_report(msg)
    inner = report.original
    if not report.blocks and inner is not None and _is_report(inner):
        # A bounce wrapped in a provider's notice (OCN, forwarding gateways): read the inner one.
        report = read_report(inner)
    common: dict[str, Any] = {"subject": subject, "from_address": from_address}

    original_id = None
    if report.original is not None:
        ids = mime.message_ids(mime.header(report.original, "Message-ID"))
        original_id = ids[0] if ids else None
        if original_id and original_id not in references:
            references = (*references, original_id)

    if detect.is_feedback(msg, subject, report):
        return Classification(
            kind=Kind.FEEDBACK,
            recipients=tuple(_feedback_recipients(msg, report)),
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

    if has_dsn or _bounce_signals(msg, subject, report):
        recipients = dsn.failed_recipients(
            report,
            exclude=_not_recipients(msg, report),
            listed=sorted(_addresses(msg, "X-Failed-Recipients", "X-Bounced-Address")),
            fallback_to=_original_to(report),
        )
        if recipients or has_dsn or detect.is_daemon_sender(msg):
            return Classification(
                kind=Kind.BOUNCE,
                recipients=tuple(recipients),
                references=references,
                original_message_id=original_id,
                **common,
            )

    body, _was_html = mime.first_text(msg)
    if (
        detect.autoreply_headers(msg)
        or detect.has_autoreply_subject(subject)
        or (detect.looks_like_list_or_bulk(msg) and looks_like_out_of_office(subject, body))
    ):
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

    if detect.looks_like_list_or_bulk(msg) or not body.strip():
        return Classification(kind=Kind.OTHER, references=references, **common)

    text = extract_reply(body)
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
    return detect.is_daemon_sender(msg) and detect.has_bounce_subject(mime.header(msg, "Subject"))


def _bounce_signals(msg: Message, subject: str, report: Report) -> bool:
    if mime.header(msg, "X-Failed-Recipients") or detect.is_daemon_sender(msg):
        return True
    if dsn.ses_notification(report.prose):
        return True
    if detect.empty_return_path(msg) and report.original is not None:
        # A null sender returning our message: a bounce whatever its subject says.
        return detect.says_undelivered(report.prose)
    if detect.has_bounce_subject(subject):
        return (
            detect.empty_return_path(msg)
            or report.original is not None
            or detect.autoreply_headers(msg)
        )
    return False


def _not_recipients(msg: Message, report: Report) -> set[str]:
    """The reporting system and the original sender (us): never the address that failed."""
    senders = _addresses(msg, "From", "To", "Return-Path", "Sender") | _addresses(
        report.original, "From", "Return-Path", "Sender", "Reply-To"
    )
    # Sanitised corpora and aliases make the sender and the recipient the same string at times;
    # an address the original was sent to is never excluded.
    return (
        senders - _addresses(report.original, "To", "Cc") - _addresses(msg, "X-Failed-Recipients")
    )


def _addresses(source: Message | None, *names: str) -> set[str]:
    out: set[str] = set()
    if source is None:
        return out
    for name in names:
        for _n, addr in email.utils.getaddresses([mime.header(source, name)]):
            if "@" in addr:
                out.add(addr.lower())
    return out


def _original_to(report: Report) -> str:
    if report.original is None:
        return ""
    return mime.header(report.original, "To")


def _feedback_recipients(msg: Message, report: Report) -> list[FailedRecipient]:
    addresses: list[str] = []
    if mime.header(msg, "X-Apple-Unsubscribe"):
        # Apple Mail's one-click unsubscribe comes from the subscriber's own address.
        addresses.append(mime.first_address(mime.header(msg, "From")) or "")
    elif report.original is not None and mime.header(report.original, "X-HmXmrOriginalRecipient"):
        # Outlook.com (JMRP) complaints name the complaining recipient in the returned headers.
        addresses.append(
            dsn.clean_address(mime.header(report.original, "X-HmXmrOriginalRecipient")) or ""
        )
    addresses = [a for a in addresses if a]
    for block in report.blocks:
        for name in ("original-rcpt-to", "removal-recipient"):
            for value in block.get(name, "").split("\n"):
                addr = dsn.clean_address(value)
                if addr and addr not in addresses:
                    addresses.append(addr)
    if not addresses:
        to = dsn.clean_address(_original_to(report))
        if to:
            addresses.append(to)
    return [
        FailedRecipient(address=a, reason=Reason.FEEDBACK, status="", permanent=False)
        for a in addresses
    ]


def _references(msg: Message) -> tuple[str, ...]:
    ids: list[str] = []
    for name in ("In-Reply-To", "References"):
        for mid in mime.message_ids(mime.header(msg, name)):
            if mid not in ids:
                ids.append(mid)
    return tuple(ids)


def _message_date(msg: Message) -> date | None:
    value = mime.header(msg, "Date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.date() if parsed is not None else None
