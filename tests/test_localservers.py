"""The embedded loopback SMTP + IMAP servers: AUTH, delivery, the sink, fail rules, stop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import aiosmtplib
import pytest
from imapclient import IMAPClient

from mailer.localservers import (
    FailRules,
    LocalMailServers,
    read_sink,
    running_local_servers,
    start_local_servers,
)

ALICE = "alice@creditor.test"
BOB = "bob@debtor.test"
USERS = {ALICE: "alice-pw", BOB: "bob-pw"}


def message(subject: str, msgid: str, to: str = BOB) -> bytes:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = msgid
    msg.set_content("Invoice 42 is overdue.\nPlease pay.\n")
    return msg.as_bytes(policy=SMTP_POLICY)  # CRLF, as it goes on the wire


def send(
    servers: LocalMailServers,
    data: bytes,
    recipients: Sequence[str],
    *,
    user: str | None = ALICE,
    password: str | None = None,
) -> None:
    asyncio.run(
        aiosmtplib.send(
            data,
            sender=ALICE,
            recipients=list(recipients),
            hostname=servers.smtp_host,
            port=servers.smtp_port,
            username=user,
            password=password if password is not None else (USERS[user] if user else None),
            start_tls=False,
            use_tls=False,
            timeout=5,
        )
    )


def imap_fetch_all(servers: LocalMailServers, user: str) -> list[bytes]:
    with IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=5) as client:
        client.login(user, USERS[user])
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return [fetched[uid][b"BODY[]"] for uid in uids]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[LocalMailServers]:
    with running_local_servers(tmp_path, USERS) as running:
        yield running


def test_user_gets_exact_bytes_and_sink_has_every_message(servers: LocalMailServers) -> None:
    data = message("Overdue", "<m1@creditor.test>")
    send(servers, data, [BOB, "someone@outside.test"])
    outside_only = message("Elsewhere", "<m2@creditor.test>", to="x@outside.test")
    send(servers, outside_only, ["x@outside.test"])

    assert imap_fetch_all(servers, BOB) == [data]
    assert imap_fetch_all(servers, ALICE) == []
    files = list(servers.mailbox_path(BOB).glob("*/*.mailer*"))
    assert [f.read_bytes() for f in files] == [data]
    sink = servers.sink_messages()
    assert [(m.envelope_from, m.rcpt_tos, m.data) for m in sink] == [
        (ALICE, (BOB, "someone@outside.test"), data),
        (ALICE, ("x@outside.test",), outside_only),
    ]
    assert read_sink(servers.root) == sink  # what another process would read


def test_bcc_to_own_address_lands_in_own_inbox(servers: LocalMailServers) -> None:
    data = message("Copy", "<self@creditor.test>")
    send(servers, data, [BOB, ALICE])
    assert imap_fetch_all(servers, ALICE) == [data]


def test_auth_is_required_and_checked(servers: LocalMailServers) -> None:
    data = message("No auth", "<noauth@creditor.test>")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        send(servers, data, [BOB], user=None)
    assert refused.value.code == 530
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        send(servers, data, [BOB], password="wrong")
    assert servers.sink_messages() == []


def test_fail_rules_per_recipient_and_per_transaction(tmp_path: Path) -> None:
    rules: FailRules = {
        "flaky@x.test": ["451 4.3.0 try later", "451 4.3.0 try later"],
        "dead@x.test": "550 5.1.1 no such user",
        2: "452 4.3.1 insufficient storage",
    }
    data = message("Rules", "<rules@creditor.test>", to="flaky@x.test")
    with running_local_servers(tmp_path, USERS, fail_rules=rules) as servers:
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as temp:
                send(servers, data, ["flaky@x.test"])
            assert temp.value.recipients[0].code == 451
        send(servers, data, ["flaky@x.test"])  # transaction 1
        with pytest.raises(aiosmtplib.SMTPDataError) as data_error:
            send(servers, data, [BOB])  # transaction 2
        assert data_error.value.code == 452
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as perm:
                send(servers, data, ["dead@x.test"])
            assert perm.value.recipients[0].code == 550
        send(servers, data, [BOB])
        assert [m.rcpt_tos for m in servers.sink_messages()] == [("flaky@x.test",), (BOB,)]


def _port_is_free(port: int) -> bool:
    # Nothing listens any more (connections the server closed may linger in TIME_WAIT).
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_frees_the_ports(tmp_path: Path) -> None:
    with running_local_servers(tmp_path, USERS) as servers:
        # An open IMAP session and an SMTP session left mid-way must not keep them busy.
        client = IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=5)
        client.login(ALICE, USERS[ALICE])
        smtp = socket.create_connection((servers.smtp_host, servers.smtp_port), timeout=5)
        smtp.recv(1024)
        ports = (servers.smtp_port, servers.imap_port)
        assert not any(_port_is_free(p) for p in ports)
    client.shutdown()
    smtp.close()
    assert all(_port_is_free(p) for p in ports)


def test_async_start_and_stop_on_the_running_loop(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        servers = await start_local_servers(tmp_path, USERS)
        try:
            data = message("Async", "<async@creditor.test>")
            await aiosmtplib.send(
                data,
                sender=ALICE,
                recipients=[BOB],
                hostname=servers.smtp_host,
                port=servers.smtp_port,
                username=ALICE,
                password=USERS[ALICE],
                start_tls=False,
                timeout=5,
            )
            assert [m.data for m in servers.sink_messages()] == [data]
            return servers.smtp_port, servers.imap_port
        finally:
            await servers.stop()

    ports = asyncio.run(scenario())
    assert all(_port_is_free(p) for p in ports)
