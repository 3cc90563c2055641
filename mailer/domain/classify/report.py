"""Takes a message apart: the human-readable prose, RFC 3464/5965 field blocks, the returned original."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

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
# Searched in lower-cased text: re.IGNORECASE would cost several times more on long bodies.
_DSN_FIELD_ANYWHERE = re.compile(_DSN_FIELD_RE.pattern, re.MULTILINE)
# Headers that show the returned original message has started inside a prose body.
_ORIGINAL_HEADER_RE = re.compile(
    r"^(?:return-path|received|message-id|subject|from|to|date|dkim-signature|mime-version|"
    r"x-mailer|content-type|reply-to|cc|x-[\w-]+)\s*:",
    re.IGNORECASE,
)
_TRANSPORT_HEADER_RE = re.compile(
    r"^(?:return-path|received|message-id|dkim-signature|mime-version|content-type|x-[\w-]+)\s*:",
    re.IGNORECASE,
)
_ORIGINAL_MARKERS = re.compile(
    r"^[\s>|-]*(?:"
    r"-+\s*(?:original message|this is a copy of|below this line is a copy|the header of the original"
    r"|original message headers|message headers follow|unsent message below)"
    r"|(?:original|returned) message (?:follows|headers?)\b"
    r"|the original message headers? (?:is|are) included"
    r"|below this line is a copy of the message"
    r"|-+ ?(?:original message|headers of the original|unsent message|returned mail)"
    r"|content-type: message/rfc822"
    r"|\*+ ?original message"
    r")",
    re.MULTILINE,
)  # lower-case, searched in lower-cased text (see _DSN_FIELD_ANYWHERE)
_ORIGINAL_MARKERS_ANY_CASE = re.compile(_ORIGINAL_MARKERS.pattern, re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Report:
    prose: str  # what the reporting system says to a person, without the returned original
    blocks: tuple[dict[str, str], ...]  # RFC 3464 / 5965 field blocks, names lower-cased
    original: Message | None  # the returned message or its headers, when included
    report_type: str  # "delivery-status", "feedback-report", "disposition-notification" or ""
    html_only: bool = False
    notes: tuple[str, ...] = field(default=())
    # The sender's own words: the first text/plain part outside attached messages, else the first
    # HTML one as text (what `mime.first_text` returns, found on the same walk).
    text: str = ""
    text_was_html: bool = False


_STARTS_RECIPIENT = frozenset({"final-recipient", "original-recipient", "action", "status"})


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
            if last in current and last in _STARTS_RECIPIENT:
                # Per-recipient groups with no blank line between them (AOL, some Exchange).
                blocks.append(current)
                current = {}
            # A repeated field (two Original-Rcpt-To, say) is kept, joined by a newline.
            current[last] = (
                (current[last] + "\n" + value.strip()) if last in current else value.strip()
            )
        else:
            last = ""
    if current:
        blocks.append(current)
    return blocks


def search_lines(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """`pattern.search(text)` for a pattern that opens with ^ under re.MULTILINE, tried at each
    line start alone: a search tries every character, at a cost each, where this cannot match.
    """
    at = 0
    while True:
        found = pattern.match(text, at)
        if found is not None:
            return found
        at = text.find("\n", at) + 1
        if not at:
            return None


def _embedded_blocks(text: str) -> list[dict[str, str]]:
    """DSN fields pasted in a prose part: keep only the blocks that really are report fields."""
    if not search_lines(_DSN_FIELD_ANYWHERE, text.lower()):
        return []
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
    low = text.lower()
    marker = (
        search_lines(_ORIGINAL_MARKERS, low)
        if len(low) == len(text)  # offsets agree: always so but for a few Unicode letters
        else search_lines(_ORIGINAL_MARKERS_ANY_CASE, text)
    )
    cut = marker.start() if marker else None
    lines = text.split("\n")
    offset = 0
    run_start = None
    run = 0
    transport = False  # a header only a transported message has (Received, Message-ID, ...)
    for i, line in enumerate(lines):
        if ":" in line and _ORIGINAL_HEADER_RE.match(line):  # never without a colon
            if run == 0:
                run_start, transport = offset, False
            run += 1
            transport = transport or bool(_TRANSPORT_HEADER_RE.match(line))
            # Three headers with a transport one, or five of any kind: not a pasted To/Date/Subject.
            if (run >= 3 and transport) or run >= 5:
                if run_start is not None and (cut is None or run_start < cut):
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
            original = mime.parse_text(rest[start.start() :])
        except Exception:
            original = None
    return text[:cut], original


_ORIGINAL_TYPES = frozenset(
    {
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/global-headers",
    }
)
_REPORT_TYPES = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/feedback-report",
        "message/disposition-notification",
    }
)
# "--boundary" followed within two lines by a Content-Type: MIME whose header lost the boundary.
_LOST_BOUNDARY = re.compile(r"^--(\S{6,200})\s*\n(?:.*\n){0,2}?content-type:", re.I | re.M)


class _Collector:
    """Walks the MIME tree once, sorting parts into prose, report fields and the original, and
    noting on the way the sender's own text (see `Report.text`)."""

    def __init__(self, root: Message) -> None:
        self.root = root
        self.prose: list[str] = []
        self.html: list[str] = []  # markup, made text only if there is no plain prose
        self.blocks: list[dict[str, str]] = []
        self.original: Message | None = None
        self.report_type = ""
        self.past_message = False  # an attached message was met: later text is not the sender's
        self.plain: str | None = None
        self.first_html: str | None = None

    def visit(self, part: Message, depth: int = 0, repaired: bool = False) -> None:
        if depth > 30:
            return  # a pathological nesting: what was read so far is enough
        ctype = mime.content_type(part)
        if not repaired and part is not self.root and ctype.startswith("message/"):
            self.past_message = True
        if ctype in _ORIGINAL_TYPES:
            if self.original is None:
                self.original = _as_message(part)
            return
        if ctype in _REPORT_TYPES:
            self.blocks.extend(field_blocks(_raw_text(part)))
            self.report_type = self.report_type or ctype.split("/")[1].replace("global-", "")
            return
        if part.is_multipart():  # get_payload() of an 8-bit text part would decode it whole
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    self.visit(sub, depth + 1, repaired)
            return
        if not ctype.startswith(("text/", "multipart/")) and self.prose:
            return  # an attachment: prose only when nothing else was
        text = mime.decode_payload(part)
        if (
            not repaired
            and not self.past_message
            and ctype in ("text/plain", "text/html")
            and not mime.disposition(part).startswith("attachment")
        ):
            if ctype == "text/plain" and self.plain is None:
                self.plain = mime.unfold(text)
            elif ctype == "text/html" and self.first_html is None:
                self.first_html = text
        fixed = _repair(text) if ctype.startswith("multipart/") or ctype == "text/plain" else None
        if fixed is not None:
            self.visit(fixed, depth + 1, True)
        elif ctype == "text/html":
            self.html.append(text)
        elif ctype.startswith(("text/", "multipart/")) or not self.prose:
            self.prose.append(text)


def _repair(text: str) -> Message | None:
    """Re-read a body that is really MIME whose boundary the headers lost (or never declared)."""
    if not text.startswith("--") and "\n--" not in text[:302]:
        return None
    m = _LOST_BOUNDARY.search(text[:8192])
    if m is None or m.start() > 300:
        # Only a body that starts as MIME; boundaries further down belong to a quoted original.
        return None
    boundary = m.group(1)
    if boundary.endswith("--") or text.count("--" + boundary) < 2:
        return None
    head = f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
    try:
        repaired = mime.parse_text(head + text)
    except Exception:
        return None
    payload = repaired.get_payload()
    return repaired if isinstance(payload, list) and payload else None


def read_report(msg: Message) -> Report:
    collector = _Collector(msg)
    root_type = mime.content_type(msg)
    try:
        if root_type == "multipart/report":
            collector.report_type = str(mime.content_param(msg, "report-type") or "").lower()
    except Exception:
        collector.report_type = ""
    collector.visit(msg)
    as_text: dict[int, str] = {}

    def html_text(markup: str) -> str:
        if id(markup) not in as_text:
            as_text[id(markup)] = mime.html_to_text(markup)
        return as_text[id(markup)]

    html_only = not collector.prose and bool(collector.html)
    prose = mime.unfold("\n\n".join(collector.prose or [html_text(h) for h in collector.html]))
    prose, embedded_original = _split_prose(prose)
    original = collector.original or embedded_original
    blocks = collector.blocks or _embedded_blocks(prose)
    if root_type.startswith("message/"):
        text, was_html = mime.first_text(msg)  # a bare attached message: walk it as mail readers do
    elif collector.plain is not None:
        text, was_html = collector.plain, False
    elif collector.first_html is not None:
        text, was_html = html_text(collector.first_html), True
    else:
        text, was_html = "", False
    return Report(
        prose=prose,
        blocks=tuple(blocks),
        original=original,
        report_type=collector.report_type,
        html_only=html_only,
        text=text,
        text_was_html=was_html,
    )


def _raw_text(part: Message) -> str:
    """A report part's body as text, whether `email` parsed it into sub-messages or not."""
    payload = part.get_payload()
    if isinstance(payload, list):
        # The email package made each field block a header-only message: write the fields back.
        chunks = []
        for sub in payload:
            if not isinstance(sub, Message):
                chunks.append(str(sub))
                continue
            try:
                block = "\n".join(f"{k}: {v}" for k, v in sub.items())
                body = sub.get_payload()
            except Exception:
                continue  # an unreadable block: the others still count
            chunks.append(block + "\n\n" + body if isinstance(body, str) and body else block)
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
        return mime.parse_text(text.lstrip())
    except Exception:
        return None
