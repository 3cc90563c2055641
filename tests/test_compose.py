"""The MIME writer: what it writes, the email package reads back exactly; no header injection."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from email.message import EmailMessage

import pytest

from mailer.compose import Attachment, compose
from mailer.domain.models import (
    Case,
    Contact,
    Creditor,
    Debtor,
    DebtorKind,
    Identity,
    Invoice,
    SmtpSecurity,
)
from mailer.render import RenderedEmail

CREDITOR = Creditor(
    legal_name="Talleres Ejemplo, S.L.",
    tax_id="B12345678",
    address="Calle Mayor 1, 28013 Madrid",
    country="ES",
    timezone="Europe/Madrid",
    iban="ES91 2100 0418 4502 0005 1332",
)
IDENTITY = Identity(
    name="billing",
    address="cobros@talleres.example",
    display_name="Ana García",
    smtp_host="smtp.example",
    smtp_port=587,
    smtp_security=SmtpSecurity.STARTTLS,
    smtp_user=None,
    password_env=None,
    password_file=None,
    imap_host=None,
    imap_port=993,
    imap_security=SmtpSecurity.TLS,
    imap_user=None,
    reply_to="administracion@talleres.example",
)
NOW = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)
TEXT = (
    "Estimado cliente:\n\nLa factura F-1 de 1.210,00 € sigue pendiente. "
    + "Una línea larga que pasa de setenta y seis caracteres, con acentos: áéíóú ñ, y un = " * 3
    + "\n.una línea que empieza por punto\nFrom aquí\nespacio al final   \n\tTabulador\n"
)
HTML = '<html><body><p class="x">Factura F-1: 1.210,00&nbsp;€ — «pendiente»</p></body></html>'


def make_case(name: str = "Construcciones Pérez, S.L.") -> Case:
    debtor = Debtor(
        id="D1",
        name=name,
        kind=DebtorKind.BUSINESS,
        lang="es",
        country="ES",
        region="MD",
        timezone="Europe/Madrid",
        contacts=(Contact("admin@perez.example"),),
    )
    invoice = Invoice("F-1", "D1", "EUR", Decimal("1210.00"), date(2025, 4, 15), date(2025, 5, 15))
    return Case(id=7, debtor=debtor, invoices=(invoice,))


def build(
    case: Case | None = None,
    subject: str = "Factura F-1: recordatorio de pago pendiente — segundo aviso, con más detalle",
    **kwargs: object,
) -> tuple[bytes, EmailMessage]:
    case = case or make_case()
    raw = compose(
        CREDITOR,
        IDENTITY,
        case,
        RenderedEmail(subject=subject, text=TEXT, html=HTML),
        recipients=list(case.debtor.active_addresses),
        message_id="<mailer.7.2.abc@talleres.example>",
        date=NOW,
        **kwargs,  # type: ignore[arg-type]
    )
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return raw, parsed


def content(part: EmailMessage) -> str:
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")  # the parser keeps the wire's CRLF


def test_headers_and_bodies_read_back_exactly() -> None:
    raw, parsed = build(
        in_reply_to="<mailer.7.1.abc@talleres.example>",
        references=["<mailer.7.0.abc@talleres.example>"],
        opt_out=True,
    )
    assert raw.isascii() and b"\n" not in raw.replace(b"\r\n", b"")  # 7-bit, CRLF only
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert all(len(word) <= 75 for word in re.findall(rb"=\?[^ ]*\?=", raw))  # RFC 2047
    assert parsed["From"].addresses[0].display_name == "Ana García — Talleres Ejemplo, S.L."
    assert parsed["From"].addresses[0].addr_spec == "cobros@talleres.example"
    assert parsed["To"].addresses[0].display_name == "Construcciones Pérez, S.L."
    assert parsed["To"].addresses[0].addr_spec == "admin@perez.example"
    assert parsed["Reply-To"].addresses[0].addr_spec == "administracion@talleres.example"
    assert parsed["Subject"] == (
        "Factura F-1: recordatorio de pago pendiente — segundo aviso, con más detalle"
    )
    assert parsed["Date"].datetime == NOW
    assert parsed["Message-ID"] == "<mailer.7.2.abc@talleres.example>"
    assert parsed["In-Reply-To"] == "<mailer.7.1.abc@talleres.example>"
    assert parsed["References"] == (
        "<mailer.7.0.abc@talleres.example> <mailer.7.1.abc@talleres.example>"
    )
    assert "BAJA" in parsed["List-Unsubscribe"]
    assert parsed["X-Mailer-Case"] == "7"
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = parsed.iter_parts()
    assert content(plain) == TEXT
    assert html.get_content_type() == "text/html"
    assert content(html) == HTML + "\n"
    assert not parsed.defects and not plain.defects and not html.defects


def test_plain_ascii_headers_stay_readable() -> None:
    raw, parsed = build(make_case("Acme Trading Ltd"), subject="Invoice F-1: payment reminder")
    assert b"\r\nTo: Acme Trading Ltd <admin@perez.example>\r\n" in raw
    assert b"\r\nSubject: Invoice F-1: payment reminder\r\n" in raw
    assert parsed["In-Reply-To"] is None and parsed["List-Unsubscribe"] is None


@pytest.mark.parametrize(
    "name",
    [
        'O"Brien \\ Hijos, S.L.',  # quotes and backslashes inside a quoted display name
        "=?utf-8?q?Fake?= Name",  # looks like an encoded word: encoded itself
        "Una Razón Social Muy Larga de Verdad, Sociedad Limitada Unipersonal, Sucursal en Madrid",
        "A Very Long Plain Ascii Company Name That Goes On And On, Limited Liability Partnership",
    ],
)
def test_awkward_display_names_round_trip(name: str) -> None:
    raw, parsed = build(make_case(name))
    assert parsed["To"].addresses[0].display_name == name
    assert parsed["To"].addresses[0].addr_spec == "admin@perez.example"
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))


def test_line_breaks_in_ledger_data_cannot_add_headers() -> None:
    evil = "Acme\r\nBcc: victim@evil.example\r\nX-Evil: 1"
    _, parsed = build(make_case(evil), subject="Hola\r\nBcc: victim@evil.example")
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed["To"].addresses[0].display_name == "Acme Bcc: victim@evil.example X-Evil: 1"
    assert len(parsed["To"].addresses) == 1
    assert parsed["Subject"] == "Hola Bcc: victim@evil.example"


@pytest.mark.parametrize(
    "address", ["admin@perez.example\r\nBcc: victim@evil.example", "<admin@perez.example>", "x"]
)
def test_bad_addresses_are_refused(address: str) -> None:
    case = make_case()
    case = replace(case, debtor=replace(case.debtor, contacts=(Contact(address),)))
    with pytest.raises(ValueError, match="not an email address"):
        build(case)


def test_bad_message_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="not a Message-ID"):
        build(in_reply_to="<a@b>\r\nBcc: victim@evil.example")


def test_attachments_make_a_mixed_message() -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 20
    _, parsed = build(
        attachments=[Attachment("Factura F-1.pdf", pdf), Attachment('Año 2025 "F-2".pdf', b"x")]
    )
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, first, second = parsed.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [content(p) for p in alternative.iter_parts()] == [TEXT, HTML + "\n"]
    assert first.get_content_type() == "application/pdf"
    assert first.get_filename() == "Factura F-1.pdf"
    assert first.get_content() == pdf
    assert second.get_filename() == 'Año 2025 "F-2".pdf'
    assert second.get_content() == b"x"
