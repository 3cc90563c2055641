"""Ledger imports: validated invoices and payments applied in one transaction, as events."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from mailer.domain.models import (
    ZERO,
    CaseStatus,
    ComplianceProfile,
    Debtor,
    DebtorKind,
    Invoice,
)
from mailer.errors import ImportRefusedError
from mailer.ledger import InvoiceRow, PaymentRow, collector_paused
from mailer.store.cases import CHUNK, EventBuffer, sync_cases
from mailer.store.cases import load_cases as load_cases  # moved; still imported from here
from mailer.store.cases import load_history as load_history
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
_INVOICE_KEYS = ("number", *_INVOICE_FIELDS)  # an invoice_added event's data
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
    rows: Iterable[InvoiceRow],
    now: datetime,
    source: str,
    profiles: Mapping[DebtorKind, ComplianceProfile],
) -> ImportReport:
    """Upsert invoices and debtors by their ids; each addition or change is an event.

    ``rows`` may be a stream (``read_invoices``) that raises ImportRefusedError once it has
    read a bad file. Everything here is one transaction, so a refused file imports nothing.
    Rows are written a chunk at a time as they come: memory stays flat however long the file.
    Their events wait until the file has been read whole, so that the import's own event,
    which carries the counts, comes first in the chain: additions are then read back from
    their tables in the order they were added, changes from a temporary table.
    """
    with collector_paused():
        return _import_invoices(store, rows, now, source, profiles)


def _import_invoices(
    store: Store,
    rows: Iterable[InvoiceRow],
    now: datetime,
    source: str,
    profiles: Mapping[DebtorKind, ComplianceProfile],
) -> ImportReport:
    report = ImportReport(source=source)
    stamp = iso(now)
    with store.transaction() as conn:
        # The write lock is held from here: whatever these tables gain has higher rowids.
        before = {t: _last_rowid(conn, t) for t in ("debtors", "invoices")}
        conn.execute("DROP TABLE IF EXISTS temp.import_changes")
        conn.execute(
            "CREATE TEMP TABLE import_changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
            " data TEXT NOT NULL, debtor_id TEXT NOT NULL)"
        )
        debtor_ids: set[str] = set()
        for part in _batches(rows):
            report.rows += len(part)
            first: dict[str, Debtor] = {}
            for row in part:
                if row.debtor.id not in debtor_ids:
                    first.setdefault(row.debtor.id, row.debtor)
            debtor_ids.update(first)
            debtors = list(first.values())
            added, changed = _upsert_debtors(conn, debtors, stamp)
            report.debtors_added, report.debtors_changed = (
                report.debtors_added + added,
                report.debtors_changed + changed,
            )
            _sync_contacts(conn, debtors, stamp)
            added, changed, unchanged = _upsert_invoices(conn, [r.invoice for r in part], stamp)
            report.added, report.changed = report.added + added, report.changed + changed
            report.unchanged += unchanged
        # Read to the end without a refusal: the file is good.
        summary = {"file": source, "kind": "invoices", "rows": report.rows, "added": report.added}
        store.append_events(
            now, [("ledger_import", {**summary, "changed": report.changed}, None, None, None)]
        )
        # Then, a table at a time, what changed and what was added, each in file order.
        events = EventBuffer(store, now)
        _recorded(conn, events, "debtor_changed")
        for debtor in _added_since(conn, "debtors", "id", _DEBTOR_FIELDS, before["debtors"]):
            data = dict(zip(_DEBTOR_FIELDS, debtor[1:], strict=True))
            events.add(("debtor_added", data, None, None, debtor[0]))
        _recorded(conn, events, "contact_added", "contact_removed")
        _recorded(conn, events, "invoice_changed")
        for invoice in _added_since(
            conn, "invoices", "number", _INVOICE_FIELDS, before["invoices"]
        ):
            # One dict per event, straight from the row (300k of them in a big ledger).
            data = dict(zip(_INVOICE_KEYS, invoice, strict=True))
            events.add(("invoice_added", data, None, None, invoice[1]))
        events.flush()
        conn.execute("DROP TABLE temp.import_changes")
        report.cases_opened, report.cases_resolved = sync_cases(store, now, profiles, debtor_ids)
    return report


def _batches(rows: Iterable[InvoiceRow]) -> Iterator[list[InvoiceRow]]:
    batch: list[InvoiceRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _last_rowid(conn: Any, table: str) -> int:
    return int(conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0])


def _upsert_debtors(conn: Any, debtors: Sequence[Debtor], stamp: str) -> tuple[int, int]:
    """(added, changed); each change recorded for its event."""
    keyed = [(d.id, _debtor_values(d)) for d in debtors]
    added, diffs = _upsert(conn, "debtors", "id", _DEBTOR_FIELDS, keyed, stamp)
    _record(conn, [("debtor_changed", diff, debtor_id) for debtor_id, _, diff in diffs])
    return added, len(diffs)


def _upsert_invoices(conn: Any, invoices: Sequence[Invoice], stamp: str) -> tuple[int, int, int]:
    """(added, changed, unchanged); each change recorded for its event."""
    keyed = [(i.number, _invoice_values(i)) for i in invoices]
    added, diffs = _upsert(conn, "invoices", "number", _INVOICE_FIELDS, keyed, stamp)
    _record(
        conn,
        [
            ("invoice_changed", {"number": number, "changes": diff}, values[0])
            for number, values, diff in diffs
        ],
    )
    return added, len(diffs), len(keyed) - added - len(diffs)


def _upsert(
    conn: Any,
    table: str,
    key: str,
    fields: tuple[str, ...],
    keyed: list[tuple[str, tuple[Any, ...]]],
    stamp: str,
) -> tuple[int, list[tuple[str, tuple[Any, ...], dict[str, Any]]]]:
    """Insert the rows ``table`` lacks, update those that differ: (added, [(key, values, diff)])."""
    known = _known(conn, table, key, fields, [ident for ident, _ in keyed])
    inserts, updates, diffs = [], [], []
    for ident, values in keyed:
        old = known.get(ident)
        if old is None:
            inserts.append((ident, *values, stamp, stamp))
        elif old != values:
            updates.append((*values, stamp, ident))
            diff = {f: [o, n] for f, o, n in zip(fields, old, values, strict=True) if o != n}
            diffs.append((ident, values, diff))
    conn.executemany(
        f"INSERT INTO {table} ({key}, {', '.join(fields)}, created_at, updated_at)"
        f" VALUES ({', '.join('?' * (len(fields) + 3))})",
        inserts,
    )
    conn.executemany(
        f"UPDATE {table} SET {', '.join(f + ' = ?' for f in fields)}, updated_at = ?"
        f" WHERE {key} = ?",
        updates,
    )
    return len(inserts), diffs


def _known(conn: Any, table: str, key: str, fields: tuple[str, ...], ids: Sequence[str]) -> Any:
    """{id: stored values} for the ids of one chunk."""
    marks = ", ".join("?" * len(ids))
    sql = f"SELECT {key}, {', '.join(fields)} FROM {table} WHERE {key} IN ({marks})"
    return {r[0]: r[1:] for r in conn.execute(sql, tuple(ids))}


def _record(conn: Any, changes: list[tuple[str, dict[str, Any], str]]) -> None:
    """Keep changes for their events, which wait for the import's own (see import_invoices)."""
    conn.executemany(
        "INSERT INTO temp.import_changes (kind, data, debtor_id) VALUES (?, ?, ?)",
        [(kind, json.dumps(data), debtor_id) for kind, data, debtor_id in changes],
    )


def _recorded(conn: Any, events: EventBuffer, *kinds: str) -> None:
    """The recorded changes of ``kinds`` become events, in the order they were found."""
    marks = ", ".join("?" * len(kinds))
    last = 0
    while True:
        part = conn.execute(
            f"SELECT seq, kind, data, debtor_id FROM temp.import_changes WHERE seq > ?"
            f" AND kind IN ({marks}) ORDER BY seq LIMIT ?",
            (last, *kinds, CHUNK),
        ).fetchall()
        if not part:
            return
        for _, kind, data, debtor_id in part:
            events.add((kind, json.loads(data), None, None, debtor_id))
        last = part[-1][0]


def _added_since(
    conn: Any, table: str, key: str, fields: tuple[str, ...], after: int
) -> Iterator[tuple[Any, ...]]:
    """(key, *fields) of each row added to ``table`` after rowid ``after``, in that order."""
    while True:
        part = conn.execute(
            f"SELECT rowid, {key}, {', '.join(fields)} FROM {table} WHERE rowid > ?"
            " ORDER BY rowid LIMIT ?",
            (after, CHUNK),
        ).fetchall()
        if not part:
            return
        for row in part:
            yield row[1:]
        after = part[-1][0]


def _sync_contacts(conn: Any, debtors: Sequence[Debtor], stamp: str) -> None:
    """Addresses in the ledger keep their status (an opt-out or a hard bounce is never forgotten).

    An address no longer listed keeps its row with position -1, so its history stays readable.
    A debtor's first addresses are not events of their own: its debtor_added event covers them.
    """
    if not debtors:
        return
    existing: dict[str, dict[str, int]] = defaultdict(dict)
    marks = ", ".join("?" * len(debtors))
    for debtor_id, address, position in conn.execute(
        f"SELECT debtor_id, address, position FROM contacts WHERE debtor_id IN ({marks})",
        tuple(d.id for d in debtors),
    ):
        existing[debtor_id][address.lower()] = position
    inserts, moves, changes = [], [], []
    for debtor in debtors:
        known = existing.get(debtor.id, {})
        listed = [c.address for c in debtor.contacts]
        for position, address in enumerate(listed):
            if address not in known:
                inserts.append((debtor.id, address, position, stamp))
                if known:
                    changes.append(("contact_added", {"address": address}, debtor.id))
            elif known[address] != position:
                moves.append((position, stamp, debtor.id, address))
        for address in known:
            if address not in listed and known[address] != -1:
                moves.append((-1, stamp, debtor.id, address))
                changes.append(("contact_removed", {"address": address}, debtor.id))
    conn.executemany(
        "INSERT INTO contacts (debtor_id, address, position, updated_at) VALUES (?, ?, ?, ?)",
        inserts,
    )
    conn.executemany(
        "UPDATE contacts SET position = ?, updated_at = ? WHERE debtor_id = ? AND address = ?",
        moves,
    )
    _record(conn, changes)


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
