"""Never-raising readers over the standard `email` package: headers, text bodies, addresses, IDs."""

from __future__ import annotations

import email
import email.header
import email.utils
import html
import re
from collections.abc import Iterator
from email.message import Message
from email.policy import compat32

# An address as MTAs print it: bare, in <>, after "rfc822;", quoted local parts included.
ADDRESS_RE = re.compile(
    r"""(?:"[^"\r\n]{1,64}"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64})@"""
    r"""(?:\[[0-9.:A-Fa-f]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"""
    r"""(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+)"""
)
MESSAGE_ID_RE = re.compile(r"<([^<>\s@]+@[^<>\s]+)>")


def parse(raw: bytes) -> Message:
    """compat32 parses anything and defers header decoding, so broken headers cannot raise here."""
    return email.message_from_bytes(raw, policy=compat32)


def header(msg: Message, name: str) -> str:
    """A header decoded to text; "" when absent or undecodable (RFC 2047 errors are common)."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except Exception:
        text = str(value)
    return re.sub(r"\s+", " ", text).strip()


def first_address(value: str) -> str | None:
    try:
        _name, addr = email.utils.parseaddr(value)
    except Exception:
        addr = ""
    if addr and "@" in addr:
        return addr.strip().lower()
    found = ADDRESS_RE.search(value)
    return found.group(0).lower() if found else None


def message_ids(value: str) -> list[str]:
    return MESSAGE_ID_RE.findall(value)


def content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def decode_payload(part: Message) -> str:
    """The part's body as text, whatever its transfer encoding and (possibly wrong) charset."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = "utf-8"
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        charset = "utf-8"
    for candidate in (charset, "utf-8"):
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")


def walk(msg: Message) -> Iterator[Message]:
    try:
        yield from msg.walk()
    except Exception:
        return


def html_to_text(markup: str) -> str:
    """Good enough for reading bounce prose and replies; not a renderer."""
    text = re.sub(r"(?is)<(script|style|head)\b.*?</\1>", " ", markup)
    text = re.sub(r"(?i)<br\s*/?>|</(p|div|tr|li|h\d|blockquote)>", "\n", text)
    text = re.sub(r"(?s)<[^>]*>", "", text)
    text = html.unescape(text)
    text = re.sub(r"[ \t\xa0]+", " ", text)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()


def unfold(text: str) -> str:
    return re.sub(r"\r\n?", "\n", text)


def first_text(msg: Message) -> tuple[str, bool]:
    """The first text/plain body outside attached messages (else HTML as text); and whether it was HTML."""
    html_body = None
    for part in walk(msg):
        ctype = content_type(part)
        if ctype.startswith("message/") and part is not msg:
            break  # an attached message: its text is not this sender's
        if part.is_multipart():
            continue
        disposition = str(part.get("Content-Disposition", "")).lower()
        if disposition.startswith("attachment"):
            continue
        if ctype == "text/plain":
            return unfold(decode_payload(part)), False
        if ctype == "text/html" and html_body is None:
            html_body = decode_payload(part)
    if html_body is not None:
        return html_to_text(html_body), True
    return "", False
