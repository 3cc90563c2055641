"""Takes a message apart: the human-readable prose, RFC 3464/5965 field blocks, the returned original."""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email.message import Message
from email.policy import compat32

from mailer.domain.classify import mime

# Field names that only occur in machine-readable reports; their presence in any text part means
# an MTA embedded a report in prose (qmail-ldap, some Exchange and Domino versions do).
_DSN_FIELD_RE = re.compile(
    r"^(?:final-recipient|original-recipient|x-actual-recipient|action|status|diagnostic-code|"
    r"remote-mta|reporting-mta|last-attempt-date|arrival-date|received-from-mta|x-postfix-sender|"
    r"feedback-type|original-rcpt-to|original-mail-from|user-agent|version|source-ip|"
    r"authentication-results|reported-domain|arrival-date|incidents)\s*:",
    re.IGNORECASE,
)
# Headers that show the returned original message has started inside a prose body.
_ORIGINAL_HEADER_RE = re.compile(
    r"^(?:return-path|received|message-id|subject|from|to|date|dkim-signature|mime-version|"
    r"x-mailer|content-type|reply-to|cc|x-[\w-]+)\s*:",
    re.IGNORECASE,
)
_ORIGINAL_MARKERS = re.compile(
    r"^[\s>|-]*(?:"
    r"-+\s*(?:original message|this is a copy of|below this line is a copy|the header of the original"
    r"|original message headers|message headers follow|unsent message below)"
    r"|(?:original|returned) message (?:follows|headers?)\b"
    r"|the original message (?:was received at|headers? (?:is|are) included)"
    r"|below this line is a copy of the message"
    r"|-+ ?(?:original message|headers of the original|unsent message|returned mail)"
    r"|content-type: message/rfc822"
    r"|\*+ ?original message"
    r")",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class Report:
    prose: str  # what the reporting system says to a person, without the returned original
    blocks: tuple[dict[str, str], ...]  # RFC 3464 / 5965 field blocks, names lower-cased
    original: Message | None  # the returned message or its headers, when included
    report_type: str  # "delivery-status", "feedback-report", "disposition-notification" or ""
    html_only: bool = False
    notes: tuple[str, ...] = field(default=())


def field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 822 style field blocks separated by blank lines; continuation lines unfolded."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in mime.unfold(text).split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
            continue
        if line[:1] in " \t" and last:
            current[last] = (current[last] + " " + line.strip()).strip()
            continue
        name, sep, value = line.partition(":")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name.strip()):
            last = name.strip().lower()
            # A repeated field (two Original-Rcpt-To, say) is kept, joined by a newline.
            current[last] = (
                (current[last] + "\n" + value.strip()) if last in current else value.strip()
            )
        else:
            last = ""
    if current:
        blocks.append(current)
    return blocks


def _embedded_blocks(text: str) -> list[dict[str, str]]:
    """DSN fields pasted in a prose part: keep only the blocks that really are report fields."""
    lines = [
        ln
        for ln in mime.unfold(text).split("\n")
        if _DSN_FIELD_RE.match(ln) or ln[:1] in " \t" or not ln.strip()
    ]
    blocks = field_blocks("\n".join(lines))
    return [
        b for b in blocks if "final-recipient" in b or "original-recipient" in b or "status" in b
    ]


def _split_prose(text: str) -> tuple[str, Message | None]:
    """Cut a prose body where the returned original starts (a marker line or a run of headers)."""
    marker = _ORIGINAL_MARKERS.search(text)
    cut = marker.start() if marker else None
    lines = text.split("\n")
    offset = 0
    run_start = None
    run = 0
    for i, line in enumerate(lines):
        if _ORIGINAL_HEADER_RE.match(line):
            if run == 0:
                run_start = offset
            run += 1
            if run >= 3 and run_start is not None and (cut is None or run_start < cut):
                cut = run_start
                break
        elif not (line[:1] in " \t" and run):
            run = 0
        offset += len(line) + 1
        if i > 4000:
            break
    if cut is None:
        return text, None
    rest = text[cut:]
    # The original begins at its first header line after the marker.
    start = re.search(
        r"^(?:return-path|received|message-id|from|to|subject|date|dkim-signature)\s*:",
        rest,
        re.IGNORECASE | re.MULTILINE,
    )
    original = None
    if start:
        try:
            original = email.message_from_string(rest[start.start() :], policy=compat32)
        except Exception:  # noqa: BLE001 - a mangled copy of the original is simply not used
            original = None
    return text[:cut], original


def read_report(msg: Message) -> Report:
    report_type = ""
    try:
        if mime.content_type(msg) == "multipart/report":
            report_type = (msg.get_param("report-type") or "").__str__().lower()
    except Exception:  # noqa: BLE001 - a broken parameter list
        report_type = ""
    prose_parts: list[str] = []
    html_parts: list[str] = []
    blocks: list[dict[str, str]] = []
    original: Message | None = None
    inside_original: set[int] = set()
    for part in mime.walk(msg):
        if id(part) in inside_original:
            continue
        ctype = mime.content_type(part)
        if ctype in (
            "message/rfc822",
            "message/global",
            "text/rfc822-headers",
            "message/rfc822-headers",
            "message/global-headers",
        ):
            if original is None:
                original = _as_message(part)
            for sub in mime.walk(part):
                if sub is not part:
                    inside_original.add(id(sub))
            continue
        if ctype in (
            "message/delivery-status",
            "message/global-delivery-status",
            "message/feedback-report",
            "message/disposition-notification",
        ):
            blocks.extend(field_blocks(_raw_text(part)))
            for sub in mime.walk(part):
                if sub is not part:
                    inside_original.add(id(sub))
            if not report_type:
                report_type = ctype.split("/")[1].replace("global-", "")
            continue
        if part.is_multipart():
            continue
        if (
            ctype == "text/plain"
            or ctype == "text/enriched"
            or (ctype.startswith("text/") and ctype != "text/html" and not prose_parts)
        ):
            prose_parts.append(mime.decode_payload(part))
        elif ctype == "text/html":
            html_parts.append(mime.html_to_text(mime.decode_payload(part)))
    if not prose_parts and not html_parts and not blocks:
        # A multipart without boundary lines (PMDF, some appliances): its body is the prose.
        payload = msg.get_payload()
        if isinstance(payload, str):
            prose_parts.append(mime.decode_payload(msg))
    html_only = not prose_parts and bool(html_parts)
    prose = mime.unfold("\n\n".join(prose_parts or html_parts))
    prose, embedded_original = _split_prose(prose)
    if original is None:
        original = embedded_original
    if not blocks:
        blocks = _embedded_blocks(prose)
    return Report(
        prose=prose,
        blocks=tuple(blocks),
        original=original,
        report_type=report_type,
        html_only=html_only,
    )


def _raw_text(part: Message) -> str:
    """A report part's body as text, whether `email` parsed it into sub-messages or not."""
    payload = part.get_payload()
    if isinstance(payload, list):
        chunks = []
        for sub in payload:
            try:
                chunks.append(sub.as_string() if isinstance(sub, Message) else str(sub))
            except Exception:  # noqa: BLE001 - as_string can fail on undecodable headers
                chunks.append(
                    "\n".join(f"{k}: {v}" for k, v in sub.items())
                    if isinstance(sub, Message)
                    else ""
                )
        return "\n\n".join(chunks)
    return mime.decode_payload(part)


def _as_message(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    text = mime.decode_payload(part)
    if not text.strip():
        return None
    try:
        return email.message_from_string(text.lstrip(), policy=compat32)
    except Exception:  # noqa: BLE001 - an unreadable original is simply not used
        return None
