"""Likely blocking on real servers (aiosmtpd + pymap): refusals, silence, refusals of contact, and an
identity every domain refuses."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from office import START, Office, answer, sent_to

from mailer.app import App
from mailer.cli import main
from mailer.config import load_settings
from mailer.demo import IDENTITIES, write_config
from mailer.demo_debtors import delivery_report
from mailer.domain.models import CaseStatus
from mailer.flows.staff import Resolution, resolve, to_review
from mailer.ledger import parse_invoices
from mailer.localservers import LocalMailServers, deliver
from mailer.store import outbox
from mailer.store.ledger import import_invoices

A, B = "cobros", "administracion"
A_ADDR, B_ADDR = IDENTITIES[A][0], IDENTITIES[B][0]
BLOCK = "550 5.7.1 Sender blocked by recipient"
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)


def row(n: int, address: str) -> str:
    return f"F-{n},D{n},Cliente {n} S.L.,{address},es,business,ES,MD,EUR,1210.00,2025-12-01,2025-12-31\n"


def open_app(
    tmp_path: Path, servers: LocalMailServers, addresses: list[str], extra: str = ""
) -> App:
    config = write_config(tmp_path, servers, grace_seconds=0)
    config.write_text(config.read_text(encoding="utf-8") + extra, encoding="utf-8")
    settings = load_settings(config)
    app = App.open(settings)
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(HEADER + "".join(row(n, a) for n, a in enumerate(addresses, 1)), "utf-8")
    import_invoices(app.store, parse_invoices(ledger), START, "invoices.csv", settings.profiles)
    return app


@pytest.fixture
def office(
    request: pytest.FixtureRequest, tmp_path: Path, servers: LocalMailServers
) -> Iterator[Office]:
    addresses, extra = request.param
    app = open_app(tmp_path, servers, addresses, extra)
    yield Office(app)
    app.store.close()


def case_of(app: App, address: str) -> int:
    row = app.store.conn.execute(
        "SELECT k.id FROM cases k JOIN contacts c ON c.debtor_id = k.debtor_id WHERE c.address = ?",
        (address,),
    ).fetchone()
    return int(row[0])


def events(app: App, case_id: int, kind: str) -> list[dict[str, object]]:
    return [e["data"] for e in app.store.events(case_id=case_id) if e["kind"] == kind]


def all_to(app: App, address: str) -> list[outbox.OutboxMessage]:
    return [m for m in outbox.select(app.store, "1 = 1") if address in m.recipients]


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A test written as a coroutine, run in its own event loop (the servers have theirs)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


ONE = (["pay@acme.example", "admin@beta.example"], "")


@pytest.mark.parametrize("office", [ONE], indirect=True)
@run_async
async def test_a_refusal_at_smtp_time_continues_from_the_next_identity(
    office: Office, servers: LocalMailServers
) -> None:
    app = office.app
    servers.sender_blocks[(A_ADDR, "acme.example")] = BLOCK
    try:
        await office.until_sent("pay@acme.example")
        await office.until_sent("admin@beta.example")
    finally:
        await office.close()
    case = case_of(app, "pay@acme.example")
    refused, resent = all_to(app, "pay@acme.example")
    assert (refused.identity, refused.state.value) == (A, "failed")
    assert (resent.identity, resent.state.value, resent.step) == (B, "sent", refused.step)
    # What reached the debtor's server came from B, honestly named, and only once.
    arrived = [m for m in servers.sink_messages() if "pay@acme.example" in m.rcpt_tos]
    assert [m.envelope_from for m in arrived] == [B_ADDR]
    assert b"Administraci" in arrived[0].data and b"Taller Demo S.L." in arrived[0].data
    (switch,) = events(app, case, "identity_switched")
    assert (switch["from"], switch["to"]) == (A, B)
    (verdict,) = events(app, case, "blocking_verdict")
    assert verdict["verdict"] == "likely_blocked"
    assert "5.7.1" in str(verdict["evidence"])
    # The other debtor is not affected: still written from A.
    assert [m.identity for m in sent_to(app, "admin@beta.example")] == [A]
    # ...and the case's next step comes from B without a new judgement.
    office2 = Office(app, office.now)
    try:
        await office2.until_sent("pay@acme.example", count=2)
    finally:
        await office2.close()
    assert [m.identity for m in sent_to(app, "pay@acme.example")] == [B, B]
    assert len(events(app, case, "identity_switched")) == 1
    # `mailer case` shows who writes now, and the verdict with its evidence.
    shown = CliRunner().invoke(
        main, ["--config", str(app.settings.source), "case", str(case)], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 0, shown.output
    assert "writing from: administracion" in shown.output
    assert "delivery verdict: cobros → pay@acme.example: likely_blocked" in shown.output
    assert "5.7.1 Sender blocked by recipient" in shown.output


SILENT = (["pay@acme.example"], "\n[blocking]\nsilence_after = 2\n")


@pytest.mark.parametrize("office", [SILENT], indirect=True)
@run_async
async def test_silence_after_an_answer_switches_after_k_unanswered_messages(
    office: Office, servers: LocalMailServers
) -> None:
    app = office.app
    case = case_of(app, "pay@acme.example")
    try:
        await office.until_sent("pay@acme.example")
        (first,) = sent_to(app, "pay@acme.example")
        reply = answer(app, first, "pay@acme.example", "Lo miramos esta semana.", office.now)
        deliver(servers.mailbox_path(A_ADDR), reply)
        report = await office.sync()
        assert report.stored == 1
        resolve(app.store, case, Resolution.RESUME, office.now, "test")
        # From here the debtor's server accepts A's mail and the debtor never sees it.
        await office.until_sent("pay@acme.example", count=3)
        assert [m.identity for m in sent_to(app, "pay@acme.example")] == [A, A, A]
        assert events(app, case, "identity_switched") == []
        for _ in range(24 * 40):  # the next step is the final notice, held for approval
            if len(all_to(app, "pay@acme.example")) == 4:
                break
            await office.advance(1)
    finally:
        await office.close()
    fourth = all_to(app, "pay@acme.example")[-1]
    assert fourth.identity == B and fourth.step_name == "final"
    (switch,) = events(app, case, "identity_switched")
    assert "2 accepted messages in a row went unanswered" in str(switch["why"])
    # The new identity says where the earlier messages came from, in case they never arrived.
    body = outbox.raw(app.store, fourth).decode("utf-8", "replace")
    assert "cobros@taller-demo.example" in body.replace("=\r\n", "").replace("=\n", "")


STOP = (["pay@acme.example"], "")


@pytest.mark.parametrize("office", [STOP], indirect=True)
@run_async
async def test_no_switch_after_the_debtor_asked_to_stop(
    office: Office, servers: LocalMailServers
) -> None:
    app = office.app
    case = case_of(app, "pay@acme.example")
    try:
        await office.until_sent("pay@acme.example")
        (first,) = sent_to(app, "pay@acme.example")
        reply = answer(
            app, first, "pay@acme.example", "Por favor, dejen de escribirme.", office.now
        )
        deliver(servers.mailbox_path(A_ADDR), reply)
        await office.sync()
        # A person decides to go on (a business debtor); then the debtor's server refuses A.
        resolve(app.store, case, Resolution.RESUME, office.now, "test")
        servers.sender_blocks[(A_ADDR, "acme.example")] = BLOCK
        for _ in range(24 * 20):
            await office.advance(1)
            status = app.store.conn.execute("SELECT status FROM cases WHERE id = ?", (case,))
            if status.fetchone()[0] == "review":
                break
    finally:
        await office.close()
    assert events(app, case, "identity_switched") == []
    assert [m.identity for m in all_to(app, "pay@acme.example")] == [A, A]
    reasons = [r[0] for r in app.store.conn.execute(
        "SELECT reason FROM reviews WHERE case_id = ? AND resolved_at IS NULL", (case,)
    )]  # fmt: skip
    assert any("refused contact" in r for r in reasons), reasons
    assert not any(m.envelope_from == B_ADDR for m in servers.sink_messages())


EVERYWHERE = ([f"pay@debtor{n}.example" for n in range(1, 5)], "")


@pytest.mark.parametrize("office", [EVERYWHERE], indirect=True)
@run_async
async def test_an_identity_every_domain_refuses_is_reported_without_a_switching_spree(
    office: Office, servers: LocalMailServers, tmp_path: Path
) -> None:
    app = office.app
    servers.sender_blocks[(A_ADDR, "*")] = BLOCK
    try:
        for _ in range(24 * 3):
            await office.advance(1)
            if (
                app.store.conn.execute(
                    "SELECT count(*) FROM cases WHERE status = 'review'"
                ).fetchone()[0]
                == 4
            ):
                break
    finally:
        await office.close()
    assert (
        app.store.conn.execute(
            "SELECT count(*) FROM events WHERE kind = 'identity_switched'"
        ).fetchone()[0]
        == 0
    )
    assert not any(m.envelope_from == B_ADDR for m in servers.sink_messages())
    problems = app.store.conn.execute(
        "SELECT count(*) FROM events WHERE kind = 'identity_problem'"
    ).fetchone()[0]
    assert problems == 4
    result = CliRunner().invoke(
        main,
        ["--config", str(app.settings.source), "--now", office.now.isoformat(), "identities"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "problem" in result.output and "4 domains" in result.output

    # One case goes to review for something else too (a person must see that); once the
    # identity is fixed, `mailer identities resume` sends the other three back to work.
    held = [r[0] for r in app.store.conn.execute("SELECT id FROM cases ORDER BY id")]
    to_review(app.store, held[0], CaseStatus.REVIEW, office.now, "the debtor wrote back")
    cli = ["--config", str(app.settings.source), "--now", office.now.isoformat(), "identities"]
    result = CliRunner().invoke(main, [*cli, "resume", A, "--note", "SPF fixed", "--by", "ana"])
    assert result.exit_code == 0, result.output
    assert f"3 case(s) held for identity {A} resumed: {', '.join(map(str, held[1:]))}" in (
        result.output
    )
    states = dict(app.store.conn.execute("SELECT id, status FROM cases").fetchall())
    assert states == {held[0]: "review", **{c: "active" for c in held[1:]}}
    resolved = [e for e in app.store.events() if e["kind"] == "case_resolved"]
    assert [e["case_id"] for e in resolved] == held[1:]
    assert {e["data"]["note"] for e in resolved} == {f"identity {A} works again: SPF fixed"}
    assert {e["data"]["by"] for e in resolved} == {"ana"}
    # Nothing is held for it any more; an unknown identity is an error, not a silent no-op.
    again = CliRunner().invoke(main, [*cli, "resume", A])
    assert again.exit_code == 0 and f"0 case(s) held for identity {A}" in again.output
    assert CliRunner().invoke(main, [*cli, "resume", "nobody"]).exit_code == 2


DSN = (["pay@acme.example"], "")


@pytest.mark.parametrize("office", [DSN], indirect=True)
@run_async
async def test_a_blocking_bounce_report_also_switches(
    office: Office, servers: LocalMailServers
) -> None:
    app = office.app
    case = case_of(app, "pay@acme.example")
    try:
        await office.until_sent("pay@acme.example")
        (first,) = sent_to(app, "pay@acme.example")
        report = delivery_report(
            outbox.raw(app.store, first), "pay@acme.example", "5.7.1",
            "smtp; 550 5.7.1 Message rejected: sender taller-demo.example is on our blocklist",
            office.now, "mx.acme.example",
        )  # fmt: skip
        deliver(servers.mailbox_path(A_ADDR), report)
        await office.sync()
        await office.until_sent("pay@acme.example", count=2)
    finally:
        await office.close()
    first, again = sent_to(app, "pay@acme.example")
    assert (first.identity, again.identity) == (A, B) and first.step == again.step
    # The contact is not given up: the address is good, the sender was refused.
    status = app.store.conn.execute(
        "SELECT status FROM contacts WHERE address = 'pay@acme.example'"
    ).fetchone()[0]
    assert status == "active"
    assert len(events(app, case, "identity_switched")) == 1
