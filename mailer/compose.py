"""Rendered text → the exact MIME bytes we send: honest headers, threading, no header injection."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime
from urllib.parse import quote

from mailer.config import is_address
from mailer.domain.models import Case, Creditor, Identity
from mailer.render import RenderedEmail, one_line

# The message is written here rather than by the email package's EmailMessage: its header
# folding cost ~4 ms a message, most of the whole outbound path (bench/send.py). What kept
# headers safe there is kept here: every value is one line (``one_line``), every address is a
# checked addr-spec, every Message-ID matches a strict pattern, and anything non-ASCII goes out
# as RFC 2047 encoded words; the tests parse the result back with the email package.

_LIMIT = 78  # header lines are folded to stay within this when a fold point allows
_WORD = 60  # a longer ASCII word is sent encoded, which can be split across lines
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # an ASCII display name with these is quoted
_QUOTED = re.compile(r'[\\"]')
_MSG_ID = re.compile(r"^<[^<>@\s\x00-\x1f\x7f]+@[^<>@\s\x00-\x1f\x7f]+>$")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+$")  # a MIME type or subtype
_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    maintype: str = "application"
    subtype: str = "pdf"


def new_message_id(identity: Identity, case_id: int, step: int) -> str:
    """A globally unique Message-ID on the identity's own domain, fixed before the first try."""
    return f"<mailer.{case_id}.{step}.{secrets.token_hex(8)}@{identity.domain}>"


def from_address(creditor: Creditor, identity: Identity) -> Address:
    """The honest sender: the mailbox's own name and the creditor's legal name."""
    display = one_line(f"{identity.display_name} — {creditor.legal_name}")
    user, domain = identity.address.rsplit("@", 1)
    return Address(display_name=display, username=user, domain=domain)


# --- headers -----------------------------------------------------------------------------------


def _fold(name: str, words: Sequence[str]) -> str:
    """``Name: w1 w2 …``, a line break (CRLF + space) between words where a line would pass 78."""
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > _LIMIT and line != f"{name}:":
            lines.append(line)
            line = f" {word}"
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "\r\n".join(lines)


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 encoded words (UTF-8) of at most 75 characters each.

    The email package's quoted-printable header encoding leaves only letters, digits and
    ``-!*+/`` as they are, so the words are valid inside a display name too (RFC 2047 §5).
    """
    return Header(text, "utf-8", maxlinelen=75).encode(linesep="\n").split("\n ")


def _words(text: str, *, phrase: bool) -> list[str]:
    """One-line ``text`` as header words: ASCII runs as they are (in a display name, quoted when
    they hold specials), runs of other words as encoded words.

    A run of neighbouring non-ASCII words becomes one encoded word with its spaces inside:
    readers drop the whitespace between two encoded words (and Python's parser keeps it in
    display names), so the fewer such pairs, the fewer ways to read the name.
    """
    words: list[str] = []
    run: list[str] = []
    encoded = False  # what ``run`` holds
    for token in text.split(" ") if text else []:
        plain = token.isascii() and "=?" not in token and len(token) <= _WORD
        if run and plain == encoded:
            words.extend(_encoded_words(" ".join(run)) if encoded else _plain(run, phrase))
            run = []
        run.append(token)
        encoded = not plain
    if run:
        words.extend(_encoded_words(" ".join(run)) if encoded else _plain(run, phrase))
    return words


def _plain(run: list[str], phrase: bool) -> list[str]:
    if not (phrase and any(_SPECIALS.search(token) for token in run)):
        return run
    # One quoted string per stretch of up to _WORD characters, so that the header can fold.
    quoted: list[str] = []
    stretch: list[str] = []
    for token in run:
        if stretch and len(" ".join([*stretch, token])) > _WORD:
            quoted.append(_quoted(" ".join(stretch)))
            stretch = []
        stretch.append(token)
    quoted.append(_quoted(" ".join(stretch)))
    return quoted


def _quoted(text: str) -> str:
    escaped = _QUOTED.sub(lambda m: "\\" + m.group(0), text)
    return f'"{escaped}"'


def _unstructured(name: str, value: str) -> str:
    return _fold(name, _words(one_line(value), phrase=False))


def _mailboxes(name: str, pairs: Sequence[tuple[str, str]]) -> str:
    """An address-list header: each ``(display name, addr-spec)`` checked, quoted or encoded."""
    words: list[str] = []
    for display, address in pairs:
        if not is_address(address):
            raise ValueError(f"{name}: not an email address: {address!r}")
        if words:
            words[-1] += ","
        phrase = _words(one_line(display), phrase=True)
        words.extend([*phrase, f"<{address}>"] if phrase else [address])
    return _fold(name, words)


def _msg_ids(name: str, ids: Sequence[str]) -> str:
    for message_id in ids:
        if not _MSG_ID.match(message_id):
            raise ValueError(f"{name}: not a Message-ID: {message_id!r}")
    return _fold(name, ids)


# --- body --------------------------------------------------------------------------------------


def _text_part(subtype: str, text: str) -> bytes:
    """A UTF-8 text part, quoted-printable (lines under 76, CRLF, nothing 8-bit on the wire)."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    body = binascii.b2a_qp(data, istext=True).replace(b"\n", _CRLF)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    return head.encode("ascii") + body


def _attachment_part(attachment: Attachment) -> bytes:
    maintype, subtype = attachment.maintype, attachment.subtype
    if not (_TOKEN.match(maintype) and _TOKEN.match(subtype)):
        raise ValueError(f"attachment: not a MIME type: {maintype}/{subtype}")
    filename = one_line(attachment.filename) or "attachment"
    if filename.isascii() and not _QUOTED.search(filename):
        parameter = f'filename="{filename}"'
    else:
        parameter = f"filename*=utf-8''{quote(filename, safe='')}"  # RFC 2231
    head = "\r\n".join(
        [
            f"Content-Type: {maintype}/{subtype}",
            "Content-Transfer-Encoding: base64",
            _fold("Content-Disposition", ["attachment;", parameter]),
        ]
    )
    body = base64.encodebytes(attachment.content).replace(b"\n", _CRLF)
    return head.encode("ascii") + _CRLF + _CRLF + body


def _multipart(subtype: str, parts: Sequence[bytes]) -> tuple[str, bytes]:
    """The Content-Type header value and the body; every part's content ends with CRLF.

    "=_" cannot occur in quoted-printable or base64 text, so the boundary cannot either.
    """
    boundary = f"=_mailer_{secrets.token_hex(12)}"
    delimiter = f"--{boundary}".encode("ascii")
    body = b"".join(delimiter + _CRLF + part + _CRLF for part in parts)
    return f'multipart/{subtype}; boundary="{boundary}"', body + delimiter + b"--" + _CRLF


def compose(
    creditor: Creditor,
    identity: Identity,
    case: Case,
    rendered: RenderedEmail,
    *,
    recipients: Sequence[str],
    message_id: str,
    date: datetime,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    attachments: Sequence[Attachment] = (),
    opt_out: bool = False,
) -> bytes:
    """The message as bytes (CRLF line ends, as SMTP and IMAP APPEND carry them).

    Every header value is built from structured parts (checked addresses and Message-IDs,
    one-line strings), so ledger data with CR/LF cannot add or alter a header.
    """
    sender = from_address(creditor, identity)
    headers = [
        _mailboxes("From", [(sender.display_name, identity.address)]),
        _mailboxes("To", [(case.debtor.name, address) for address in recipients]),
    ]
    if identity.reply_to:
        headers.append(_mailboxes("Reply-To", [("", identity.reply_to)]))
    headers += [
        _unstructured("Subject", rendered.subject),
        f"Date: {format_datetime(date)}",
        _msg_ids("Message-ID", [message_id]),
    ]
    if in_reply_to:
        headers.append(_msg_ids("In-Reply-To", [in_reply_to]))
        headers.append(_msg_ids("References", [*references, in_reply_to][-10:]))
    if opt_out:
        # RFC 2369: a machine-readable way to ask for no more mail, next to the line in the body.
        unsubscribe = identity.reply_to or identity.address
        if not is_address(unsubscribe):
            raise ValueError(f"List-Unsubscribe: not an email address: {unsubscribe!r}")
        headers.append(f"List-Unsubscribe: <mailto:{unsubscribe}?subject=BAJA%20STOP>")
    headers.append(f"X-Mailer-Case: {int(case.id)}")
    content_type, body = _multipart(
        "alternative", [_text_part("plain", rendered.text), _text_part("html", rendered.html)]
    )
    if attachments:
        head = _fold("Content-Type", content_type.split(" "))
        alternative = head.encode("ascii") + _CRLF + _CRLF + body
        content_type, body = _multipart(
            "mixed", [alternative, *(_attachment_part(a) for a in attachments)]
        )
    headers += ["MIME-Version: 1.0", _fold("Content-Type", content_type.split(" "))]
    return "\r\n".join(headers).encode("ascii") + _CRLF + _CRLF + body


def compose_preview(
    creditor: Creditor, identity: Identity, case: Case, rendered: RenderedEmail, now: datetime
) -> str:
    """Headers and plain text as the debtor would see them (for `mailer preview`)."""
    to = ", ".join(f"{one_line(case.debtor.name)} <{a}>" for a in case.debtor.active_addresses[:1])
    lines = [f"From: {from_address(creditor, identity)}", f"To: {to}"]
    if identity.reply_to:
        lines.append(f"Reply-To: {identity.reply_to}")
    lines += [
        f"Date: {format_datetime(now)}",
        f"Subject: {one_line(rendered.subject)}",
        "",
        rendered.text,
    ]
    return "\n".join(lines)
