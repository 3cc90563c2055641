"""The mailbox watcher against a real IMAP server (pymap) on loopback: replies, bounces, resyncs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from loopback import PASSWORD
from office import Office, answer, sent_to

from mailer.app import App
from mailer.config import Identity, load_settings
from mailer.daemon import Daemon, build_transports, make_box, open_mailbox
from mailer.demo import IDENTITIES, demo_users, write_config
from mailer.demo_debtors import delivery_report
from mailer.flows import inbound as inbound_flow
from mailer.flows.inbound import Inbound, InboundReport
from mailer.flows.outbound import Outbound
from mailer.ledger import parse_invoices
from mailer.localservers import (
    LocalMailServers,
    deliver,
    running_local_servers,
    start_local_servers,
)
from mailer.mailbox.imap import ImapMailbox
from mailer.mailbox.watcher import Watcher
from mailer.store import outbox
from mailer.store.db import Store
from mailer.store.ledger import import_invoices

START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # Monday
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
BILLING = IDENTITIES["cobros"][0]
LEDGER = (
    "F-1,D1,Acme S.L.,pay@acme.example;boss@acme.example,es,business,ES,MD,EUR,1210.00,"
    "2025-12-01,2025-12-31\n"
    "F-2,D2,Beta S.L.,admin@beta.example,es,business,ES,MD,EUR,500.00,2025-12-01,2025-12-31\n"
)


@pytest.fixture
def app(tmp_path: Path, servers: LocalMailServers) -> Iterator[App]:
    settings = load_settings(write_config(tmp_path, servers, grace_seconds=0))
    opened = App.open(settings)
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(HEADER + LEDGER, encoding="utf-8")
    import_invoices(opened.store, parse_invoices(ledger), START, "invoices.csv", settings.profiles)
    yield opened
    opened.store.close()


def personal_mail(n: int, when: datetime) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"friend{n}@else.example"
    msg["To"] = BILLING
    msg["Subject"] = f"Lunch {n}?"
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<personal.{n}@else.example>"
    msg.set_content("Shall we meet on Friday?")
    return msg.as_bytes()


def flags(app: App) -> dict[int, tuple[bytes, ...]]:
    with ImapMailbox.for_identity(app.settings.identity("cobros"), PASSWORD) as box:
        imap = box._imap
        imap.select_folder("INBOX", readonly=True)
        uids = imap.search(["ALL"])
        return {uid: tuple(sorted(d[b"FLAGS"])) for uid, d in imap.fetch(uids, ["FLAGS"]).items()}


def case_row(app: App, debtor: str) -> tuple[str, str | None]:
    row = app.store.conn.execute(
        "SELECT status, paused_until FROM cases WHERE debtor_id = ?", (debtor,)
    ).fetchone()
    return row[0], row[1]


def test_a_promise_pauses_the_case_and_personal_mail_is_left_alone(
    app: App, servers: LocalMailServers
) -> None:
    inbox = servers.mailbox_path(BILLING)

    async def scenario() -> None:
        office = Office(app)
        await office.until_sent("pay@acme.example")  # the first reminder, at 09:00 Madrid
        (first,) = sent_to(app, "pay@acme.example")
        deliver(inbox, personal_mail(1, office.now))
        deliver(
            inbox,
            answer(app, first, "Acme <pay@acme.example>", "Pagaré el día 15. Saludos", office.now),
        )
        before = flags(app)
        report = await office.sync()
        assert report.stored == 1 and report.quarantined == 0
        assert flags(app) == before  # nothing read, flagged or moved by mailer
        # Paused until the 15th plus 3 days of grace, local midnight in Madrid.
        assert case_row(app, "D1") == ("paused", "2026-01-17T23:00:00+00:00")
        assert case_row(app, "D2")[0] == "active"
        await office.advance(24 * 9)
        assert len(sent_to(app, "pay@acme.example")) == 1  # nothing while paused
        await office.advance(24 * 4)  # the pause ends on the 18th: still unpaid, it resumes
        assert case_row(app, "D1")[0] == "active"
        assert len(sent_to(app, "pay@acme.example")) == 2
        await office.close()

    asyncio.run(scenario())
    stored = app.store.query("SELECT kind, case_id, from_address, classification FROM inbound")
    assert [(r["kind"], r["from_address"]) for r in stored] == [("human_reply", "pay@acme.example")]
    events = "\n".join(str(e) for e in app.store.events())
    assert "Lunch" not in events and "friend1@else.example" not in events  # not even logged
    reviews = app.store.query("SELECT reason, intent FROM reviews")
    assert [(r["reason"], r["intent"]) for r in reviews] == [("promises to pay", "promise_to_pay")]
    assert app.store.verify_chain() is None


def test_a_hard_bounce_moves_to_the_second_address(app: App, servers: LocalMailServers) -> None:
    inbox = servers.mailbox_path(BILLING)

    async def scenario() -> None:
        office = Office(app)
        await office.until_sent("pay@acme.example")
        (first,) = sent_to(app, "pay@acme.example")
        bounce = delivery_report(outbox.raw(app.store, first), "pay@acme.example", "5.1.1",
            "550 5.1.1 <pay@acme.example>: Recipient address rejected: User unknown", office.now, "mx.acme.example")  # fmt: skip
        deliver(inbox, bounce)
        report = await office.sync()
        assert report.stored == 1
        await office.advance(2)
        await office.close()

    asyncio.run(scenario())
    contacts = app.store.query("SELECT address, status FROM contacts WHERE debtor_id = 'D1'")
    assert {r["address"]: r["status"] for r in contacts} == {
        "pay@acme.example": "undeliverable",
        "boss@acme.example": "active",
    }
    again = sent_to(app, "boss@acme.example")
    (first,) = sent_to(app, "pay@acme.example")
    assert len(again) == 1 and again[0].step == first.step  # the same reminder, next address
    received = [m for m in servers.sink_messages() if "boss@acme.example" in m.rcpt_tos]
    assert len(received) == 1 and b"To: boss@acme.example" in received[0].data


def test_handled_bounces_move_to_a_folder_only_when_asked(
    tmp_path: Path, servers: LocalMailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, servers, grace_seconds=0)
    config.write_text(
        config.read_text(encoding="utf-8") + '\n[inbound]\nmove_bounces_to = "mailer/bounces"\n',
        encoding="utf-8",
    )
    settings = load_settings(config)
    app = App.open(settings)
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(HEADER + LEDGER, encoding="utf-8")
    import_invoices(app.store, parse_invoices(ledger), START, "invoices.csv", settings.profiles)
    inbox = servers.mailbox_path(BILLING)

    async def scenario() -> None:
        office = Office(app)
        await office.until_sent("pay@acme.example")
        await office.until_sent("admin@beta.example")
        first = sent_to(app, "pay@acme.example")[0]
        other = sent_to(app, "admin@beta.example")[0]
        deliver(inbox, personal_mail(1, office.now))
        deliver(inbox, delivery_report(outbox.raw(app.store, first), "pay@acme.example", "5.1.1",
            "550 5.1.1 <pay@acme.example>: User unknown", office.now, "mx.acme.example"))  # fmt: skip
        deliver(inbox, answer(app, other, "admin@beta.example", "Pagaré el día 15.", office.now))
        # One message a chunk, so that the pass is a catch-up of several: a report is moved
        # only once its chunk's commit is on disk (a catch-up otherwise waits for the disk
        # only at its end), so that a power cut cannot leave it moved and unrecorded.
        monkeypatch.setattr(inbound_flow, "CHUNK", 1)
        commits: list[bool] = []
        transaction = Store.transaction

        def spy(self: Store, *, durable: bool = True) -> AbstractContextManager[object]:
            if not self.conn.in_transaction:
                commits.append(durable)
            return transaction(self, durable=durable)

        monkeypatch.setattr(Store, "transaction", spy)
        report = await office.sync()
        monkeypatch.undo()
        assert (report.stored, report.moved) == (2, 1)
        assert len(commits) >= 3 and all(commits)
        await office.close()

    try:
        asyncio.run(scenario())
        with ImapMailbox.for_identity(settings.identity("cobros"), PASSWORD) as box:
            imap = box._imap
            imap.select_folder("INBOX", readonly=True)
            left = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[]", "FLAGS"]).values()
            # The person's mail, the debtor's reply and our receipt copies stay, unread; the
            # bounce report went.
            texts = [bytes(d[b"BODY[]"]) for d in left]
            assert any(b"Subject: Lunch 1?" in t for t in texts)
            assert any(b"Subject: Re: " in t for t in texts)
            assert not any(b"Undelivered Message Headers" in t for t in texts)
            assert all(b"\\Seen" not in d[b"FLAGS"] for d in left)
            imap.select_folder("mailer/bounces", readonly=True)
            (moved,) = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[]"]).values()
            assert b"Undelivered Message Headers" in moved[b"BODY[]"]
    finally:
        app.store.close()


def test_mail_that_came_while_the_daemon_was_down_is_read_before_the_first_send(
    app: App, servers: LocalMailServers
) -> None:
    """The daemon's first tick waits for each mailbox's first pass: a dispute that arrived
    during the downtime stops the case before its next reminder is due to go."""
    inbox = servers.mailbox_path(BILLING)

    class SlowToConnect(ImapMailbox):  # the real server, reached slower than a tick plans
        def connect(self) -> None:
            time.sleep(1.5)
            super().connect()

    def slow_box(identity: Identity) -> ImapMailbox:
        return SlowToConnect.for_identity(identity, PASSWORD, timeout=60.0)

    async def scenario() -> None:
        office = Office(app)
        await office.until_sent("pay@acme.example")
        (first,) = sent_to(app, "pay@acme.example")
        await office.close()
        text = "No reconocemos esta factura: el servicio no se prestó."
        deliver(inbox, answer(app, first, "Acme <pay@acme.example>", text, office.now))
        later = office.now + timedelta(days=40)  # the next reminder long due
        daemon = Daemon(
            app, Outbound(app, build_transports(app.settings), open_mailbox), interval=0,
            clock=lambda: later,
            watchers=[Watcher(app.settings.identity("cobros"), Inbound(app), slow_box,
                              lambda: later)],
        )  # fmt: skip

        async def stop_after_a_tick() -> None:
            while daemon.ticks < 1:
                await asyncio.sleep(0.05)
            daemon.request_stop()

        await asyncio.gather(daemon.run(), stop_after_a_tick())

    asyncio.run(scenario())
    store = Store.open(app.settings.database)
    try:
        status = store.conn.execute("SELECT status FROM cases WHERE debtor_id = 'D1'").fetchone()[0]
        sent = store.conn.execute(
            "SELECT count(*) FROM messages WHERE recipients LIKE '%pay@acme.example%'"
            " AND state = 'sent'"
        ).fetchone()[0]
    finally:
        store.close()
    assert (status, sent) == ("review", 1)


def test_uidvalidity_change_resyncs_without_acting_twice(tmp_path: Path) -> None:
    users = demo_users(PASSWORD)
    root = tmp_path / "servers"
    with running_local_servers(root, users) as servers:
        settings = load_settings(write_config(tmp_path, servers, grace_seconds=0))
        app = App.open(settings)
        ledger = tmp_path / "invoices.csv"
        ledger.write_text(HEADER + LEDGER, encoding="utf-8")
        import_invoices(app.store, parse_invoices(ledger), START, "x.csv", settings.profiles)
        office = Office(app)

        async def first() -> InboundReport:
            await office.until_sent("admin@beta.example")
            (sent,) = sent_to(app, "admin@beta.example")
            deliver(
                servers.mailbox_path(BILLING),
                answer(
                    app,
                    sent,
                    "admin@beta.example",
                    "No reconocemos esta factura, es un error.",
                    office.now,
                ),
            )
            report = await office.sync()
            await office.close()
            return report

        assert asyncio.run(first()).stored == 1
        port = servers.imap_port
    # The server loses its UID list (a restore, a migration): every UID is renumbered.
    uidlist = servers.mailbox_path(BILLING) / "dovecot-uidlist"
    assert uidlist.exists()
    uidlist.unlink()
    with running_local_servers(root, users, imap_port=port) as servers:
        office = Office(app)
        deliver(servers.mailbox_path(BILLING), personal_mail(2, office.now))
        report = asyncio.run(office.sync())
        assert report.resync == 1 and report.stored == 0 and report.duplicates == 1
    assert [r["kind"] for r in app.store.query("SELECT kind FROM inbound")] == ["human_reply"]
    assert case_row(app, "D2")[0] == "review"  # the dispute, acted on once
    assert [e["kind"] for e in app.store.events() if e["kind"] == "mailbox_resync"] == [
        "mailbox_resync"
    ]
    app.store.close()


async def _until(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Wait for something another task does; the limit only keeps a broken test from hanging."""
    for _ in range(int(limit / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


def _stored(app: App) -> int:
    return int(app.store.conn.execute("SELECT count(*) FROM inbound").fetchone()[0])


def test_the_watcher_idles_sees_replies_and_survives_a_server_restart(tmp_path: Path) -> None:
    users = demo_users(PASSWORD)
    root = tmp_path / "servers"

    async def scenario() -> None:
        servers = await start_local_servers(root, users)
        settings = load_settings(write_config(tmp_path, servers, grace_seconds=0))
        app = App.open(settings)
        ledger = tmp_path / "invoices.csv"
        ledger.write_text(HEADER + LEDGER, encoding="utf-8")
        import_invoices(app.store, parse_invoices(ledger), START, "x.csv", settings.profiles)
        office = Office(app)
        await office.until_sent("admin@beta.example")
        await office.close()
        beta, acme = sent_to(app, "admin@beta.example")[0], sent_to(app, "pay@acme.example")[0]
        watcher = Watcher(
            settings.identity("cobros"), office.inbound, make_box, lambda: office.now,
            idle_seconds=120.0,
        )  # fmt: skip
        stopping = False
        task = asyncio.ensure_future(watcher.run(lambda: stopping))
        try:
            await _until(lambda: watcher.passes >= 1 and watcher.connected, "first pass")
            inbox = servers.mailbox_path(BILLING)
            deliver(
                inbox,
                answer(app, beta, "admin@beta.example", "¿Me reenvían la factura?", office.now),
            )
            await _until(lambda: _stored(app) == 1, "the reply that arrived during IDLE")
            # The server goes away mid-IDLE; mail keeps arriving; the server comes back.
            port = servers.imap_port
            await servers.stop()
            deliver(
                inbox,
                answer(app, acme, "pay@acme.example", "Pagaremos el 30 de enero.", office.now),
            )
            servers = await start_local_servers(root, users, imap_port=port)
            await _until(lambda: _stored(app) == 2, "the reply that arrived while it was down")
        finally:
            stopping = True
            await task
            await servers.stop()
        assert watcher.passes >= 2 and not watcher.connected
        assert case_row(app, "D1") == ("paused", "2026-02-01T23:00:00+00:00")
        assert case_row(app, "D2") == ("paused", None)  # a question: a person answers it
        app.store.close()

    asyncio.run(scenario())
