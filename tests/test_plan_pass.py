"""A planning pass: the facts SQLite sums equal what the whole Case says; every due case in turn."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_outbound import make_app

from mailer.domain.models import DEFAULT_PROFILES, CaseStatus, ContactStatus
from mailer.domain.planner import facts_of
from mailer.flows.outbound import Outbound, TickReport
from mailer.ledger import parse_invoices, parse_payments
from mailer.store.cases import load_cases, load_plan_facts
from mailer.store.db import Store, iso
from mailer.store.ledger import import_invoices, import_payments

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
PLACES = [("ES", "MD"), ("ES", "CN"), ("PT", ""), ("GB", "ENG")]

# One debtor: its invoices as (amount in cents, due day offset, payments in cents), its address
# count, which of them have refused mail, whether one address left the ledger, and the case's
# status and whether a pause has an end.
invoice_shapes = st.tuples(
    st.integers(min_value=1, max_value=300_000),
    st.integers(min_value=-60, max_value=60),
    st.lists(st.integers(min_value=1, max_value=150_000), max_size=3),
)
debtor_shapes = st.tuples(
    st.lists(invoice_shapes, min_size=1, max_size=4),
    st.integers(min_value=1, max_value=3),
    st.lists(st.sampled_from([ContactStatus.UNDELIVERABLE, ContactStatus.OPTED_OUT]), max_size=3),
    st.booleans(),
    st.sampled_from(list(CaseStatus)),
    st.booleans(),
)


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def build_store(tmp_path: Path, debtors: list[tuple]) -> Store:  # type: ignore[type-arg]
    """A store written by mailer's own import and flows' statements, as in production."""
    store = Store.open(None)
    invoices, payments, later = [HEADER], ["invoice_number,date,amount\n"], [HEADER]
    for d, (shapes, addresses, _, drop, _, _) in enumerate(debtors):
        country, region = PLACES[d % len(PLACES)]
        emails = ";".join(f"a{n}@d{d}.example" for n in range(addresses))
        row = f"D{d},Debtor {d},{emails},es,business,{country},{region},EUR"
        for n, (cents, due, paid) in enumerate(shapes):
            due_date = date(2026, 3, 1) + timedelta(days=due)
            line = f"F{d}-{n},{row},{money(cents)},{due_date - timedelta(30)},{due_date}\n"
            invoices.append(line)
            if drop and addresses > 1:  # re-imported with its last address gone: position -1
                kept = ";".join(f"a{k}@d{d}.example" for k in range(addresses - 1))
                later.append(line.replace(emails, kept))
            left = cents
            for part in paid:  # the import refuses more than the amount in total
                part = min(part, left)
                if part:
                    payments.append(f"F{d}-{n},2026-02-01,{money(part)}\n")
                    left -= part
    write = tmp_path / "i.csv"
    write.write_text("".join(invoices), encoding="utf-8")
    import_invoices(store, parse_invoices(write), NOW, "i", DEFAULT_PROFILES)
    if len(later) > 1:
        write.write_text("".join(later), encoding="utf-8")
        import_invoices(store, parse_invoices(write), NOW, "i2", DEFAULT_PROFILES)
    if len(payments) > 1:
        write.write_text("".join(payments), encoding="utf-8")
        import_payments(store, parse_payments(write), NOW, "p", DEFAULT_PROFILES)
    with store.transaction() as conn:
        for d, (_, _, refused, _, status, ends) in enumerate(debtors):
            for n, contact_status in enumerate(refused):
                conn.execute(
                    "UPDATE contacts SET status = ? WHERE debtor_id = ? AND address = ?",
                    (contact_status.value, f"D{d}", f"a{n}@d{d}.example"),
                )
            until = iso(NOW + timedelta(days=3)) if ends else None
            conn.execute(
                "UPDATE cases SET status = ?, paused_until = ? WHERE debtor_id = ?",
                (status.value, until if status is CaseStatus.PAUSED else None, f"D{d}"),
            )
    return store


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(debtors=st.lists(debtor_shapes, min_size=1, max_size=8), chunk=st.integers(1, 5))
def test_facts_read_by_sqlite_are_the_cases_own(
    tmp_path: Path,
    debtors: list[tuple],
    chunk: int,  # type: ignore[type-arg]
) -> None:
    store = build_store(tmp_path, debtors)
    whole = list(load_cases(store, include_closed=True))
    facts = list(load_plan_facts(store, include_closed=True, chunk=chunk))
    assert facts == [facts_of(case) for case in whole]
    # Open ones only, and by id (closed included, unknown skipped), as load_cases chooses.
    assert list(load_plan_facts(store)) == [facts_of(c) for c in load_cases(store)]
    ids = [*[c.id for c in whole][::2], 999]
    assert list(load_plan_facts(store, ids, chunk=chunk)) == [
        facts_of(c) for c in load_cases(store, ids)
    ]


def test_amounts_of_another_shape_are_decided_in_decimal(tmp_path: Path) -> None:
    # Written by hand, not by the import: one decimal, or too long for SQLite's integers.
    store = build_store(tmp_path, [([(10_000, 0, [5_000]), (10_000, 9, [])], 1, [], False,
                                    CaseStatus.ACTIVE, False)])  # fmt: skip
    odd = [
        ("F0-0", "100.0", ["99.9", "0.1"]),  # paid in full: the anchor is the later invoice
        ("F0-0", "100.00", ["99.99"]),  # one cent owed
        ("F0-0", "1000000000000000.00", ["999999999999999.99"]),  # one cent owed, 16 digits
        ("F0-0", "1000000000000000.00", ["1000000000000000.00"]),
    ]
    for number, amount, paid in odd:
        with store.transaction() as conn:
            conn.execute("DELETE FROM payments")
            conn.execute("UPDATE invoices SET amount = ? WHERE number = ?", (amount, number))
            conn.executemany(
                "INSERT INTO payments (key, invoice_number, paid_on, amount, imported_at)"
                " VALUES (?, ?, '2026-02-01', ?, 'x')",
                [(f"k{n}", number, p) for n, p in enumerate(paid)],
            )
        (case,) = load_cases(store)
        (facts,) = load_plan_facts(store)
        assert facts == facts_of(case), (amount, paid)
    assert facts.anchor == date(2026, 3, 10)


def test_a_pass_reaches_due_cases_behind_many_idle_ones(tmp_path: Path) -> None:
    app = make_app(tmp_path, 25)
    store = app.store
    ids = [r[0] for r in store.conn.execute("SELECT id FROM cases ORDER BY id")]
    # The first 20 cases wait for a person (idle, looked at again at every pass); a pass
    # takes 10 cases (batch 1).
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE cases SET status = 'review', next_action_at = NULL WHERE id = ?",
            [(i,) for i in ids[:20]],
        )
    flow = Outbound(app, {}, None, batch=1)
    planned = 0
    for _ in range(3):
        report = TickReport()
        flow.plan_due(datetime(2026, 1, 7, 9, 30, tzinfo=UTC), report)
        planned += report.planned
    assert planned == 5  # each of the other five got its first reminder
    queued = {r[0] for r in store.conn.execute("SELECT case_id FROM messages")}
    assert queued == set(ids[20:])
    assert store.verify_chain() is None


def test_an_ended_pause_resumes_and_plans_in_the_same_pass(tmp_path: Path) -> None:
    app = make_app(tmp_path, 2)
    store = app.store
    now = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)
    with store.transaction() as conn:
        conn.execute("UPDATE cases SET status = 'paused', paused_until = ?", (iso(now),))
    report = TickReport()
    Outbound(app, {}, None).plan_due(now, report)
    assert report.planned == 2 and report.errors == []
    rows = store.conn.execute("SELECT status, paused_until FROM cases").fetchall()
    assert rows == [("active", None), ("active", None)]
    assert sum(e["kind"] == "case_resumed" for e in store.events()) == 2
