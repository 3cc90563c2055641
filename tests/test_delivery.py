"""Delivery against real servers on loopback: a whole campaign, retries, refusals, Sent copies."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from loopback import PASSWORD

from mailer.app import App
from mailer.config import load_settings
from mailer.daemon import build_transports, open_mailbox
from mailer.demo import IDENTITIES, demo_users, write_config
from mailer.domain.models import MessageState
from mailer.flows.outbound import Outbound
from mailer.flows.staff import approve
from mailer.ledger import parse_invoices, parse_payments
from mailer.localservers import LocalMailServers, running_local_servers
from mailer.mailbox.imap import ImapMailbox
from mailer.store import outbox
from mailer.store.ledger import import_invoices, import_payments

START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # Monday
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
BILLING = IDENTITIES["cobros"][0]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[LocalMailServers]:
    users = demo_users(PASSWORD)
    rules: dict[str | int, str | list[str]] = {
        "flaky@debtor.example": ["451 4.3.0 greylisted, try later", "421 4.7.0 busy"],
        "gone@debtor.example": "550 5.1.1 <gone@debtor.example>: no such user",
    }
    with running_local_servers(tmp_path / "servers", users, fail_rules=rules) as running:
        yield running


def make_app(tmp_path: Path, servers: LocalMailServers, rows: str) -> App:
    settings = load_settings(write_config(tmp_path, servers, grace_seconds=0))
    app = App.open(settings)
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(HEADER + rows, encoding="utf-8")
    import_invoices(app.store, parse_invoices(ledger), START, "invoices.csv", settings.profiles)
    return app


def run_days(app: App, days: int, *, approve_held: bool = True, attempts: int = 3) -> Outbound:
    transports = build_transports(app.settings)
    for transport in transports.values():
        transport.backoff = 0.01
        transport.attempts = attempts
    flow = Outbound(app, transports, open_mailbox)

    async def go() -> None:
        now = START
        while now < START + timedelta(days=days):
            now += timedelta(hours=1)
            if approve_held:
                for held in outbox.select(app.store, "state = 'awaiting_approval'"):
                    approve(app.store, held.id, now, "test")
            await flow.tick(now)
        for transport in flow.transports.values():
            await transport.close()

    asyncio.run(go())
    return flow


def debtor_copies(servers: LocalMailServers, address: str) -> list[bytes]:
    return [m.data for m in servers.sink_messages() if address in m.rcpt_tos]


def test_whole_campaign_threads_and_files_identical_sent_copies(
    tmp_path: Path, servers: LocalMailServers
) -> None:
    app = make_app(
        tmp_path,
        servers,
        "F-1,D1,Acme S.L.,pay@acme.example,es,business,ES,MD,EUR,1210.00,2025-12-01,2025-12-31\n",
    )
    run_days(app, 75)
    sent = outbox.select(app.store, "state = 'sent'")
    assert [m.step_name for m in sent] == ["friendly", "checkin", "firm", "final", "handover"]
    received = debtor_copies(servers, "pay@acme.example")
    assert len(received) == len(sent)  # exactly one copy of each, none lost, none twice
    parsed = [email.message_from_bytes(r, policy=email.policy.default) for r in received]
    assert [p["Message-ID"] for p in parsed] == [m.message_id for m in sent]
    assert all(p["Message-ID"].endswith("@taller-demo.example>") for p in parsed)
    # Each follow-up threads to the one before it.
    for before, after in itertools.pairwise(parsed):
        assert after["In-Reply-To"] == before["Message-ID"]
        assert before["Message-ID"] in after["References"]
    assert "Taller Demo S.L." in parsed[0]["From"]
    # The Sent copy is byte-identical to what the SMTP server received.
    with ImapMailbox.for_identity(app.settings.identity("cobros"), PASSWORD) as box:
        for message, raw in zip(sent, received, strict=True):
            assert box.fetch_raw(box.sent_folder(), message.message_id) == raw
            assert box.find_message_id(message.message_id) == ["INBOX", box.sent_folder()]
    # The server's reply is kept as delivery evidence.
    events = [e for e in app.store.events() if e["kind"] == "message_sent"]
    assert len(events) == len(sent) and all(e["data"]["receipt"]["code"] == 250 for e in events)
    assert app.store.verify_chain() is None


def test_temporary_failures_are_retried_and_permanent_ones_recorded(
    tmp_path: Path, servers: LocalMailServers
) -> None:
    app = make_app(
        tmp_path,
        servers,
        "F-1,D1,Flaky S.L.,flaky@debtor.example,es,business,ES,,EUR,100.00,2025-12-01,2025-12-31\n"
        "F-2,D2,Gone S.L.,gone@debtor.example,en,business,ES,,EUR,100.00,2025-12-01,2025-12-31\n",
    )
    # One try per tick, so each temporary failure goes through the durable outbox's backoff.
    run_days(app, 3, attempts=1)
    flaky = outbox.select(app.store, "case_id = 1")[0]
    assert flaky.state is MessageState.SENT
    events = app.store.events(case_id=1)
    kinds = [e["kind"] for e in events]
    # 451 at RCPT, then 421: deferred twice with growing waits, then accepted once.
    assert kinds.count("send_attempt") == 3 and kinds.count("send_deferred") == 2
    deferred = [e["data"] for e in events if e["kind"] == "send_deferred"]
    assert "451" in deferred[0]["error"]
    # aiosmtplib reports a 421 as the server closing the connection: temporary all the same.
    assert "421" in deferred[1]["error"] or "connected" in deferred[1]["error"]
    assert deferred[0]["retry_at"] < deferred[1]["retry_at"]
    assert len(debtor_copies(servers, "flaky@debtor.example")) == 1
    gone = outbox.select(app.store, "case_id = 2")[0]
    assert gone.state is MessageState.FAILED
    refused = next(e for e in app.store.events(case_id=2) if e["kind"] == "send_refused")
    assert refused["data"]["refusals"][0]["address"] == "gone@debtor.example"
    assert refused["data"]["refusals"][0]["code"] == 550
    assert "5.1.1" in refused["data"]["refusals"][0]["text"]
    assert debtor_copies(servers, "gone@debtor.example") == []


def test_paid_case_gets_nothing_more(tmp_path: Path, servers: LocalMailServers) -> None:
    app = make_app(
        tmp_path,
        servers,
        "F-1,D1,Acme S.L.,pay@acme.example,en,consumer,GB,,EUR,500.00,2025-12-01,2025-12-31\n",
    )
    run_days(app, 12)
    before = len(debtor_copies(servers, "pay@acme.example"))
    assert before >= 1
    paid = tmp_path / "payments.csv"
    paid.write_text("invoice_number,date,amount\nF-1,2026-01-16,500.00\n", encoding="utf-8")
    import_payments(
        app.store, parse_payments(paid), START + timedelta(days=12), "p", app.settings.profiles
    )
    flow = Outbound(app, build_transports(app.settings), open_mailbox)
    asyncio.run(flow.tick(START + timedelta(days=40)))
    assert len(debtor_copies(servers, "pay@acme.example")) == before


def test_ledger_data_cannot_inject_headers(tmp_path: Path, servers: LocalMailServers) -> None:
    # A quoted CSV field may contain a line break: the import refuses it outright...
    evil = 'F-1,D1,"Acme\r\nBcc: victim@evil.example",pay@acme.example,es,business,ES,,EUR,1.00,2025-12-01,2025-12-31\n'
    with pytest.raises(Exception, match="line break"):
        make_app(tmp_path, servers, evil)
    # ...and even a name that got into the database some other way cannot add a header.
    app = make_app(
        tmp_path,
        servers,
        "F-1,D1,Acme S.L.,pay@acme.example,es,business,ES,,EUR,1.00,2025-12-01,2025-12-31\n",
    )
    app.store.conn.execute(
        "UPDATE debtors SET name = ? WHERE id = 'D1'",
        ("Acme\r\nBcc: victim@evil.example\r\nX-Evil: 1",),
    )
    run_days(app, 3)  # friendly step: 3 business days after 31 Dec, past 1 and 6 January
    (raw,) = debtor_copies(servers, "pay@acme.example")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert "victim@evil.example" not in str(servers.sink_messages()[0].rcpt_tos)
    assert "Bcc" in parsed["To"]  # folded into the display name, harmless
