"""Ledger persistence: apply validated imports in one transaction, keep cases in step, load cases."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from mailer.domain.models import (
    ZERO,
    Case,
    CaseStatus,
    ComplianceProfile,
    Contact,
    ContactStatus,
    Debtor,
    DebtorKind,
    HistoryEntry,
    Invoice,
    MessageState,
    Payment,
)
from mailer.errors import ImportRefusedError
from mailer.ledger import InvoiceRow, PaymentRow, collector_paused
from mailer.store.db import EventItem, Store, iso

CLOSED = (CaseStatus.RESOLVED, CaseStatus.HANDED_OVER, CaseStatus.STOPPED)
_INVOICE_FIELDS = (
    "debtor_id",
    "currency",
    "amount",
    "issue_date",
    "due_date",
    "pdf_path",
    "payment_link",
)
_DEBTOR_FIELDS = ("name", "kind", "lang", "country", "region", "timezone")


@dataclass
class ImportReport:
    source: str
    rows: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    debtors_added: int = 0
    debtors_changed: int = 0
    cases_opened: int = 0
    cases_resolved: int = 0
    notes: list[str] = field(default_factory=list)


def _invoice_values(inv: Invoice) -> tuple[Any, ...]:
    return (
        inv.debtor_id,
        inv.currency,
        str(inv.amount),
        inv.issue_date.isoformat(),
        inv.due_date.isoformat(),
        inv.pdf_path,
        inv.payment_link,
    )


def _debtor_values(d: Debtor) -> tuple[Any, ...]:
    return (d.name, d.kind.value, d.lang, d.country, d.region, d.timezone)


CHUNK = 1000  # rows looked up or written per statement: memory stays flat however big the file


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _EventBuffer:
    """Events appended in batches as they are found: the chain is the same, memory is bounded."""

    def __init__(self, store: Store, now: datetime, size: int = 5000) -> None:
        self.store, self.now, self.size = store, now, size
        self.items: list[EventItem] = []

    def add(self, item: EventItem) -> None:
        self.items.append(item)
        if len(self.items) >= self.size:
            self.flush()

    def flush(self) -> None:
        self.store.append_events(self.now, self.items)
        self.items = []


def _known(conn: Any, table: str, key: str, fields: tuple[str, ...], ids: Sequence[str]) -> Any:
    """{id: stored values} for the ids of one chunk."""
    marks = ", ".join("?" * len(ids))
    sql = f"SELECT {key}, {', '.join(fields)} FROM {table} WHERE {key} IN ({marks})"
    return {r[0]: r[1:] for r in conn.execute(sql, tuple(ids))}


def import_invoices(
    store: Store,
    rows: Sequence[InvoiceRow],
    now: datetime,
    source: str,
    profiles: Mapping[DebtorKind, ComplianceProfile],
) -> ImportReport:
    """Upsert invoices and debtors by their ids; each addition or change is an event."""
    with collector_paused():
        return _import_invoices(store, rows, now, source, profiles)


def _import_invoices(
    store: Store,
    rows: Sequence[InvoiceRow],
    now: datetime,
    source: str,
    profiles: Mapping[DebtorKind, ComplianceProfile],
) -> ImportReport:
    report = ImportReport(source=source, rows=len(rows))
    stamp = iso(now)
    with store.transaction() as conn:
        # First only count, so the import's own event, which carries the counts, comes first.
        for part in _chunks(rows):
            known = _known(
                conn, "invoices", "number", _INVOICE_FIELDS, [r.invoice.number for r in part]
            )
            for row in part:
                old = known.get(row.invoice.number)
                if old is None:
                    report.added += 1
                elif old != _invoice_values(row.invoice):
                    report.changed += 1
                else:
                    report.unchanged += 1
        summary = {"file": source, "kind": "invoices", "rows": len(rows), "added": report.added}
        store.append_events(
            now, [("ledger_import", {**summary, "changed": report.changed}, None, None, None)]
        )
        events = _EventBuffer(store, now)
        first: dict[str, Debtor] = {}
        for row in rows:
            first.setdefault(row.debtor.id, row.debtor)
        debtors = list(first.values())
        del first
        report.debtors_added, report.debtors_changed = _upsert_debtors(conn, debtors, stamp, events)
        _sync_contacts(conn, debtors, stamp, events)
        for part in _chunks(rows):
            known = _known(
                conn, "invoices", "number", _INVOICE_FIELDS, [r.invoice.number for r in part]
            )
            new_rows, changed_rows = [], []
            for row in part:
                inv = row.invoice
                values = _invoice_values(inv)
                old = known.get(inv.number)
                if old is None:
                    new_rows.append((inv.number, *values, stamp, stamp))
                    data = {"number": inv.number, **dict(zip(_INVOICE_FIELDS, values, strict=True))}
                    events.add(("invoice_added", data, None, None, inv.debtor_id))
                elif old != values:
                    changed_rows.append((*values, stamp, inv.number))
                    diff = {
                        f: [o, n]
                        for f, o, n in zip(_INVOICE_FIELDS, old, values, strict=True)
                        if o != n
                    }
                    events.add(
                        (
                            "invoice_changed",
                            {"number": inv.number, "changes": diff},
                            None,
                            None,
                            inv.debtor_id,
                        )
                    )
            conn.executemany(
                f"INSERT INTO invoices (number, {', '.join(_INVOICE_FIELDS)}, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new_rows,
            )
            conn.executemany(
                f"UPDATE invoices SET {', '.join(f + ' = ?' for f in _INVOICE_FIELDS)}, updated_at = ? WHERE number = ?",
                changed_rows,
            )
        events.flush()
        report.cases_opened, report.cases_resolved = sync_cases(
            store, now, profiles, {d.id for d in debtors}
        )
    return report


def _upsert_debtors(
    conn: Any, debtors: Sequence[Debtor], stamp: str, events: _EventBuffer
) -> tuple[int, int]:
    """Insert new debtors, update changed ones; (added, changed)."""
    added = changed = 0
    for part in _chunks(debtors):
        known = _known(conn, "debtors", "id", _DEBTOR_FIELDS, [d.id for d in part])
        new_debtors, changed_debtors = [], []
        for debtor in part:
            values = _debtor_values(debtor)
            old = known.get(debtor.id)
            if old is None:
                new_debtors.append((debtor.id, *values, stamp, stamp))
                data = dict(zip(_DEBTOR_FIELDS, values, strict=True))
                events.add(("debtor_added", data, None, None, debtor.id))
            elif old != values:
                changed_debtors.append((*values, stamp, debtor.id))
                diff = {
                    f: [o, n] for f, o, n in zip(_DEBTOR_FIELDS, old, values, strict=True) if o != n
                }
                events.add(("debtor_changed", diff, None, None, debtor.id))
        conn.executemany(
            f"INSERT INTO debtors (id, {', '.join(_DEBTOR_FIELDS)}, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_debtors,
        )
        conn.executemany(
            f"UPDATE debtors SET {', '.join(f + ' = ?' for f in _DEBTOR_FIELDS)}, updated_at = ? WHERE id = ?",
            changed_debtors,
        )
        added, changed = added + len(new_debtors), changed + len(changed_debtors)
    return added, changed


def _sync_contacts(conn: Any, debtors: Sequence[Debtor], stamp: str, events: _EventBuffer) -> None:
    """Addresses in the ledger keep their status (an opt-out or a hard bounce is never forgotten).

    An address no longer listed keeps its row with position -1, so its history stays readable.
    A debtor's first addresses are not events of their own: its debtor_added event covers them.
    """
    for part in _chunks(debtors):
        existing: dict[str, dict[str, int]] = defaultdict(dict)
        marks = ", ".join("?" * len(part))
        for debtor_id, address, position in conn.execute(
            f"SELECT debtor_id, address, position FROM contacts WHERE debtor_id IN ({marks})",
            tuple(d.id for d in part),
        ):
            existing[debtor_id][address.lower()] = position
        inserts, moves = [], []
        for debtor in part:
            known = existing.get(debtor.id, {})
            listed = [c.address for c in debtor.contacts]
            for position, address in enumerate(listed):
                if address not in known:
                    inserts.append((debtor.id, address, position, stamp))
                    if known:
                        events.add(("contact_added", {"address": address}, None, None, debtor.id))
                elif known[address] != position:
                    moves.append((position, stamp, debtor.id, address))
            for address in known:
                if address not in listed and known[address] != -1:
                    moves.append((-1, stamp, debtor.id, address))
                    events.add(("contact_removed", {"address": address}, None, None, debtor.id))
        conn.executemany(
            "INSERT INTO contacts (debtor_id, address, position, updated_at) VALUES (?, ?, ?, ?)",
            inserts,
        )
        conn.executemany(
            "UPDATE contacts SET position = ?, updated_at = ? WHERE debtor_id = ? AND address = ?",
            moves,
        )


def import_payments(
    store: Store,
    rows: Sequence[PaymentRow],
    now: datetime,
    source: str,
    profiles: Mapping[DebtorKind, ComplianceProfile],
) -> ImportReport:
    """Record payments not seen before; unknown invoices or overpayments refuse the whole file."""
    report = ImportReport(source=source, rows=len(rows))
    with store.transaction() as conn:
        invoices = {
            r[0]: (r[1], Decimal(r[2]))
            for r in conn.execute("SELECT number, debtor_id, amount FROM invoices")
        }
        paid: dict[str, Decimal] = defaultdict(lambda: ZERO)
        for number, amount in conn.execute("SELECT invoice_number, amount FROM payments"):
            paid[number] += Decimal(amount)
        known = {r[0] for r in conn.execute("SELECT key FROM payments")}
        problems: list[str] = []
        fresh: list[PaymentRow] = []
        for row in rows:
            number = row.payment.invoice_number
            if number not in invoices:
                problems.append(
                    f"{source}:{row.line}: unknown invoice {number} (import invoices first)"
                )
                continue
            if row.key in known:
                report.unchanged += 1
                continue
            if row.payment.paid_on > now.date():
                problems.append(
                    f"{source}:{row.line}: payment date {row.payment.paid_on} is in the future"
                )
                continue
            paid[number] += row.payment.amount
            if paid[number] > invoices[number][1]:
                problems.append(
                    f"{source}:{row.line}: payments for {number} would total {paid[number]},"
                    f" more than its amount {invoices[number][1]}"
                )
                continue
            fresh.append(row)
        if problems:
            raise ImportRefusedError(problems)
        stamp = iso(now)
        conn.executemany(
            "INSERT INTO payments (key, invoice_number, paid_on, amount, reference, source, imported_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.key,
                    r.payment.invoice_number,
                    r.payment.paid_on.isoformat(),
                    str(r.payment.amount),
                    r.reference,
                    source,
                    stamp,
                )
                for r in fresh
            ],
        )
        report.added = len(fresh)
        events: list[EventItem] = [
            (
                "ledger_import",
                {"file": source, "kind": "payments", "rows": len(rows), "added": len(fresh)},
                None,
                None,
                None,
            )
        ]
        events += [
            (
                "payment_recorded",
                {
                    "invoice": r.payment.invoice_number,
                    "paid_on": r.payment.paid_on.isoformat(),
                    "amount": str(r.payment.amount),
                    "reference": r.reference,
                },
                None,
                None,
                invoices[r.payment.invoice_number][0],
            )
            for r in fresh
        ]
        store.append_events(now, events)
        touched = {invoices[r.payment.invoice_number][0] for r in fresh}
        report.cases_opened, report.cases_resolved = sync_cases(store, now, profiles, touched)
    return report


def _balances(conn: Any, debtor_ids: Sequence[str]) -> dict[str, Decimal]:
    """What each of ``debtor_ids`` owes: unpaid invoice amounts, never below zero per invoice."""
    balance: dict[str, Decimal] = {}
    marks = ", ".join("?" * len(debtor_ids))
    for debtor_id, amount, paid in conn.execute(
        "SELECT i.debtor_id, i.amount, (SELECT group_concat(p.amount, ' ') FROM payments p"
        f" WHERE p.invoice_number = i.number) FROM invoices i WHERE i.debtor_id IN ({marks})",
        tuple(debtor_ids),
    ):
        owed = Decimal(amount)
        if paid:
            owed = max(owed - sum(map(Decimal, paid.split()), ZERO), ZERO)
        balance[debtor_id] = balance.get(debtor_id, ZERO) + owed
    return balance


def sync_cases(
    store: Store,
    now: datetime,
    profiles: Mapping[DebtorKind, ComplianceProfile],
    debtor_ids: set[str] | None = None,
) -> tuple[int, int]:
    """Open a case for each debtor who owes money and has none; resolve cases now fully paid."""
    stamp = iso(now)
    opened = resolved = 0
    with store.transaction() as conn:
        if debtor_ids is None:
            ids = [r[0] for r in conn.execute("SELECT DISTINCT debtor_id FROM invoices")]
        else:
            ids = sorted(debtor_ids)
        events = _EventBuffer(store, now)
        for part in _chunks(ids):
            balances = _balances(conn, part)
            marks = ", ".join("?" * len(part))
            open_cases = dict(
                conn.execute(
                    "SELECT debtor_id, id FROM cases WHERE closed_at IS NULL"
                    f" AND debtor_id IN ({marks})",
                    tuple(part),
                )
            )
            kinds = dict(
                conn.execute(f"SELECT id, kind FROM debtors WHERE id IN ({marks})", tuple(part))
            )
            to_open: list[tuple[str, str, str, str, Decimal]] = []
            to_close: list[tuple[int, str]] = []
            for debtor_id, balance in balances.items():
                case_id = open_cases.get(debtor_id)
                if balance > ZERO and case_id is None:
                    campaign = profiles[DebtorKind(kinds[debtor_id])].campaign
                    to_open.append((debtor_id, campaign, stamp, stamp, balance))
                elif balance == ZERO and case_id is not None:
                    to_close.append((case_id, debtor_id))
            conn.executemany(
                "INSERT INTO cases (debtor_id, status, campaign, opened_at, next_action_at)"
                " VALUES (?, 'active', ?, ?, ?)",
                [item[:4] for item in to_open],
            )
            if to_open:
                # The one open case per debtor (a unique index) is the one just inserted.
                new_ids = dict(
                    conn.execute(
                        "SELECT debtor_id, id FROM cases WHERE closed_at IS NULL"
                        f" AND debtor_id IN ({', '.join('?' * len(to_open))})",
                        tuple(item[0] for item in to_open),
                    )
                )
                for debtor_id, campaign, _, _, balance in to_open:
                    data = {"campaign": campaign, "balance": str(balance)}
                    events.add(("case_opened", data, new_ids[debtor_id], None, debtor_id))
            for case_id, debtor_id in to_close:
                conn.execute(
                    "UPDATE cases SET status = 'resolved', status_reason = 'paid in full',"
                    " closed_at = ?, next_action_at = NULL WHERE id = ?",
                    (stamp, case_id),
                )
                # Anything still waiting in the outbox for this case must not go out.
                conn.execute(
                    "UPDATE messages SET state = 'cancelled', updated_at = ? WHERE case_id = ?"
                    " AND state IN ('awaiting_approval', 'queued', 'deferred')",
                    (stamp, case_id),
                )
                events.add(("case_resolved", {"reason": "paid in full"}, case_id, None, debtor_id))
            opened, resolved = opened + len(to_open), resolved + len(to_close)
        events.flush()
    return opened, resolved


# --- loading ------------------------------------------------------------------------------


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


# Enum lookups by value through the class call cost ~1 µs each; loading does ~4 per case.
_CONTACT_STATUS = {s.value: s for s in ContactStatus}
_CASE_STATUS = {s.value: s for s in CaseStatus}
_KIND = {k.value: k for k in DebtorKind}


def load_cases(
    store: Store,
    case_ids: Iterable[int] | None = None,
    *,
    include_closed: bool = False,
    chunk: int = 2000,
) -> Iterator[Case]:
    """Cases with their debtor, contacts, invoices and payments, a chunk of debtors at a time.

    Only the case ids are read up front: memory stays at one chunk however many cases there are.
    """
    where = "" if include_closed else "WHERE closed_at IS NULL"
    ids = None if case_ids is None else list(case_ids)
    if ids is None:
        ids = [r[0] for r in store.conn.execute(f"SELECT id FROM cases {where} ORDER BY id")]
    elif ids:
        marks = ", ".join("?" * len(ids))
        ids = [
            r[0]
            for r in store.conn.execute(
                f"SELECT id FROM cases WHERE id IN ({marks}) ORDER BY id", tuple(ids)
            )
        ]
    dates: dict[str, date] = {}  # a ledger has few distinct dates and many rows

    def day(text: str) -> date:
        found = dates.get(text)
        if found is None:
            found = dates[text] = date.fromisoformat(text)
        return found

    for start in range(0, len(ids), chunk):
        wanted = ids[start : start + chunk]
        part = store.conn.execute(
            "SELECT c.id, c.status, c.paused_until, d.id, d.name, d.kind, d.lang, d.country, d.region, d.timezone"
            f" FROM cases c JOIN debtors d ON d.id = c.debtor_id WHERE c.id IN ({', '.join('?' * len(wanted))}) ORDER BY c.id",
            tuple(wanted),
        ).fetchall()
        debtor_ids = [r[3] for r in part]
        marks = ", ".join("?" * len(debtor_ids))
        contacts: dict[str, list[Contact]] = defaultdict(list)
        for debtor_id, address, status in store.conn.execute(
            f"SELECT debtor_id, address, status FROM contacts WHERE debtor_id IN ({marks}) AND position >= 0 ORDER BY debtor_id, position",
            debtor_ids,
        ):
            contacts[debtor_id].append(Contact(address, _CONTACT_STATUS[status]))
        payments: dict[str, list[Payment]] = defaultdict(list)
        invoices: dict[str, list[Invoice]] = defaultdict(list)
        inv_rows = store.conn.execute(
            f"SELECT number, debtor_id, currency, amount, issue_date, due_date, pdf_path, payment_link FROM invoices WHERE debtor_id IN ({marks}) ORDER BY due_date, number",
            debtor_ids,
        ).fetchall()
        numbers = [r[0] for r in inv_rows]
        for begin in range(0, len(numbers), 900):
            batch = numbers[begin : begin + 900]
            for number, paid_on, amount in store.conn.execute(
                f"SELECT invoice_number, paid_on, amount FROM payments WHERE invoice_number IN ({', '.join('?' * len(batch))}) ORDER BY paid_on, id",
                batch,
            ):
                payments[number].append(Payment(number, day(paid_on), Decimal(amount)))
        for number, debtor_id, currency, amount, issued, due, pdf, link in inv_rows:
            invoices[debtor_id].append(
                Invoice(
                    number,
                    debtor_id,
                    currency,
                    Decimal(amount),
                    day(issued),
                    day(due),
                    pdf,
                    link,
                    tuple(payments.get(number, ())),
                )
            )
        for case_id, status, paused_until, debtor_id, name, kind, lang, country, region, tz in part:
            debtor = Debtor(
                debtor_id,
                name,
                _KIND[kind],
                lang,
                country,
                region,
                tz,
                tuple(contacts[debtor_id]),
            )
            yield Case(
                case_id,
                debtor,
                tuple(invoices[debtor_id]),
                _CASE_STATUS[status],
                _dt(paused_until),
            )


def load_history(
    store: Store, case_ids: Sequence[int] | None = None
) -> dict[int, list[HistoryEntry]]:
    """What each case's outbox already holds, as the planner sees it."""
    sql = "SELECT case_id, step, coalesce(sent_at, scheduled_at), state FROM messages"
    args: tuple[Any, ...] = ()
    if case_ids is not None:
        sql += f" WHERE case_id IN ({', '.join('?' * len(case_ids))})"
        args = tuple(case_ids)
    history: dict[int, list[HistoryEntry]] = defaultdict(list)
    for case_id, step, at, state in store.conn.execute(sql + " ORDER BY case_id, step", args):
        history[case_id].append(HistoryEntry(step, datetime.fromisoformat(at), MessageState(state)))
    return history
