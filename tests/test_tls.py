"""TLS on submission: STARTTLS and implicit TLS against aiosmtpd on loopback, certificates checked.

A throw-away CA is made with the openssl command line for this module; the server's certificate
names 127.0.0.1 (another one names a different host, for the host-name check). The last test
uses Postfix's submission port in the mail environment (tests/mailenv), whose CA start.sh makes.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from mailenv import BILLING, DEBTORS, MailEnv

from mailer.config import load_settings
from mailer.demo import write_config
from mailer.domain.models import Identity, SmtpSecurity
from mailer.errors import IdentityUnavailableError
from mailer.localservers_pymap import close_server
from mailer.transports.smtp import SmtpTransport

HOST = "127.0.0.1"
SENDER = "cobros@taller-demo.example"
DATA = b"From: cobros@taller-demo.example\r\nSubject: hola\r\nMessage-ID: <t@x>\r\n\r\nhola\r\n"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate an identity's ca_file points at
    cert: Path  # server certificate for 127.0.0.1, signed by the CA
    key: Path
    other_cert: Path  # signed by the same CA, for mail.other.test only
    other_key: Path


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _leaf(cwd: Path, name: str, san: str) -> None:
    ext = cwd / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(cwd, "req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}")  # fmt: skip
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem")  # fmt: skip


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl(d, "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=mailer test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _leaf(d, "server", f"IP:{HOST}")
    _leaf(d, "other", "DNS:mail.other.test")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "other.pem", d / "other.key")


@dataclass
class Sink:
    """What the server saw: connections opened, and each message with whether it came over TLS."""

    connections: int = 0
    messages: list[tuple[bool, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        over_tls = server.transport is not None and (
            server.transport.get_extra_info("ssl_object") is not None
        )
        self.messages.append((over_tls, list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 2.0.0 OK: queued as TLS1"


@asynccontextmanager
async def server(
    pki: Pki, security: SmtpSecurity, *, other_name: bool = False, offer_starttls: bool = True
) -> AsyncIterator[tuple[Sink, int]]:
    """aiosmtpd on loopback: STARTTLS offered (and required) or TLS from the first byte."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if other_name:
        context.load_cert_chain(pki.other_cert, pki.other_key)
    else:
        context.load_cert_chain(pki.cert, pki.key)
    sink = Sink()
    loop = asyncio.get_running_loop()
    protocols: list[SMTP] = []
    starttls = security is SmtpSecurity.STARTTLS and offer_starttls

    def factory() -> SMTP:
        sink.connections += 1
        proto = SMTP(
            sink,
            hostname="localhost",
            tls_context=context if starttls else None,
            require_starttls=starttls,
            loop=loop,
        )
        protocols.append(proto)
        return proto

    implicit = context if security is SmtpSecurity.TLS else None
    listening = await loop.create_server(factory, HOST, 0, ssl=implicit)
    try:
        yield sink, int(listening.sockets[0].getsockname()[1])
    finally:
        await close_server(listening)
        tasks: list[Any] = []
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.close()
            if proto._handler_coroutine is not None:
                tasks.append(proto._handler_coroutine)
        await asyncio.gather(*tasks, return_exceptions=True)


def identity(port: int, security: SmtpSecurity, **overrides: Any) -> Identity:
    base = Identity(
        name="cobros",
        address=SENDER,
        display_name="Cobros",
        smtp_host=HOST,
        smtp_port=port,
        smtp_security=security,
        smtp_user=None,
        password_env=None,
        password_file=None,
        imap_host=None,
        imap_port=993,
        imap_security=SmtpSecurity.TLS,
        imap_user=None,
    )
    return replace(base, **overrides)


async def send(ident: Identity) -> Any:
    transport = SmtpTransport(ident, None, timeout=10, attempts=3, backoff=0.01)
    try:
        return await transport.send(SENDER, ["pay@acme.example"], DATA)
    finally:
        await transport.close()


TLS_MODES = pytest.mark.parametrize("security", [SmtpSecurity.STARTTLS, SmtpSecurity.TLS])


@TLS_MODES
def test_verified_with_the_identity_ca_file(pki: Pki, security: SmtpSecurity) -> None:
    async def go() -> None:
        async with server(pki, security) as (sink, port):
            receipt = await send(identity(port, security, ca_file=str(pki.ca)))
            assert receipt.code == 250 and receipt.queue_id == "TLS1"
            assert sink.messages == [(True, ["pay@acme.example"], DATA)]

    asyncio.run(go())


@TLS_MODES
def test_untrusted_certificate_is_refused_by_default(pki: Pki, security: SmtpSecurity) -> None:
    async def go() -> None:
        async with server(pki, security) as (sink, port):
            ident = identity(port, security)  # no ca_file: the system's CAs, verification on
            assert ident.verify_tls
            with pytest.raises(IdentityUnavailableError, match="TLS certificate not trusted"):
                await send(ident)
            assert sink.messages == []
            # The identity's fault, not the connection's: not retried (attempts=3 above).
            assert sink.connections == 1

    asyncio.run(go())


@TLS_MODES
def test_host_name_is_checked(pki: Pki, security: SmtpSecurity) -> None:
    async def go() -> None:
        async with server(pki, security, other_name=True) as (sink, port):
            with pytest.raises(IdentityUnavailableError, match="mismatch"):
                await send(identity(port, security, ca_file=str(pki.ca)))
            assert sink.messages == []

    asyncio.run(go())


@TLS_MODES
def test_verification_off_only_when_configured(pki: Pki, security: SmtpSecurity) -> None:
    async def go() -> None:
        async with server(pki, security) as (sink, port):
            await send(identity(port, security, verify_tls=False))
            assert [tls for tls, _, _ in sink.messages] == [True]

    asyncio.run(go())


def test_starttls_missing_is_refused_never_sent_in_clear(pki: Pki) -> None:
    async def go() -> None:
        security = SmtpSecurity.STARTTLS
        async with server(pki, security, offer_starttls=False) as (sink, port):
            with pytest.raises(IdentityUnavailableError, match="does not offer STARTTLS"):
                await send(identity(port, security, ca_file=str(pki.ca)))
            assert sink.messages == []

    asyncio.run(go())


def test_config_verifies_unless_told_otherwise(tmp_path: Path) -> None:
    servers = SimpleNamespace(smtp_host=HOST, smtp_port=587, imap_host=HOST, imap_port=993)
    config = write_config(tmp_path, servers)  # type: ignore[arg-type]
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("[identities.cobros]\n", "[identities.cobros]\nverify_tls = false\n", 1),
        encoding="utf-8",
    )
    settings = load_settings(config)
    assert settings.identity("cobros").verify_tls is False
    assert settings.identity("administracion").verify_tls is True
    assert settings.identity("administracion").ca_file is None


def test_postfix_submission_starttls(mailenv: MailEnv) -> None:
    """The real thing: Postfix's submission port, STARTTLS, AUTH, certificate checked."""
    assert mailenv.ca_file is not None, "the mail environment started without TLS (see log/tls.log)"
    ident = identity(
        mailenv.submission_port,
        SmtpSecurity.STARTTLS,
        address=BILLING,
        smtp_user=BILLING,
        ca_file=str(mailenv.ca_file),
    )
    data = (
        f"From: {BILLING}\r\nTo: {DEBTORS[0]}\r\nSubject: TLS\r\n"
        "Message-ID: <tls.submission@creditor.test>\r\n\r\nhola\r\n"
    ).encode()

    async def go(ident: Identity) -> Any:
        transport = SmtpTransport(ident, mailenv.password, timeout=10, attempts=1)
        try:
            return await transport.send(BILLING, [DEBTORS[0]], data)
        finally:
            await transport.close()

    receipt = asyncio.run(go(ident))
    assert receipt.code == 250 and receipt.queue_id
    got = mailenv.wait_for_message(
        DEBTORS[0], lambda m: m["Message-ID"] == "<tls.submission@creditor.test>"
    )
    # RFC 3848: "ESMTPSA" is ESMTP with TLS (S) and AUTH (A).
    assert any(f"ESMTPSA id {receipt.queue_id}" in r for r in got.get_all("Received", []))
    with pytest.raises(IdentityUnavailableError, match="TLS certificate not trusted"):
        asyncio.run(go(replace(ident, ca_file=None)))
