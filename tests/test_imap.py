"""ImapMailbox against the embedded pymap server: Sent folder, APPEND, Message-ID lookups, errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import aiosmtplib
import pytest
from imapclient import IMAPClient

from mailer.domain.models import Identity, SmtpSecurity
from mailer.errors import PermanentError, TemporaryError
from mailer.localservers import LocalMailServers, running_local_servers
from mailer.mailbox import ImapMailbox

ALICE = "alice@creditor.test"
BOB = "bob@debtor.test"
USERS = {ALICE: "alice-pw", BOB: "bob-pw"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMailServers]:
    with running_local_servers(tmp_path_factory.mktemp("imap"), USERS) as running:
        yield running


def mailbox(servers: LocalMailServers, user: str = ALICE, **kw: object) -> ImapMailbox:
    password = str(kw.pop("password", USERS[user]))
    return ImapMailbox(
        servers.imap_host,
        servers.imap_port,
        SmtpSecurity.PLAIN,
        user,
        password,
        timeout=5,
        **kw,  # type: ignore[arg-type]
    )


def message(msgid: str, to: str = BOB) -> bytes:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = to
    msg["Subject"] = "Factura 42 vencida — recordatorio"
    msg["Message-ID"] = msgid
    msg.set_content("Le recordamos que la factura 42 está pendiente.\n")
    return msg.as_bytes(policy=SMTP_POLICY)


def flags_of(servers: LocalMailServers, folder: str, user: str = ALICE) -> list[tuple[bytes, ...]]:
    with IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=5) as client:
        client.login(user, USERS[user])
        client.select_folder(folder, readonly=True)
        fetched = client.fetch(client.search("ALL"), ["FLAGS"])
        return [tuple(f for f in fetched[uid][b"FLAGS"] if f != rb"\Recent") for uid in fetched]


def test_sent_folder_found_by_name(servers: LocalMailServers) -> None:
    # pymap does not implement SPECIAL-USE: this exercises the fallback to usual names.
    with mailbox(servers) as box:
        assert box.sent_folder() == "Sent"
    with mailbox(servers, sent_folder="Archivo/Enviados") as box:
        assert box.sent_folder() == "Archivo/Enviados"


def test_append_sent_keeps_bytes_and_marks_seen(servers: LocalMailServers) -> None:
    data = message("<append-1@creditor.test>")
    when = datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
    with mailbox(servers) as box:
        box.append_sent(data, when)
        assert box.fetch_raw("Sent", "<append-1@creditor.test>") == data
    with IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=5) as client:
        client.login(ALICE, USERS[ALICE])
        client.select_folder("Sent", readonly=True)
        [uid] = client.search(["HEADER", "Message-ID", "<append-1@creditor.test>"])
        fetched = client.fetch([uid], ["FLAGS", "INTERNALDATE"])[uid]
    assert rb"\Seen" in fetched[b"FLAGS"]
    internal = fetched[b"INTERNALDATE"].astimezone(UTC)  # imapclient gives local naive time
    assert abs(internal - when) < timedelta(seconds=1)


def test_find_message_id_in_inbox_and_sent_without_changing_flags(
    servers: LocalMailServers,
) -> None:
    msgid = "<bcc-self-7@creditor.test>"
    data = message(msgid)
    # Sent as mailer does: to the debtor, Bcc to the sender's own address.
    asyncio.run(
        aiosmtplib.send(
            data,
            sender=ALICE,
            recipients=[BOB, ALICE],
            hostname=servers.smtp_host,
            port=servers.smtp_port,
            username=ALICE,
            password=USERS[ALICE],
            start_tls=False,
            timeout=5,
        )
    )
    with mailbox(servers) as box:
        assert box.find_message_id(msgid) == ["INBOX"]
        box.append_sent(data, datetime.now(UTC))
        assert box.find_message_id(msgid) == ["INBOX", "Sent"]
        assert box.find_message_id(msgid, ["Sent"]) == ["Sent"]
        assert box.fetch_raw("INBOX", msgid) == data
        # SEARCH HEADER matches substrings; only the whole Message-ID counts.
        assert box.find_message_id("bcc-self-7@creditor.test") == []
        assert box.fetch_raw("INBOX", "<nowhere@creditor.test>") is None
    assert flags_of(servers, "INBOX") == [()]  # still unread for the person reading mail
    with mailbox(servers, BOB) as box:
        assert box.find_message_id(msgid) == ["INBOX"]


def test_wrong_password_is_permanent(servers: LocalMailServers) -> None:
    box = mailbox(servers, password="not-it")
    with pytest.raises(PermanentError, match="login refused"):
        box.connect()
    box.close()  # never raises, also when nothing is open


def test_closed_port_is_temporary() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    box = ImapMailbox("127.0.0.1", port, SmtpSecurity.PLAIN, ALICE, "x", timeout=2)
    with pytest.raises(TemporaryError) as error:
        box.connect()
    assert isinstance(error.value.__cause__, ConnectionRefusedError)


def test_starttls_missing_on_server_is_permanent(servers: LocalMailServers) -> None:
    box = ImapMailbox(
        servers.imap_host, servers.imap_port, SmtpSecurity.STARTTLS, ALICE, "x", timeout=5
    )
    with pytest.raises(PermanentError, match="STARTTLS"):
        box.connect()


def test_not_connected_is_temporary(servers: LocalMailServers) -> None:
    with pytest.raises(TemporaryError, match="not connected"):
        mailbox(servers).sent_folder()


def test_for_identity_uses_imap_settings(servers: LocalMailServers, tmp_path: Path) -> None:
    identity = Identity(
        name="billing",
        address=ALICE,
        display_name="Billing",
        smtp_host=servers.smtp_host,
        smtp_port=servers.smtp_port,
        smtp_security=SmtpSecurity.PLAIN,
        smtp_user=ALICE,
        password_env=None,
        password_file=None,
        imap_host=servers.imap_host,
        imap_port=servers.imap_port,
        imap_security=SmtpSecurity.PLAIN,
        imap_user=None,
    )
    with ImapMailbox.for_identity(identity, USERS[ALICE], timeout=5) as box:
        assert box.user == ALICE
        assert box.sent_folder() == "Sent"
