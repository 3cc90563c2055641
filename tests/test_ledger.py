"""Ledger import: whole-file refusal with file:line, idempotent upserts, payments and cases."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from mailer.domain.models import DEFAULT_PROFILES, CaseStatus
from mailer.errors import ImportRefusedError
from mailer.ledger import parse_invoices, parse_payments
from mailer.sample import SAMPLE_DIR
from mailer.store.db import Store
from mailer.store.ledger import import_invoices, import_payments, load_cases

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
GOOD = "F-1,D1,Acme S.L.,a@acme.example;b@acme.example,es,business,ES,MD,EUR,1210.00,2026-01-01,2026-01-31\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sample_ledger_imports_and_reimport_is_idempotent() -> None:
    store = Store.open(None)
    rows = parse_invoices(SAMPLE_DIR / "invoices.csv")
    first = import_invoices(store, rows, NOW, "invoices.csv", DEFAULT_PROFILES)
    assert first.added == len(rows) > 50 and first.debtors_added >= 30
    events = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    again = import_invoices(
        store, parse_invoices(SAMPLE_DIR / "invoices.csv"), NOW, "x", DEFAULT_PROFILES
    )
    assert (again.added, again.changed, again.unchanged) == (0, 0, len(rows))
    # Only the import itself is recorded the second time: no invented changes.
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == events + 1
    payments = parse_payments(SAMPLE_DIR / "payments.csv")
    later = datetime(2026, 6, 1, tzinfo=UTC)
    assert import_payments(store, payments, later, "p", DEFAULT_PROFILES).added == len(payments)
    assert import_payments(store, payments, later, "p", DEFAULT_PROFILES).added == 0
    assert store.verify_chain() is None


def test_changed_invoice_is_recorded_as_event(tmp_path: Path) -> None:
    store = Store.open(None)
    import_invoices(
        store, parse_invoices(write(tmp_path, "a.csv", HEADER + GOOD)), NOW, "a", DEFAULT_PROFILES
    )
    changed = GOOD.replace("1210.00", "1300.00")
    report = import_invoices(
        store,
        parse_invoices(write(tmp_path, "b.csv", HEADER + changed)),
        NOW,
        "b",
        DEFAULT_PROFILES,
    )
    assert report.changed == 1
    event = next(e for e in store.events() if e["kind"] == "invoice_changed")
    assert event["data"]["changes"] == {"amount": ["1210.00", "1300.00"]}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (GOOD.replace("1210.00", "12.100"), "amount"),
        (GOOD.replace("1210.00", "doce"), "amount"),
        (GOOD.replace("1210.00", "-5"), "amount"),
        (GOOD.replace("2026-01-31", "31/01/2026"), "due_date"),
        (GOOD.replace("a@acme.example", "not-an-address"), "not an email address"),
        (GOOD.replace(",es,", ",fr,"), "debtor_lang"),
        (GOOD.replace("business", "company"), "debtor_kind"),
        (GOOD.replace(",MD,", ",XX,"), "region"),
        (GOOD.replace("2026-01-31", "2025-12-01"), "before issue_date"),
        (GOOD.replace("Acme S.L.", '"Acme\r\nBcc: x@evil.example"'), "line break"),
        (GOOD.replace("F-1,", ","), "invoice_number is empty"),
        (GOOD.rstrip("\n") + ",extra\n", "more fields"),
    ],
)
def test_bad_row_refuses_whole_file_naming_file_and_line(
    tmp_path: Path, row: str, reason: str
) -> None:
    good2 = GOOD.replace("F-1", "F-2")
    path = write(tmp_path, "bad.csv", HEADER + good2 + row)
    with pytest.raises(ImportRefusedError) as info:
        parse_invoices(path)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{path}:3: "), problem
    assert reason in problem


def test_missing_column_and_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", HEADER.replace("currency,", "") + "x\n")
    with pytest.raises(ImportRefusedError, match=r"m.csv:1: missing column\(s\): currency"):
        parse_invoices(path)
    dup = write(tmp_path, "d.csv", HEADER + GOOD + GOOD)
    with pytest.raises(ImportRefusedError, match=r"d.csv:3: invoice F-1 already on line 2"):
        parse_invoices(dup)
    other = GOOD.replace("F-1", "F-2").replace("Acme S.L.", "Acme SA")
    with pytest.raises(ImportRefusedError, match=r":3: debtor D1 differs from line 2"):
        parse_invoices(write(tmp_path, "c.csv", HEADER + GOOD + other))


def test_semicolon_csv_from_spanish_spreadsheets(tmp_path: Path) -> None:
    text = (
        (HEADER + GOOD)
        .replace(",", ";")
        .replace("a@acme.example;b@acme.example", "a@acme.example b@acme.example")
    )
    rows = parse_invoices(
        write(
            tmp_path,
            "s.csv",
            "\ufeff"
            + text.replace("a@acme.example b@acme.example", '"a@acme.example;b@acme.example"'),
        )
    )
    assert rows[0].invoice.amount == Decimal("1210.00")
    assert [c.address for c in rows[0].debtor.contacts] == ["a@acme.example", "b@acme.example"]


def test_payments_partial_then_full_resolves_case_and_cancels_queue(tmp_path: Path) -> None:
    store = Store.open(None)
    import_invoices(
        store, parse_invoices(write(tmp_path, "i.csv", HEADER + GOOD)), NOW, "i", DEFAULT_PROFILES
    )
    (case,) = load_cases(store)
    assert case.status is CaseStatus.ACTIVE and case.balance == Decimal("1210.00")
    part = write(tmp_path, "p1.csv", "invoice_number,date,amount\nF-1,2026-02-10,210.00\n")
    import_payments(store, parse_payments(part), NOW, "p1", DEFAULT_PROFILES)
    (case,) = load_cases(store)
    assert case.balance == Decimal("1000.00")
    # A later export repeats the earlier payment: it is not counted twice.
    full = write(
        tmp_path,
        "p2.csv",
        "invoice_number,date,amount\nF-1,2026-02-10,210.00\nF-1,2026-02-20,1000.00\n",
    )
    report = import_payments(store, parse_payments(full), NOW, "p2", DEFAULT_PROFILES)
    assert (report.added, report.unchanged, report.cases_resolved) == (1, 1, 1)
    assert list(load_cases(store)) == []
    (closed,) = load_cases(store, include_closed=True)
    assert closed.status is CaseStatus.RESOLVED


def test_payment_problems_refuse_everything(tmp_path: Path) -> None:
    store = Store.open(None)
    import_invoices(
        store, parse_invoices(write(tmp_path, "i.csv", HEADER + GOOD)), NOW, "i", DEFAULT_PROFILES
    )
    bad = write(
        tmp_path,
        "p.csv",
        "invoice_number,date,amount\nF-1,2026-02-10,100.00\nF-9,2026-02-10,5.00\nF-1,2026-02-11,2000.00\nF-1,2027-01-01,1.00\n",
    )
    with pytest.raises(ImportRefusedError) as info:
        import_payments(store, parse_payments(bad), NOW, str(bad), DEFAULT_PROFILES)
    joined = "\n".join(info.value.problems)
    assert f"{bad}:3: unknown invoice F-9" in joined
    assert f"{bad}:4: payments for F-1 would total" in joined
    assert f"{bad}:5: payment date 2027-01-01 is in the future" in joined
    assert store.conn.execute("SELECT count(*) FROM payments").fetchone()[0] == 0


def test_opt_out_survives_reimport(tmp_path: Path) -> None:
    store = Store.open(None)
    path = write(tmp_path, "i.csv", HEADER + GOOD)
    import_invoices(store, parse_invoices(path), NOW, "i", DEFAULT_PROFILES)
    store.conn.execute("UPDATE contacts SET status = 'opted_out' WHERE address = 'a@acme.example'")
    import_invoices(store, parse_invoices(path), NOW, "i", DEFAULT_PROFILES)
    (case,) = load_cases(store)
    assert case.debtor.active_addresses == ("b@acme.example",)
