"""Ledger persistence: apply validated imports in one transaction, keep cases in step, load cases."""

from __future__ import annotations

import json
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
from mailer.ledger import InvoiceRow, PaymentRow
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


def import_invoices(
    store: Store,
    rows: Sequence[InvoiceRow],
    now: datetime,
    source: str,
    profiles: Mapping[DebtorKind, ComplianceProfile],
) -> ImportReport:
    """Upsert invoices and debtors by their ids; each addition or change is an event."""
    report = ImportReport(source=source, rows=len(rows))
    stamp = iso(now)
    events: list[EventItem] = []
    with store.transaction() as conn:
        known_debtors = {
            r[0]: tuple(r[1:])
            for r in conn.execute(f"SELECT id, {', '.join(_DEBTOR_FIELDS)} FROM debtors")
        }
        known_invoices = {
            r[0]: tuple(r[1:])
            for r in conn.execute(f"SELECT number, {', '.join(_INVOICE_FIELDS)} FROM invoices")
        }
        debtors: dict[str, Debtor] = {}
        for row in rows:
            debtors.setdefault(row.debtor.id, row.debtor)
        new_debtors, changed_debtors = [], []
        for debtor in debtors.values():
            values = _debtor_values(debtor)
            old = known_debtors.get(debtor.id)
            if old is None:
                new_debtors.append((debtor.id, *values, stamp, stamp))
                events.append(
                    (
                        "debtor_added",
                        dict(zip(_DEBTOR_FIELDS, values, strict=True)),
                        None,
                        None,
                        debtor.id,
                    )
                )
            elif old != values:
                changed_debtors.append((*values, stamp, debtor.id))
                diff = {
                    f: [o, n] for f, o, n in zip(_DEBTOR_FIELDS, old, values, strict=True) if o != n
                }
                events.append(("debtor_changed", diff, None, None, debtor.id))
        conn.executemany(
            f"INSERT INTO debtors (id, {', '.join(_DEBTOR_FIELDS)}, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_debtors,
        )
        conn.executemany(
            f"UPDATE debtors SET {', '.join(f + ' = ?' for f in _DEBTOR_FIELDS)}, updated_at = ? WHERE id = ?",
            changed_debtors,
        )
        report.debtors_added, report.debtors_changed = len(new_debtors), len(changed_debtors)
        _sync_contacts(conn, debtors.values(), stamp, events, bool(known_debtors))

        new_rows, changed_rows = [], []
        for row in rows:
            inv = row.invoice
            values = _invoice_values(inv)
            old = known_invoices.get(inv.number)
            if old is None:
                new_rows.append((inv.number, *values, stamp, stamp))
                events.append(
                    (
                        "invoice_added",
                        {"number": inv.number, **dict(zip(_INVOICE_FIELDS, values, strict=True))},
                        None,
                        None,
                        inv.debtor_id,
                    )
                )
            elif old != values:
                changed_rows.append((*values, stamp, inv.number))
                diff = {
                    f: [o, n]
                    for f, o, n in zip(_INVOICE_FIELDS, old, values, strict=True)
                    if o != n
                }
                events.append(
                    (
                        "invoice_changed",
                        {"number": inv.number, "changes": diff},
                        None,
                        None,
                        inv.debtor_id,
                    )
                )
            else:
                report.unchanged += 1
        conn.executemany(
            f"INSERT INTO invoices (number, {', '.join(_INVOICE_FIELDS)}, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        conn.executemany(
            f"UPDATE invoices SET {', '.join(f + ' = ?' for f in _INVOICE_FIELDS)}, updated_at = ? WHERE number = ?",
            changed_rows,
        )
        report.added, report.changed = len(new_rows), len(changed_rows)
        store.append_events(
            now,
            [
                (
                    "ledger_import",
                    {
                        "file": source,
                        "kind": "invoices",
                        "rows": len(rows),
                        "added": report.added,
                        "changed": report.changed,
                    },
                    None,
                    None,
                    None,
                ),
                *events,
            ],
        )
        report.cases_opened, report.cases_resolved = sync_cases(store, now, profiles, set(debtors))
    return report


def _sync_contacts(
    conn: Any, debtors: Iterable[Debtor], stamp: str, events: list[EventItem], any_known: bool
) -> None:
    """Addresses in the ledger keep their status (an opt-out or a hard bounce is never forgotten).

    An address no longer listed keeps its row with position -1, so its history stays readable.
    """
    existing: dict[str, dict[str, int]] = defaultdict(dict)
    if any_known:
        for debtor_id, address, position in conn.execute(
            "SELECT debtor_id, address, position FROM contacts"
        ):
            existing[debtor_id][address.lower()] = position
    inserts, moves = [], []
    for debtor in debtors:
        known = existing.get(debtor.id, {})
        listed = [c.address for c in debtor.contacts]
        for position, address in enumerate(listed):
            if address not in known:
                inserts.append((debtor.id, address, position, stamp))
                if known:
                    events.append(("contact_added", {"address": address}, None, None, debtor.id))
            elif known[address] != position:
                moves.append((position, stamp, debtor.id, address))
        for address in known:
            if address not in listed and known[address] != -1:
                moves.append((-1, stamp, debtor.id, address))
                events.append(("contact_removed", {"address": address}, None, None, debtor.id))
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


def _balances(conn: Any, debtor_ids: set[str] | None) -> dict[str, Decimal]:
    balance: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for debtor_id, amount, paid in conn.execute(
        "SELECT i.debtor_id, i.amount, (SELECT group_concat(p.amount, ' ') FROM payments p"
        " WHERE p.invoice_number = i.number) FROM invoices i"
    ):
        if debtor_ids is not None and debtor_id not in debtor_ids:
            continue
        owed = Decimal(amount) - sum((Decimal(x) for x in (paid or "").split()), ZERO)
        balance[debtor_id] += max(owed, ZERO)
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
    events: list[EventItem] = []
    with store.transaction() as conn:
        balances = _balances(conn, debtor_ids)
        open_cases = {
            r[0]: r[1]
            for r in conn.execute("SELECT debtor_id, id FROM cases WHERE closed_at IS NULL")
        }
        kinds = dict(conn.execute("SELECT id, kind FROM debtors"))
        for debtor_id, balance in balances.items():
            case_id = open_cases.get(debtor_id)
            if balance > ZERO and case_id is None:
                campaign = profiles[DebtorKind(kinds[debtor_id])].campaign
                cursor = conn.execute(
                    "INSERT INTO cases (debtor_id, status, campaign, opened_at, next_action_at)"
                    " VALUES (?, 'active', ?, ?, ?)",
                    (debtor_id, campaign, stamp, stamp),
                )
                opened += 1
                events.append(
                    (
                        "case_opened",
                        {"campaign": campaign, "balance": str(balance)},
                        cursor.lastrowid,
                        None,
                        debtor_id,
                    )
                )
            elif balance == ZERO and case_id is not None:
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
                resolved += 1
                events.append(
                    ("case_resolved", {"reason": "paid in full"}, case_id, None, debtor_id)
                )
        store.append_events(now, events)
    return opened, resolved


# --- loading ------------------------------------------------------------------------------


def _d(text: str) -> date:
    return date.fromisoformat(text)


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def load_cases(
    store: Store,
    case_ids: Iterable[int] | None = None,
    *,
    include_closed: bool = False,
    chunk: int = 2000,
) -> Iterator[Case]:
    """Cases with their debtor, contacts, invoices and payments, a chunk of debtors at a time."""
    where = "" if include_closed else "WHERE c.closed_at IS NULL"
    ids = None if case_ids is None else list(case_ids)
    if ids is not None:
        where = f"WHERE c.id IN ({', '.join('?' * len(ids))})" if ids else "WHERE 0"
    rows = store.conn.execute(
        "SELECT c.id, c.status, c.paused_until, d.id, d.name, d.kind, d.lang, d.country, d.region, d.timezone"
        f" FROM cases c JOIN debtors d ON d.id = c.debtor_id {where} ORDER BY c.id",
        tuple(ids or ()),
    ).fetchall()
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        debtor_ids = [r[3] for r in part]
        marks = ", ".join("?" * len(debtor_ids))
        contacts: dict[str, list[Contact]] = defaultdict(list)
        for debtor_id, address, status in store.conn.execute(
            f"SELECT debtor_id, address, status FROM contacts WHERE debtor_id IN ({marks}) AND position >= 0 ORDER BY debtor_id, position",
            debtor_ids,
        ):
            contacts[debtor_id].append(Contact(address, ContactStatus(status)))
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
                payments[number].append(Payment(number, _d(paid_on), Decimal(amount)))
        for number, debtor_id, currency, amount, issued, due, pdf, link in inv_rows:
            invoices[debtor_id].append(
                Invoice(
                    number,
                    debtor_id,
                    currency,
                    Decimal(amount),
                    _d(issued),
                    _d(due),
                    pdf,
                    link,
                    tuple(payments.get(number, ())),
                )
            )
        for case_id, status, paused_until, debtor_id, name, kind, lang, country, region, tz in part:
            debtor = Debtor(
                debtor_id,
                name,
                DebtorKind(kind),
                lang,
                country,
                region,
                tz,
                tuple(contacts[debtor_id]),
            )
            yield Case(
                case_id, debtor, tuple(invoices[debtor_id]), CaseStatus(status), _dt(paused_until)
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


def case_summary(store: Store) -> list[dict[str, Any]]:
    """One row per case for tables: id, debtor, status, balance."""
    rows = store.query(
        "SELECT c.id, c.status, c.campaign, c.paused_until, d.id AS debtor_id, d.name FROM cases c"
        " JOIN debtors d ON d.id = c.debtor_id ORDER BY c.id"
    )
    return [dict(r) for r in rows]


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
