"""Ledger import: whole-file refusal with file:line, idempotent upserts, payments and cases."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from mailer.domain.models import DEFAULT_PROFILES, CaseStatus, Contact, Debtor, DebtorKind
from mailer.errors import ImportRefusedError
from mailer.ledger import parse_invoices, parse_payments, read_invoices
from mailer.sample import SAMPLE_DIR
from mailer.slots import slot_constructor
from mailer.store.db import Store
from mailer.store.ledger import ImportReport, import_invoices, import_payments, load_cases

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


def _table_counts(store: Store) -> tuple[int, ...]:
    tables = ("debtors", "contacts", "invoices", "cases", "events")
    return tuple(store.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)


def test_streamed_import_refuses_a_late_bad_row_and_imports_nothing(tmp_path: Path) -> None:
    store = Store.open(None)
    import_invoices(store, read_invoices(SAMPLE_DIR / "invoices.csv"), NOW, "s", DEFAULT_PROFILES)
    before = _table_counts(store)
    rows = [GOOD.replace("F-1", f"F-{n}").replace("D1", f"D{n}") for n in range(1, 2500)]
    rows[2400] = rows[2400].replace("2026-01-31", "31/01/2026")
    rows[2450] = rows[2450].replace("D2451", "D2450").replace("Acme S.L.", "Acme SA")
    path = write(tmp_path, "late.csv", HEADER + "".join(rows))
    with pytest.raises(ImportRefusedError) as info:
        import_invoices(store, read_invoices(path), NOW, "late", DEFAULT_PROFILES)
    assert info.value.problems == [
        f"{path}:2402: due_date '31/01/2026' is not a date (YYYY-MM-DD)",
        f"{path}:2452: debtor D2450 differs from line 2451"
        " (name, emails, language, kind or country)",
    ]
    # Thousands of good rows came first (staged as they were read): none of them stayed.
    assert _table_counts(store) == before
    assert store.conn.execute("SELECT name FROM temp.sqlite_master").fetchall() == []
    assert store.verify_chain() is None


def test_streamed_import_counts_first_then_each_change(tmp_path: Path) -> None:
    store = Store.open(None)
    first = import_invoices(
        store, read_invoices(write(tmp_path, "a.csv", HEADER + GOOD)), NOW, "a", DEFAULT_PROFILES
    )
    assert (first.rows, first.added, first.debtors_added, first.cases_opened) == (1, 1, 1, 1)
    second_row = GOOD.replace("F-1", "F-2")
    text = HEADER + GOOD.replace("1210.00", "1300.00") + second_row
    text = text.replace("a@acme.example;b@acme.example", "b@acme.example;c@acme.example")
    report = import_invoices(
        store, read_invoices(write(tmp_path, "b.csv", text)), NOW, "b", DEFAULT_PROFILES
    )
    assert (report.rows, report.added, report.changed, report.unchanged) == (2, 1, 1, 0)
    assert (report.debtors_added, report.debtors_changed, report.cases_opened) == (0, 0, 0)
    kinds = [e["kind"] for e in store.events()]
    # The import's own event, which carries the counts, comes before what it did.
    assert kinds[kinds.index("ledger_import", 1) :] == [
        "ledger_import",
        "contact_added",
        "contact_removed",
        "invoice_changed",
        "invoice_added",
    ]
    changed = next(e for e in store.events() if e["kind"] == "invoice_changed")
    assert changed["data"] == {"number": "F-1", "changes": {"amount": ["1210.00", "1300.00"]}}
    assert changed["debtor_id"] == "D1"
    (case,) = load_cases(store)
    assert [i.number for i in case.invoices] == ["F-1", "F-2"]
    assert case.debtor.active_addresses == ("b@acme.example", "c@acme.example")


def test_load_cases_by_id_and_in_chunks(tmp_path: Path) -> None:
    store = Store.open(None)
    rows = [
        GOOD.replace("F-1", f"F-{n}").replace("D1", f"D{n % 7}").replace("-01-31", f"-02-{n:02}")
        for n in range(1, 22)
    ]
    import_invoices(
        store,
        read_invoices(write(tmp_path, "i.csv", HEADER + "".join(rows))),
        NOW,
        "i",
        DEFAULT_PROFILES,
    )
    paid = write(tmp_path, "p.csv", "invoice_number,date,amount\nF-7,2026-02-20,10.00\n")
    import_payments(store, parse_payments(paid), NOW, "p", DEFAULT_PROFILES)
    whole = list(load_cases(store))
    assert [c.id for c in whole] == sorted(c.id for c in whole) and len(whole) == 7
    assert list(load_cases(store, chunk=2)) == whole
    for case in whole:
        dues = [i.due_date for i in case.invoices]
        assert dues == sorted(dues) and len(dues) == 3
        assert all(i.debtor_id == case.debtor.id for i in case.invoices)
    (with_payment,) = [i for c in whole for i in c.invoices if i.payments]
    assert with_payment.number == "F-7" and with_payment.balance == Decimal("1200.00")
    # By id: duplicates once, in id order, unknown ids skipped, closed cases included.
    ids = [whole[3].id, whole[1].id, whole[3].id, 999]
    assert list(load_cases(store, ids)) == [whole[1], whole[3]]
    store.conn.execute(
        "UPDATE cases SET closed_at = '2026-03-01', status = 'stopped' WHERE id = ?", (whole[1].id,)
    )
    assert [c.id for c in load_cases(store)] == [c.id for c in whole if c is not whole[1]]
    (closed,) = load_cases(store, [whole[1].id])
    assert closed.status is CaseStatus.STOPPED
    assert len(list(load_cases(store, include_closed=True, chunk=3))) == 7
    assert list(load_cases(store, [])) == []


def test_slot_constructor_builds_what_the_dataclass_builds() -> None:
    debtor = Debtor("D1", "Acme", DebtorKind.BUSINESS, "es", "ES", None, "Europe/Madrid", ())
    made = slot_constructor(Debtor)("D1", "Acme", DebtorKind.BUSINESS, "es", "ES", None,
                                    "Europe/Madrid", ())  # fmt: skip
    assert made == debtor and hash(made) == hash(debtor) and type(made) is Debtor
    contact = slot_constructor(Contact)("a@acme.example")  # defaults apply
    assert contact == Contact("a@acme.example")
    with pytest.raises(FrozenInstanceError):
        made.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        slot_constructor(ImportReport)  # not slotted: its __init__ is the only way in
