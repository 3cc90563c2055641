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

from mailer.domain.classify import fastmime

# An address as MTAs print it: bare, in <>, after "rfc822;", quoted local parts included.
ADDRESS_RE = re.compile(
    r"""(?:"[^"\r\n]{1,64}"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64})@"""
    r"""(?:\[[0-9.:A-Fa-f]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"""
    r"""(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+)"""
)
MESSAGE_ID_RE = re.compile(r"<([^<>\s@]+@[^<>\s]+)>")


def parse(raw: bytes) -> Message:
    """compat32 parses anything and defers header decoding, so broken headers cannot raise here."""
    return parse_text(raw.decode("ascii", "surrogateescape"))  # as message_from_bytes reads it


def parse_text(text: str) -> Message:
    """The quick reader for ordinary MIME, the email package's parser for anything else."""
    msg = fastmime.parse(text)
    return msg if msg is not None else email.message_from_string(text, policy=compat32)


def header(msg: Message, name: str) -> str:
    """A header decoded to text; "" when absent or undecodable (RFC 2047 errors are common)."""
    value = msg.get(name)
    return "" if value is None else _decode(value)


def _decode(value: object) -> str:
    if isinstance(value, str) and "=?" not in value:
        text = value  # nothing encoded: decode_header/make_header would give it back as it is
    else:
        try:
            text = str(email.header.make_header(email.header.decode_header(str(value))))
        except Exception:
            text = str(value)
    return " ".join(text.split())


class Headers:
    """One message's headers by name, each decoded once: what every rule of the classifier reads.

    `Message.get` scans the whole header list on every call; a classification asks for some
    twenty names, so the list is read once into a dict here (the first occurrence wins, as with
    `get`).
    """

    __slots__ = ("_decoded", "_raw")

    def __init__(self, msg: Message | None) -> None:
        self._raw = header_index(msg) if msg is not None else {}
        self._decoded: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        """The decoded value; "" when absent."""
        text = self._decoded.get(name)  # cached under the spelling asked for
        if text is None:
            found = self._raw.get(name.lower())
            if found is None:
                text = ""
            elif isinstance(found[1], str) and found[1].isascii():
                text = _decode(found[1])  # what compat32 gives back for a value without 8-bit bytes
            else:
                # What `msg.get` returns: compat32 wraps 8-bit values in a Header.
                text = _decode(compat32.header_fetch_parse(*found))
            self._decoded[name] = text
        return text

    def present(self, name: str) -> bool:
        """Whether the header is there with a non-empty raw value (what `msg.get(name)` tests)."""
        found = self._raw.get(name.lower())
        return found is not None and bool(found[1])

    def any_of(self, lower_names: frozenset[str]) -> bool:
        """Whether any of these (lower-case) names is there at all: when not, each reads ""."""
        return not lower_names.isdisjoint(self._raw)


_INDEX = "_mailer_header_index"  # where header_index keeps its dict on the part


def header_index(part: Message) -> dict[str, tuple[str, str]]:
    """The part's headers by lower-case name, the first of each (as `get` finds it), read once.

    The classifier asks a part for several headers (Content-Type three or four times, its
    transfer encoding, disposition, ...), and `get` lower-cases every name of the list on each
    call. The index lives on the part itself, so it goes with the message it was read from; it
    is made again if the part's header list was replaced, grew or shrank since (the classifier
    never changes a message: a header replaced in place would not be seen).
    """
    headers: list[tuple[str, str]] = part._headers  # type: ignore[attr-defined]
    kept = part.__dict__.get(_INDEX)
    if kept is not None and kept[0] is headers and kept[1] == len(headers):
        index: dict[str, tuple[str, str]] = kept[2]
        return index
    index = {}
    for name, value in headers:
        key = name.lower()
        if key not in index:
            index[key] = (name, value)
    part.__dict__[_INDEX] = (headers, len(headers), index)
    return index


# The plain forms most address headers take: "a@b.example", "a@b.example (Some Name)" and
# "Some Name <a@b.example>", with dot-atom addresses. email.utils reads them character by
# character; these give the same answer.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_ADDRESS = re.compile(
    rf"\s*(?:({_DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?:\s*\([^()\\\"]*\))?"
    rf"|[A-Za-z0-9 _'-]*<\s*({_DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)\s*>)\s*"
)


def addresses(value: str) -> list[str]:
    """The addresses of an address header (`email.utils.getaddresses`), as written."""
    if not value:
        return []
    found = []
    for item in value.split(","):
        m = _PLAIN_ADDRESS.fullmatch(item)
        if m is None:
            return [addr for _name, addr in email.utils.getaddresses([value])]
        found.append(m.group(1) or m.group(2))
    return found


def first_address(value: str) -> str | None:
    m = _PLAIN_ADDRESS.fullmatch(value)
    if m is not None:
        addr = m.group(1) or m.group(2)
    else:
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


def plain_header(part: Message, name: str) -> str | None:
    """`part.get(name)` (`name` lower-case) read straight from the header list when that is
    what compat32 gives back, a plain ASCII value; None when absent. Raises _NotPlain when only
    the email package can give the value (8-bit bytes become a Header)."""
    if part.policy is not compat32:
        raise _NotPlain
    found = header_index(part).get(name)
    if found is None:
        return None
    value = found[1]
    if isinstance(value, str) and value.isascii():
        return value
    raise _NotPlain


class _NotPlain(Exception):
    """Raised by `plain_header` for a value the email package must read."""


_ENCODED_CTES = frozenset({"quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue"})


def content_type(part: Message) -> str:
    try:
        value = plain_header(part, "content-type")
        if value is None:
            return part.get_default_type().lower()
        # get_content_type() of a plain value, without its trip through the email package.
        ctype = value.partition(";")[0].strip().lower()
        return ctype if ctype.count("/") == 1 else "text/plain"
    except _NotPlain:
        pass
    except Exception:
        return "text/plain"
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def content_param(part: Message, name: str) -> object:
    """`part.get_param(name)`, read directly when the Content-Type is plain (see simple_param)."""
    try:
        found = fastmime.simple_param(plain_header(part, "content-type"), name)
    except _NotPlain:
        found = fastmime.NOT_SIMPLE
    return part.get_param(name) if found is fastmime.NOT_SIMPLE else found


def disposition(part: Message) -> str:
    """The Content-Disposition header lower-cased, "" when absent."""
    try:
        value = plain_header(part, "content-disposition")
    except _NotPlain:
        return str(part.get("Content-Disposition", "")).lower()
    return value.lower() if value is not None else ""


def decode_payload(part: Message) -> str:
    """The part's body as text, whatever its transfer encoding and (possibly wrong) charset."""
    payload: object = _undecoded_bytes(part)
    if payload is None:
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    try:
        charset = _charset(part) or "utf-8"
    except Exception:
        charset = "utf-8"
    for candidate in (charset, "utf-8"):
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")


def _undecoded_bytes(part: Message) -> bytes | None:
    """`part.get_payload(decode=True)` of a text payload without a transfer encoding to undo
    (7bit, 8bit, binary or none): its bytes as received. None for anything else."""
    payload = part._payload  # type: ignore[attr-defined]
    if not isinstance(payload, str):
        return None
    try:
        cte = plain_header(part, "content-transfer-encoding")
        if cte and cte.lower() in _ENCODED_CTES:
            return None
        # As get_payload: the text back to the bytes it was read from (8-bit ones escaped).
        return payload.encode("ascii", "surrogateescape")
    except (_NotPlain, UnicodeEncodeError):
        return None  # other characters: get_payload has its own rules for those


def _charset(part: Message) -> str | None:
    """`part.get_content_charset()`, read directly when the Content-Type parameters are plain."""
    try:
        value: object = plain_header(part, "content-type")
    except _NotPlain:
        value = part.get("Content-Type")
    charset = fastmime.simple_param(value, "charset")
    if charset is fastmime.NOT_SIMPLE:
        return part.get_content_charset()
    if isinstance(charset, str):
        return charset.lower() if charset.isascii() else None
    return None


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
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def first_text(msg: Message) -> tuple[str, bool]:
    """The first text/plain body outside attached messages (else HTML as text); and whether it was HTML."""
    html_body = None
    for part in walk(msg):
        ctype = content_type(part)
        if ctype.startswith("message/") and part is not msg:
            break  # an attached message: its text is not this sender's
        if part.is_multipart():
            continue
        if disposition(part).startswith("attachment"):
            continue
        if ctype == "text/plain":
            return unfold(decode_payload(part)), False
        if ctype == "text/html" and html_body is None:
            html_body = decode_payload(part)
    if html_body is not None:
        return html_to_text(html_body), True
    return "", False
