"""A quick reader of ordinary MIME into the same compat32 `Message` trees the email package builds.

`email.message_from_bytes` costs more than all of the classifier's own rules on a typical message:
its feed parser reads line by line through a stack of generators and compiles a fresh regular
expression for every multipart boundary. This reader follows the feed parser's rules (RFC 2046
boundaries, the newline before a boundary belongs to it, outer boundaries end inner parts,
compat32 header values kept as received) on the messages that are common, and answers None for
anything unusual (bare CRs, mbox "From " lines, digests, doubled boundaries), which the caller then
hands to the email package. tests/test_classify_mime.py checks that both readers build the same
trees, on the corpus and on generated MIME.
"""

from __future__ import annotations

import re
from email.message import Message
from email.policy import compat32

# The feed parser's header line: a field name and a colon, or a continuation. "From " lines
# (mbox separators) are left to the email package.
_HEADER_LINE = re.compile(r"[\041-\071\073-\176]*:|[\t ]")


class _Unusual(Exception):
    """Raised inside the reader: leave this message to the email package."""


class _NotSimple:
    """The answer of `simple_param` when only the email package can read the parameter."""


NOT_SIMPLE = _NotSimple()


def simple_param(value: object, name: str) -> str | _NotSimple | None:
    """`Message.get_param(name)` of a header value without escapes or RFC 2231 parameters, read
    directly; NOT_SIMPLE for anything else, for the email package to read."""
    if not isinstance(value, str) or "\\" in value or "*" in value:
        return NOT_SIMPLE
    pieces = value.split(";")
    if '"' in value and any(p.count('"') not in (0, 2) for p in pieces):
        return NOT_SIMPLE  # a quoted ";" (the email package splits around it)
    for piece in pieces[1:]:
        key, sep, found = piece.partition("=")
        if key.strip().lower() != name:
            continue
        return _unquote(found.strip() if sep else "")
    return None


def _unquote(value: str) -> str:
    """email.utils.unquote for a value without backslashes."""
    if len(value) > 1 and (value[0] + value[-1]) in ('""', "<>"):
        return value[1:-1]
    return value


def parse(text: str) -> Message | None:
    """`text` is the message as `message_from_bytes` sees it (ASCII with surrogateescape)."""
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None  # lines end in CR alone somewhere: the feed parser's line splitting is subtle
    # Only CR LF and LF end lines here, as in the feed parser (not \x0c, \x1c, ... as in
    # str.splitlines()).
    lines = text.split("\n")
    last = lines.pop()
    lines = [line + "\n" for line in lines]
    if last:
        lines.append(last)
    if lines and lines[0].startswith("From "):
        return None
    try:
        return _Reader(lines).entity("text/plain")
    except (_Unusual, RecursionError):
        return None


def _eol_len(line: str) -> int:
    if line.endswith("\r\n"):
        return 2
    return 1 if line.endswith("\n") else 0


def _boundary_kind(line: str, separator: str) -> str:
    """Whether the line is that boundary ("part"), its closing form ("close") or not ("")."""
    if not line.startswith(separator):
        return ""
    rest = line[len(separator) :]
    rest = rest[: len(rest) - _eol_len(rest)]
    close = rest.startswith("--")
    if close:
        rest = rest[2:]
    if rest.strip(" \t"):
        return ""
    return "close" if close else "part"


class _Reader:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.pos = 0
        self.outer: list[str] = []  # separators of the enclosing multiparts, outermost first

    def _at_end(self) -> bool:
        """End of the current entity: the input's, or a line that is an enclosing boundary."""
        if self.pos >= len(self.lines):
            return True
        line = self.lines[self.pos]
        if line[:2] != "--" or not self.outer:
            return False
        return any(_boundary_kind(line, sep) for sep in self.outer)

    def _rest(self) -> str:
        """The lines up to the end of the current entity, consumed."""
        lines, start, outer = self.lines, self.pos, self.outer
        end = len(lines)
        if outer:
            for i in range(start, end):
                line = lines[i]
                if line[:2] == "--" and any(_boundary_kind(line, sep) for sep in outer):
                    end = i
                    break
        self.pos = end
        return "".join(lines[start:end])

    def entity(self, default_type: str) -> Message:
        msg = Message(policy=compat32)
        if default_type != "text/plain":
            msg.set_default_type(default_type)
        header_lines: list[str] = []
        while not self._at_end():
            line = self.lines[self.pos]
            if line.startswith("From "):
                raise _Unusual
            if not _HEADER_LINE.match(line):
                if line in ("\n", "\r\n"):
                    self.pos += 1  # the blank line between headers and body
                break  # anything else starts the body (a defect the feed parser notes)
            header_lines.append(line)
            self.pos += 1
        ctype = _set_headers(msg, header_lines, default_type)
        if ctype == "multipart/digest":
            raise _Unusual
        if ctype.startswith("multipart/"):
            self._multipart(msg)
        elif ctype == "message/delivery-status":
            msg._payload = self._field_blocks()  # type: ignore[attr-defined]
        elif ctype.startswith("message/"):
            msg._payload = [self.entity("text/plain")]  # type: ignore[attr-defined]
        else:
            msg._payload = self._rest()  # type: ignore[attr-defined]
        return msg

    def _field_blocks(self) -> list[Message]:
        """message/delivery-status: each block of fields up to a blank line is a message of its
        own, with the fields as headers (and any line that is not one as its body)."""
        lines = self.lines
        blocks: list[Message] = []
        while True:
            block = Message(policy=compat32)
            header_lines: list[str] = []
            while not self._at_end() and lines[self.pos] not in ("\n", "\r\n"):
                line = lines[self.pos]
                if line.startswith("From "):
                    raise _Unusual
                if not _HEADER_LINE.match(line):
                    break
                header_lines.append(line)
                self.pos += 1
            if _set_headers(block, header_lines, "text/plain") != "text/plain":
                raise _Unusual  # a block that claims to be MIME of its own
            start = self.pos
            while not self._at_end() and lines[self.pos] not in ("\n", "\r\n"):
                self.pos += 1
            block._payload = "".join(lines[start : self.pos])  # type: ignore[attr-defined]
            blocks.append(block)
            if self._at_end():
                return blocks
            self.pos += 1  # the blank line after the block
            if self._at_end():
                return blocks

    def _multipart(self, msg: Message) -> None:
        found = simple_param(msg.get("Content-Type"), "boundary")
        if found is NOT_SIMPLE:
            boundary = msg.get_boundary()
        elif isinstance(found, str):
            boundary = _unquote(found).rstrip()  # get_boundary unquotes once more
        else:
            boundary = None
        if boundary is None:
            msg._payload = self._rest()  # type: ignore[attr-defined]
            return
        separator = "--" + boundary
        parts: list[Message] = []
        preamble: list[str] | None = []
        close_eol = False
        closed = False
        while not self._at_end():
            line = self.lines[self.pos]
            kind = _boundary_kind(line, separator) if line[:2] == "--" else ""
            if kind == "close":
                closed, close_eol = True, _eol_len(line) > 0
                self.pos += 1
                break
            if not kind:
                if preamble is None:
                    raise _Unusual  # cannot happen after a part: parts end at a boundary
                preamble.append(line)
                self.pos += 1
                continue
            if preamble is not None:
                if preamble:
                    preamble[-1] = preamble[-1][: len(preamble[-1]) - _eol_len(preamble[-1])]
                    msg.preamble = "".join(preamble)
                preamble = None
            self.pos += 1
            if self.pos < len(self.lines) and _boundary_kind(self.lines[self.pos], separator):
                raise _Unusual  # doubled boundary lines: the feed parser skips them oddly
            self.outer.append(separator)
            part = self.entity("text/plain")
            self.outer.pop()
            _strip_last_newline(part)
            parts.append(part)
        if preamble is not None:
            # No first boundary at all: the feed parser keeps the text as the payload, and
            # drops what follows a closing boundary (its epilogue loop never appends).
            msg._payload = "".join(preamble)  # type: ignore[attr-defined]
            self._rest()
            msg.epilogue = ""
            return
        msg._payload = parts  # type: ignore[attr-defined]
        if not closed:
            return
        # The feed parser keeps what follows the closing boundary's own newline as it is.
        epilogue = self._rest()
        msg.epilogue = epilogue if close_eol else ""


def _strip_last_newline(part: Message) -> None:
    """RFC 2046: the newline before a boundary belongs to the boundary, not to the part.

    The feed parser takes it from the last message it created: inside a message/rfc822 part that
    is the attached message (or its own last message), and a multipart stands for its parts.
    """
    while part.get_content_maintype() == "message":
        payload = part._payload  # type: ignore[attr-defined]
        if not isinstance(payload, list) or not payload:
            return
        part = payload[-1]  # the attached message, or a delivery status's last field block
    if part.get_content_maintype() == "multipart":
        epilogue = part.epilogue
        if epilogue == "":
            part.epilogue = None
        elif epilogue is not None:
            part.epilogue = epilogue[: len(epilogue) - _eol_len(epilogue)]
        return
    payload = part._payload  # type: ignore[attr-defined]
    if isinstance(payload, str):
        part._payload = payload[: len(payload) - _eol_len(payload)]  # type: ignore[attr-defined]


def _set_headers(msg: Message, lines: list[str], default_type: str) -> str:
    """The feed parser's _parse_headers with compat32's header_source_parse; the content type."""
    headers: list[tuple[str, str]] = []
    current: list[str] = []
    for line in lines:
        if line[0] in " \t":
            if current:
                current.append(line)
            continue  # a continuation with nothing to continue: dropped, as the feed parser does
        if current:
            headers.append(_header(current))
            current = []
        if line.find(":") == 0:
            continue  # no field name: dropped
        current = [line]
    if current:
        headers.append(_header(current))
    msg._headers = headers  # type: ignore[attr-defined]
    for name, value in headers:
        if name.lower() == "content-type":
            if not value.isascii():
                return msg.get_content_type()  # 8-bit bytes: compat32 makes it a Header
            ctype = value.partition(";")[0].strip().lower()
            return ctype if ctype.count("/") == 1 else "text/plain"  # as get_content_type
    return default_type


def _header(source: list[str]) -> tuple[str, str]:
    name, value = source[0].split(":", 1)
    value = value.lstrip(" \t") + "".join(source[1:])
    return name, value.rstrip("\r\n")
