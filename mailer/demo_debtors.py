"""The demo's debtor side: a few scripted debtors answer, bounce or go on holiday, as real ones do.

Their answers are written into the business's own INBOX (the maildir the embedded IMAP server
serves), where the real watcher finds, classifies and acts on them. The message builders are
also what the tests use to stand in for debtors and their mail servers.
"""

from __future__ import annotations

import email
import email.policy
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

from mailer.localservers import LocalMailServers, deliver


def _answer_headers(
    original: bytes, sender: str, subject_prefix: str, when: datetime
) -> tuple[EmailMessage, EmailMessage]:
    """The parsed original and the headers of an answer to it from ``sender``."""
    parent = email.message_from_bytes(original, policy=email.policy.default)
    assert isinstance(parent, EmailMessage)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = str(parent.get("Reply-To") or parent.get("From", ""))
    msg["Subject"] = subject_prefix + str(parent.get("Subject", ""))
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@{sender.rsplit('@', 1)[-1].strip('>')}>"
    msg["In-Reply-To"] = str(parent["Message-ID"])
    return parent, msg


def reply_to(original: bytes, sender: str, text: str, when: datetime) -> bytes:
    """A person's answer to ``original``: threaded, with the quoted original below."""
    parent, msg = _answer_headers(original, sender, "Re: ", when)
    msg["References"] = str(parent["Message-ID"])
    body = parent.get_body(preferencelist=("plain",))
    quoted = ""
    if body is not None:
        quoted = "\n".join("> " + line for line in str(body.get_content()).splitlines()[:20])
    msg.set_content(f"{text}\n\nEl {when:%d/%m/%Y}, {parent.get('From')} escribió:\n{quoted}\n")
    return msg.as_bytes()


def auto_reply(original: bytes, sender: str, text: str, when: datetime) -> bytes:
    """An out-of-office answer (RFC 3834), as a mail server's vacation responder sends it."""
    _parent, msg = _answer_headers(original, sender, "Auto: ", when)
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(text)
    return msg.as_bytes()


def delivery_report(
    original: bytes, failed: str, status: str, diagnostic: str, when: datetime, mta: str
) -> bytes:
    """A failure DSN (RFC 3464) as Postfix writes it, returning the original's headers."""
    head = original.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    parent = email.message_from_bytes(original, policy=email.policy.default)
    boundary = f"{secrets.token_hex(6)}/{mta}"
    return (
        f"From: MAILER-DAEMON@{mta} (Mail Delivery System)\r\n"
        f"To: {parent.get('From', '')}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(when)}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@{mta}>\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        f"\r\n--{boundary}\r\nContent-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at host {mta}.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        f"<{failed}>: {diagnostic}\r\n"
        f"\r\n--{boundary}\r\nContent-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {mta}\r\nArrival-Date: {format_datetime(when)}\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nOriginal-Recipient: rfc822;{failed}\r\n"
        f"Action: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {diagnostic}\r\n"
        f"\r\n--{boundary}\r\nContent-Description: Undelivered Message Headers\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n{head}\r\n"
        f"\r\n--{boundary}--\r\n"
    ).encode()


@dataclass(frozen=True, slots=True)
class Script:
    """What one debtor address does when its ``after``-th reminder arrives."""

    address: str
    after: int
    does: str  # "reply", "autoreply", "bounce", or "refuse" (its server refuses ``sender``)
    text: str
    delay: timedelta = timedelta(hours=3)
    sender: str = ""  # for "refuse": the identity whose mail the debtor's server refuses


# Sample-ledger debtors (mailer/data/sample) and what they do in the demo.
SCRIPTS: tuple[Script, ...] = (
    Script("administracion@estudio-arquitectura-norte.example", 1, "reply",
           "Buenos días, disculpen el retraso. Pagaremos la factura el día 30 de este mes.\n"
           "Un saludo, Marta"),
    Script("administracion@talleres-martin.example", 2, "reply",
           "No estamos de acuerdo con este importe: el trabajo no se terminó y lo reclamamos."),
    Script("accounts@brightside-media-ltd.example", 1, "autoreply",
           "Thank you for your email. I am out of the office until 2 February 2026 with no\n"
           "access to email. I will reply when I am back."),
    Script("administracion@bodegas-ribera-alta.example", 1, "bounce",
           "550 5.1.1 <administracion@bodegas-ribera-alta.example>: Recipient address "
           "rejected: User unknown in virtual mailbox table"),
    Script("inaki-etxeberria.19@correo.example", 1, "reply",
           "Por favor, dejen de escribirme a este correo."),
    Script("administracion@consultoria-vasca.example", 1, "reply",
           "Ahora mismo no podemos pagarlo todo. ¿Podríamos pagarlo en tres plazos?"),
    Script("administracion@construcciones-iberia.example", 0, "refuse",
           "550 5.7.1 <cobros@taller-demo.example>: Sender address rejected: Access denied",
           sender="cobros@taller-demo.example"),
)  # fmt: skip


@dataclass
class DemoDebtors:
    """Watches what the SMTP server accepted and answers on the scripted debtors' behalf."""

    servers: LocalMailServers
    scripts: Sequence[Script] = SCRIPTS
    _seen: int = 0
    _counts: dict[str, int] = field(default_factory=dict)
    _due: list[tuple[datetime, str, bytes]] = field(default_factory=list)
    log: list[tuple[datetime, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A debtor's server with a sender-block table: it refuses one identity at RCPT.
        for script in self.scripts:
            if script.does == "refuse":
                domain = script.address.rsplit("@", 1)[1]
                self.servers.sender_blocks[(script.sender.lower(), domain)] = script.text

    def react(self, now: datetime) -> None:
        """Schedule answers to newly accepted mail; deliver those whose time has come."""
        messages = self.servers.sink_messages()
        by_address = {s.address: s for s in self.scripts}
        for message in messages[self._seen :]:
            for rcpt in message.rcpt_tos:
                script = by_address.get(rcpt.lower())
                if script is None:
                    continue
                self._counts[rcpt.lower()] = count = self._counts.get(rcpt.lower(), 0) + 1
                if count == script.after:
                    self._due.append(
                        (
                            now + script.delay,
                            message.envelope_from,
                            self._answer(script, message.data, now + script.delay),
                        )
                    )
                    self.log.append((now + script.delay, f"{script.address}: {script.does}"))
        self._seen = len(messages)
        ready = [d for d in self._due if d[0] <= now]
        self._due = [d for d in self._due if d[0] > now]
        for _when, mailbox, data in ready:
            deliver(self.servers.mailbox_path(mailbox), data)

    @staticmethod
    def _answer(script: Script, original: bytes, when: datetime) -> bytes:
        if script.does == "bounce":
            mta = "mx." + script.address.rsplit("@", 1)[1]
            return delivery_report(original, script.address, "5.1.1", script.text, when, mta)
        if script.does == "autoreply":
            return auto_reply(original, script.address, script.text, when)
        return reply_to(original, script.address, script.text, when)
