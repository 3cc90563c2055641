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
    # Only CR LF and LF end lines here, as in the feed parser, not \x0c, \x1c, ... as well as in
    # str.splitlines(). That splits in one step, and gives the same lines when it finds no more
    # of them than LFs give (one more when the text does not end in LF): any other line end
    # makes one more line, but for one that ends the text, where both cut alike.
    lines = text.splitlines(True)
    if len(lines) != text.count("\n") + (not text.endswith("\n") and text != ""):
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
        # Each message's content type as read (id of the message: all live until the end):
        # what get_content_type() would say, without reading the headers again.
        self.types: dict[int, str] = {}

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
        # The header lines, up to the end of the entity (see _at_end), inlined: it runs per line.
        lines, outer, match = self.lines, self.outer, _HEADER_LINE.match
        start = pos = self.pos
        count = len(lines)
        blank = 0
        while pos < count:
            line = lines[pos]
            if outer and line[:2] == "--" and any(_boundary_kind(line, sep) for sep in outer):
                break
            if not match(line):
                if line.startswith("From "):  # never a header line
                    raise _Unusual
                if line in ("\n", "\r\n"):
                    blank = 1  # the blank line between headers and body
                break  # anything else starts the body (a defect the feed parser notes)
            pos += 1
        self.pos = pos + blank
        ctype, value = _set_headers(msg, lines[start:pos], default_type)
        self.types[id(msg)] = ctype
        if ctype == "multipart/digest":
            raise _Unusual
        if ctype.startswith("multipart/"):
            self._multipart(msg, value)
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
            if _set_headers(block, header_lines, "text/plain")[0] != "text/plain":
                raise _Unusual  # a block that claims to be MIME of its own
            self.types[id(block)] = "text/plain"
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

    def _multipart(self, msg: Message, value: str | None) -> None:
        # `value` is the Content-Type as received: as msg.get gives it back when plain ASCII.
        found = simple_param(
            value if value is not None and value.isascii() else msg.get("Content-Type"),
            "boundary",
        )
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
            _strip_last_newline(part, self.types)
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


def _strip_last_newline(part: Message, types: dict[int, str]) -> None:
    """RFC 2046: the newline before a boundary belongs to the boundary, not to the part.

    The feed parser takes it from the last message it created: inside a message/rfc822 part that
    is the attached message (or its own last message), and a multipart stands for its parts.
    `types` has the content type of every message read so far (see _Reader.types).
    """
    while types[id(part)].startswith("message/"):
        payload = part._payload  # type: ignore[attr-defined]
        if not isinstance(payload, list) or not payload:
            return
        part = payload[-1]  # the attached message, or a delivery status's last field block
    if types[id(part)].startswith("multipart/"):
        epilogue = part.epilogue
        if epilogue == "":
            part.epilogue = None
        elif epilogue is not None:
            part.epilogue = epilogue[: len(epilogue) - _eol_len(epilogue)]
        return
    payload = part._payload  # type: ignore[attr-defined]
    if isinstance(payload, str):
        part._payload = payload[: len(payload) - _eol_len(payload)]  # type: ignore[attr-defined]


def _set_headers(msg: Message, lines: list[str], default_type: str) -> tuple[str, str | None]:
    """The feed parser's _parse_headers with compat32's header_source_parse; the content type,
    and the Content-Type header as received (None without one)."""
    headers: list[tuple[str, str]] = []
    name: str | None = None  # the field being read, and its value so far
    value = ""
    for line in lines:
        if line[0] in " \t":
            if name is not None:
                value += line
            continue  # a continuation with nothing to continue: dropped, as the feed parser does
        if name is not None:
            headers.append((name, value.rstrip("\r\n")))
            name = None
        if line.find(":") == 0:
            continue  # no field name: dropped
        name, value = line.split(":", 1)
        value = value.lstrip(" \t")
    if name is not None:
        headers.append((name, value.rstrip("\r\n")))
    msg._headers = headers  # type: ignore[attr-defined]
    for name, value in headers:
        if name.lower() == "content-type":
            if not value.isascii():
                return msg.get_content_type(), value  # 8-bit bytes: compat32 makes it a Header
            ctype = value.partition(";")[0].strip().lower()
            return (ctype if ctype.count("/") == 1 else "text/plain"), value  # as get_content_type
    return default_type, None
