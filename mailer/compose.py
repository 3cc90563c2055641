"""Rendered text → the exact MIME bytes we send: honest headers, threading, no header injection."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from mailer.domain.models import Case, Creditor, Identity
from mailer.render import RenderedEmail, one_line

_POLICY = SMTP.clone(max_line_length=78)


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

    Every header value is built from structured parts (``Address`` objects, one-line strings),
    so ledger data with CR/LF cannot add or alter a header: the email package would refuse.
    """
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = from_address(creditor, identity)
    msg["To"] = [
        Address(display_name=one_line(case.debtor.name), addr_spec=address)
        for address in recipients
    ]
    if identity.reply_to:
        msg["Reply-To"] = Address(addr_spec=identity.reply_to)
    msg["Subject"] = one_line(rendered.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = " ".join([*references, in_reply_to][-10:])
    if opt_out:
        # RFC 2369: a machine-readable way to ask for no more mail, next to the line in the body.
        msg["List-Unsubscribe"] = (
            f"<mailto:{identity.reply_to or identity.address}?subject=BAJA%20STOP>"
        )
    msg["X-Mailer-Case"] = str(case.id)
    msg.set_content(rendered.text, charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for attachment in attachments:
        msg.add_attachment(
            attachment.content,
            maintype=attachment.maintype,
            subtype=attachment.subtype,
            filename=one_line(attachment.filename),
        )
    return msg.as_bytes(policy=_POLICY)


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
