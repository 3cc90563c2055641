"""The outbound pass without a network: review instead of a crash, concurrent sends, clean stop."""

from __future__ import annotations

import asyncio
import email
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import write_config
from mailer.domain.models import MessageState
from mailer.flows.outbound import Outbound, TickReport
from mailer.ledger import parse_invoices
from mailer.store import outbox
from mailer.store.inbound import open_reviews
from mailer.store.ledger import import_invoices
from mailer.transports.base import Receipt

NOW = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)  # a Wednesday, 10:30 in Madrid: inside the window
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)


def make_app(tmp_path: Path, cases: int) -> App:
    # The servers are never contacted here: the transports below stand in for them.
    servers = SimpleNamespace(
        smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1", imap_port=9
    )
    settings = load_settings(write_config(tmp_path, servers))  # type: ignore[arg-type]
    app = App.open(settings)
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(
        HEADER
        + "".join(
            f"F-{n},D{n},Cliente {n} S.L.,d{n}@debtor.example,es,business,ES,MD,EUR,100.00,"
            "2025-11-01,2025-12-01\n"
            for n in range(cases)
        ),
        encoding="utf-8",
    )
    import_invoices(app.store, parse_invoices(ledger), NOW, "invoices.csv", settings.profiles)
    return app


def test_a_render_that_needs_review_sends_the_case_to_review(tmp_path: Path) -> None:
    app = make_app(tmp_path, 3)
    # A second invoice in dollars: the email cannot state one total, so rendering it raises
    # NeedsReviewError (render_context.build_context), which must not stop the pass.
    extra = tmp_path / "dollars.csv"
    extra.write_text(
        HEADER + "F-X,D1,Cliente 1 S.L.,d1@debtor.example,es,business,ES,MD,USD,50.00,"
        "2025-11-01,2025-12-01\n",
        encoding="utf-8",
    )
    import_invoices(app.store, parse_invoices(extra), NOW, "dollars.csv", app.settings.profiles)
    report = TickReport()
    Outbound(app, {}, None).plan_due(NOW, report)  # does not raise

    assert report.planned == 2 and report.errors == []  # the other cases went on
    case_id, status, reason = app.store.conn.execute(
        "SELECT id, status, status_reason FROM cases WHERE debtor_id = 'D1'"
    ).fetchone()
    assert status == "review"
    assert reason == f"case {case_id}: open invoices in several currencies (EUR, USD)"
    reviews = [e for e in app.store.events(case_id=case_id) if e["kind"] == "case_review"]
    assert [e["data"]["reason"] for e in reviews] == [reason]
    # In the review queue, where a person sees it (`mailer review`, the review page).
    assert [(i.case_id, i.reason) for i in open_reviews(app.store)] == [(case_id, reason)]
    assert outbox.select(app.store, "case_id = ?", (case_id,)) == []
    # A case in review waits for a person: the next pass plans nothing for it.
    again = TickReport()
    Outbound(app, {}, None).plan_due(NOW, again)
    assert again.planned == 0 and again.errors == []
    assert outbox.select(app.store, "case_id = ?", (case_id,)) == []
    assert app.store.conn.execute(
        "SELECT status, next_action_at FROM cases WHERE id = ?", (case_id,)
    ).fetchone() == ("review", None)
    assert len(open_reviews(app.store)) == 1  # asked once, not at every pass
    assert app.store.verify_chain() is None


class GatedTransport:
    """An in-memory server that holds every send until the test opens the gate."""

    def __init__(self, database: Path | None = None) -> None:
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.started: list[bytes] = []
        self.claimed_before_send = 0
        self.database = database  # given: check each message is claimed before it is sent

    def _claimed(self, data: bytes) -> bool:
        """Whether the message is committed as "sending", as another connection sees it."""
        if self.database is None:
            return False
        message_id = email.message_from_bytes(data)["Message-ID"]
        with closing(sqlite3.connect(self.database)) as conn:
            row = conn.execute(
                "SELECT state FROM messages WHERE message_id = ?", (message_id,)
            ).fetchone()
        return row == ("sending",)

    async def send(
        self, sender: str, recipients: Sequence[str], data: bytes, *, copy_to: str | None = None
    ) -> Receipt:
        self.started.append(data)
        self.claimed_before_send += self._claimed(data)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return Receipt(code=250, text="2.0.0 OK", accepted=tuple(recipients))

    async def close(self) -> None:
        return None


async def until(condition: object) -> None:
    # Let the send workers run until ``condition()`` holds (no clock involved).
    for _ in range(10_000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never came true")


def test_sends_overlap_up_to_the_identity_concurrency(tmp_path: Path) -> None:
    app = make_app(tmp_path, 12)
    transport = GatedTransport(app.settings.database)
    flow = Outbound(app, {i.name: transport for i in app.settings.identities}, None)
    flow.plan_due(NOW, TickReport())
    limit = app.settings.identity("cobros").concurrency
    assert limit > 1

    async def go() -> frozenset[int]:
        sending = asyncio.ensure_future(flow.send_due(NOW, TickReport(), lambda: False))
        await until(lambda: transport.in_flight == limit)
        transport.gate.set()
        return await sending

    trace: list[str] = []
    app.store.conn.set_trace_callback(trace.append)
    sent = asyncio.run(go())
    app.store.conn.set_trace_callback(None)
    assert len(sent) == 12 and transport.most_in_flight == limit
    assert {m.state for m in outbox.select(app.store, "1")} == {MessageState.SENT}
    # Every message was claimed in a commit that waited for the disk before its bytes went
    # (GatedTransport checks the commit from a second connection), and claims were shared:
    # fewer durable commits than messages.
    assert transport.claimed_before_send == 12
    durable = _durable_commits(trace)
    assert 0 < durable < 12


def _durable_commits(trace: list[str]) -> int:
    """COMMITs made while synchronous was FULL (durable=False switches it to NORMAL)."""
    full, count = True, 0
    for sql in trace:
        if sql.startswith("PRAGMA synchronous="):
            full = sql.endswith(("FULL", "2"))
        elif sql == "COMMIT" and full:
            count += 1
    return count


def test_planning_and_sending_overlap_in_one_pass(tmp_path: Path) -> None:
    app = make_app(tmp_path, 12)
    transport = GatedTransport(app.settings.database)
    flow = Outbound(app, {i.name: transport for i in app.settings.identities}, None)
    limit = app.settings.identity("cobros").concurrency

    async def go() -> frozenset[int]:
        sending = asyncio.ensure_future(flow.plan_and_send(NOW, report, lambda: False))
        # The first messages are with the server before the pass has planned them all.
        await until(lambda: transport.in_flight == limit)
        queued = outbox.select(app.store, "1")
        assert len(queued) < 12
        transport.gate.set()
        return await sending

    report = TickReport()
    sent = asyncio.run(go())
    assert report.planned == 12 and report.sent == 12 and len(sent) == 12
    assert transport.claimed_before_send == 12
    assert {m.state for m in outbox.select(app.store, "1")} == {MessageState.SENT}
    assert app.store.verify_chain() is None


def test_stop_finishes_the_messages_in_hand_and_starts_no_more(tmp_path: Path) -> None:
    app = make_app(tmp_path, 12)
    transport = GatedTransport()
    flow = Outbound(app, {i.name: transport for i in app.settings.identities}, None)
    flow.plan_due(NOW, TickReport())
    limit = app.settings.identity("cobros").concurrency
    stopping = False

    async def go() -> frozenset[int]:
        nonlocal stopping
        sending = asyncio.ensure_future(flow.send_due(NOW, TickReport(), lambda: stopping))
        await until(lambda: transport.in_flight == limit)
        stopping = True  # the signal arrives while `limit` messages are with the server
        transport.gate.set()
        return await sending

    sent = asyncio.run(go())
    assert len(sent) == limit == len(transport.started)  # in hand: finished; none started after
    states = [m.state for m in outbox.select(app.store, "1")]
    assert states.count(MessageState.SENT) == limit
    assert states.count(MessageState.QUEUED) == 12 - limit  # left for the next start, not lost
