"""Hostile and malformed mail never crashes the inbound side: it is quarantined with its bytes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback import PASSWORD

from mailer.app import App
from mailer.config import load_settings
from mailer.daemon import make_box
from mailer.demo import IDENTITIES, demo_users, write_config
from mailer.flows.inbound import Inbound
from mailer.ledger import parse_invoices
from mailer.localservers import deliver, running_local_servers
from mailer.store.ledger import import_invoices

NOW = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
DEBTOR = "pay@acme.example"
LEDGER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
    f"F-1,D1,Acme S.L.,{DEBTOR},es,business,ES,MD,EUR,1210.00,2025-12-01,2025-12-31\n"
)
OUTCOMES = {"stored", "duplicate", "quarantined", "unrelated"}


def open_app(tmp_path: Path, servers: object) -> App:
    app = App.open(load_settings(write_config(tmp_path, servers, grace_seconds=0)))  # type: ignore[arg-type]
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(LEDGER, encoding="utf-8")
    import_invoices(app.store, parse_invoices(ledger), NOW, "invoices.csv", app.settings.profiles)
    return app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    os.environ["MAILER_DEMO_PASSWORD"] = "unused"
    nowhere = SimpleNamespace(
        smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1", imap_port=9
    )
    opened = open_app(tmp_path_factory.mktemp("fuzz"), nowhere)
    yield opened
    opened.store.close()


header_names = st.sampled_from(
    ["From", "To", "Subject", "Content-Type", "Content-Transfer-Encoding", "In-Reply-To",
     "Auto-Submitted", "MIME-Version", "Message-ID", "Date", "X-\x00Odd", ""]
)  # fmt: skip
header_values = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            f"Acme <{DEBTOR}>".encode(),
            b'multipart/report; report-type=delivery-status; boundary="',
            b"multipart/mixed; boundary=x",
            b"=?utf-8?b?////?=",
            b"=?unknown-8bit?q?=FF=FE?=",
            b"base64",
            b"<" + b"a" * 5000 + b"@x>",
            b"auto-replied",
        ]
    ),
)
messages = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        lambda headers, body: (
            b"".join(n.encode() + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body
        ),
        st.lists(st.tuples(header_names, header_values), max_size=12),
        st.one_of(
            st.binary(max_size=2000), st.just(b"--x\r\nContent-Type: text/plain\r\n\r\nhola\r\n--x")
        ),
    ),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=messages)
def test_process_never_raises_and_keeps_what_it_cannot_read(app: App, raw: bytes) -> None:
    outcome = Inbound(app).process("cobros", "INBOX", 1, None, raw, NOW)
    assert outcome in OUTCOMES
    if outcome == "quarantined":
        row = app.store.query(
            "SELECT raw_sha256 FROM inbound WHERE state = 'quarantined' ORDER BY id DESC LIMIT 1"
        )[0]
        assert app.store.get_blob(row["raw_sha256"]) == raw  # the exact bytes, for analysis


HOSTILE = [
    b"",  # nothing at all
    b"\x00\x01\x02 not an email \xff\xfe",
    f"From: {DEBTOR}\r\nSubject: ".encode() + b"A" * 200_000 + b"\r\n\r\nhuge header\r\n",
    f'From: {DEBTOR}\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'.encode()
    + b"Content-Transfer-Encoding: base64\r\n\r\n!!!!not base64\r\n",
    f"From: {DEBTOR}\r\nSubject: =?utf-8?b?w6k=?= \xff\xfe\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n".encode(
        "latin-1"
    )
    + b"\xff\xfe\xfd pagaremos\r\n",
]


def test_hostile_mail_in_a_real_mailbox_does_not_stop_the_pass(tmp_path: Path) -> None:
    users = demo_users(PASSWORD)
    with running_local_servers(tmp_path / "servers", users) as servers:
        app = open_app(tmp_path, servers)
        inbound = Inbound(app)
        identity = app.settings.identity("cobros")

        async def sync() -> tuple[int, int]:
            box = make_box(identity)
            await asyncio.to_thread(box.connect)
            try:
                report = await inbound.sync("cobros", box, NOW)
            finally:
                await asyncio.to_thread(box.close)
            return report.stored, report.quarantined

        assert asyncio.run(sync()) == (0, 0)
        inbox = servers.mailbox_path(IDENTITIES["cobros"][0])
        for raw in HOSTILE:
            deliver(inbox, raw)
        good = f"From: {DEBTOR}\r\nSubject: Re: factura\r\nMessage-ID: <ok@acme.example>\r\n\r\nPagaremos el viernes.\r\n"
        deliver(inbox, good.encode())
        stored, quarantined = asyncio.run(sync())
        assert stored == 4  # the readable ones from the debtor, the good reply after them too
        assert quarantined == 2  # no headers at all: kept, with their bytes, for a person
        assert asyncio.run(sync()) == (0, 0)  # and nothing is handled twice
        kinds = [r["kind"] for r in app.store.query("SELECT kind FROM inbound ORDER BY id")]
        assert "human_reply" in kinds
        assert app.store.verify_chain() is None
        app.store.close()


def test_a_failure_mid_chunk_rolls_back_that_message_alone(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailer.flows.recording as flow

    real = flow.decide

    def flaky(c, *args, **kw):  # type: ignore[no-untyped-def]
        if "explode" in c.reply_text:
            raise RuntimeError("a bug met this message")
        return real(c, *args, **kw)

    monkeypatch.setattr(flow, "decide", flaky)
    mails = [
        f"From: {DEBTOR}\r\nMessage-ID: <chunk.{n}@acme.example>\r\nSubject: Re\r\n\r\n{text}\r\n".encode()
        for n, text in enumerate(["Pagaremos pronto.", "explode", "¿Me reenvían la factura?"])
    ]
    before = app.store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    outcomes = Inbound(app).process_many(
        "cobros", "INBOX", 1, [(n, m, True) for n, m in enumerate(mails)], NOW
    )
    assert outcomes == ["stored", "quarantined", "stored"]
    rows = app.store.query(
        "SELECT state, message_id, error FROM inbound WHERE uid IS NOT NULL AND uid < 3 ORDER BY id DESC LIMIT 3"
    )
    assert sorted(r["state"] for r in rows) == ["handled", "handled", "quarantined"]
    assert "a bug met this message" in next(r["error"] for r in rows if r["state"] == "quarantined")
    kinds = [e["kind"] for e in app.store.events()][before:]
    assert kinds.count("mail_received") == 2 and kinds.count("mail_quarantined") == 1
    assert app.store.verify_chain() is None
