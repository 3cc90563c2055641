"""Cases: opened and resolved as the ledger changes, loaded as the planner and commands see them."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
from mailer.domain.planner import PlanFacts
from mailer.ledger import collector_paused
from mailer.slots import slot_constructor
from mailer.store.db import EventItem, Store, iso, rows_in

CHUNK = 1000  # rows looked up or written per statement: memory stays flat however big the file


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EventBuffer:
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


# --- keeping cases in step with the ledger ----------------------------------------------------


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
        events = EventBuffer(store, now)
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


# --- loading -----------------------------------------------------------------------------------

# Positional constructors, fields in their declared order: a full pass builds ~630k objects.
_new_case = slot_constructor(Case)
_new_debtor = slot_constructor(Debtor)
_new_contact = slot_constructor(Contact)
_new_invoice = slot_constructor(Invoice)
_new_payment = slot_constructor(Payment)
_new_entry = slot_constructor(HistoryEntry)

# Enum lookups by value through the class call cost ~1 µs each; loading does ~4 per case.
_CONTACT_STATUS = {s.value: s for s in ContactStatus}
_CASE_STATUS = {s.value: s for s in CaseStatus}
_KIND = {k.value: k for k in DebtorKind}
_MESSAGE_STATE = {s.value: s for s in MessageState}


# One statement each per chunk of cases, every one driven by the cases' primary key: {where}
# is either an id range (a full pass) or an id list (the cases asked for).
_CASES_SQL = (
    "SELECT c.id, c.status, c.paused_until, d.id, d.name, d.kind, d.lang, d.country, d.region,"
    " d.timezone FROM cases c JOIN debtors d ON d.id = c.debtor_id WHERE {where} ORDER BY c.id"
)
_CONTACTS_SQL = (
    "SELECT c.id, t.address, t.status FROM cases c JOIN contacts t ON t.debtor_id = c.debtor_id"
    " WHERE {where} AND t.position >= 0 ORDER BY c.id, t.position"
)
# The debtor id is the case's: not fetched again for every invoice.
_INVOICES_SQL = (
    "SELECT c.id, i.number, i.currency, i.amount, i.issue_date, i.due_date, i.pdf_path,"
    " i.payment_link FROM cases c JOIN invoices i ON i.debtor_id = c.debtor_id"
    " WHERE {where} ORDER BY c.id, i.due_date, i.number"
)
_PAYMENTS_SQL = (
    "SELECT p.invoice_number, p.paid_on, p.amount FROM cases c"
    " JOIN invoices i ON i.debtor_id = c.debtor_id JOIN payments p ON p.invoice_number = i.number"
    " WHERE {where} ORDER BY p.paid_on, p.id"
)


def _case_chunks(
    store: Store, case_ids: Iterable[int] | None, include_closed: bool, chunk: int
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(where, args) selecting each chunk of the cases wanted, in id order."""
    if case_ids is None:
        # Only the ids are read up front; each chunk is then the range between two of them,
        # which SQLite walks on the primary key (no list of 2,000 parameters to bind and sort).
        open_only = "" if include_closed else " AND c.closed_at IS NULL"
        where = "c.id BETWEEN ? AND ?" + open_only
        sql = "SELECT id FROM cases" + ("" if include_closed else " WHERE closed_at IS NULL")
        ids = [r[0] for r in store.conn.execute(sql + " ORDER BY id")]
        for start in range(0, len(ids), chunk):
            yield where, (ids[start], ids[min(start + chunk, len(ids)) - 1])
        return
    # Cases asked for by id are loaded whatever their status.
    wanted = sorted(set(case_ids))
    for start in range(0, len(wanted), chunk):
        part = tuple(wanted[start : start + chunk])
        yield f"c.id IN ({', '.join('?' * len(part))})", part


def load_cases(
    store: Store,
    case_ids: Iterable[int] | None = None,
    *,
    include_closed: bool = False,
    chunk: int = 2000,
) -> Iterator[Case]:
    """Cases with their debtor, contacts, invoices and payments, a chunk of cases at a time.

    Without ``case_ids``: every open case (every case with ``include_closed``). Cases come in id
    order; invoices by due date, then number; contacts in the ledger's order. Each chunk is read
    whole before its first case is yielded: the caller may write to the database in between.
    """
    dates: dict[str, date] = {}  # a ledger has few distinct dates and many rows
    for where, args in _case_chunks(store, case_ids, include_closed, chunk):
        yield from _load_chunk(store, where, args, dates)


def _load_chunk(
    store: Store, where: str, args: tuple[int, ...], dates: dict[str, date]
) -> list[Case]:
    # The collector would rescan the chunk's ~20,000 new objects again and again; they hold
    # no reference cycles, so it is paused while they are built (not while the caller runs).
    with collector_paused():
        return _build_chunk(store.conn, where, args, dates)


def _build_chunk(
    conn: sqlite3.Connection, where: str, args: tuple[int, ...], dates: dict[str, date]
) -> list[Case]:
    cases = conn.execute(_CASES_SQL.format(where=where), args).fetchall()
    if not cases:
        return []
    contacts: defaultdict[int, list[Contact]] = defaultdict(list)
    status_of, new_contact = _CONTACT_STATUS, _new_contact
    for case_id, address, status in conn.execute(_CONTACTS_SQL.format(where=where), args):
        contacts[case_id].append(new_contact(address, status_of[status]))
    payments: defaultdict[str, list[Payment]] = defaultdict(list)
    for number, paid_on, amount in conn.execute(_PAYMENTS_SQL.format(where=where), args):
        payments[number].append(_new_payment(number, _day(dates, paid_on), Decimal(amount)))
    debtor_of = {row[0]: row[3] for row in cases}
    invoices: dict[int, list[Invoice]] = {}
    known_day, new_invoice = dates.get, _new_invoice
    none: tuple[Payment, ...] = ()
    current, debtor_id = 0, ""
    listed: list[Invoice] = []
    # The hot loop of a planning pass (3 rows per case). Rows come grouped by case: the case's
    # list and debtor id are looked up once per case, each distinct date is parsed once.
    for case_id, number, currency, amount, issued, due, pdf, link in conn.execute(
        _INVOICES_SQL.format(where=where), args
    ):
        if case_id != current:
            current, debtor_id, listed = case_id, debtor_of[case_id], []
            invoices[case_id] = listed
        listed.append(
            new_invoice(
                number,
                debtor_id,
                currency,
                Decimal(amount),
                known_day(issued) or _day(dates, issued),
                known_day(due) or _day(dates, due),
                pdf,
                link,
                tuple(payments[number]) if payments and number in payments else none,
            )
        )
    new_debtor, new_case, kinds, statuses = _new_debtor, _new_case, _KIND, _CASE_STATUS
    return [
        new_case(
            case_id,
            new_debtor(
                debtor_id,
                name,
                kinds[kind],
                lang,
                country,
                region,
                tz,
                tuple(contacts.get(case_id, ())),
            ),
            tuple(invoices.get(case_id, ())),
            statuses[status],
            datetime.fromisoformat(paused) if paused else None,
        )
        for case_id, status, paused, debtor_id, name, kind, lang, country, region, tz in cases
    ]


# --- facts: what a planning pass reads ---------------------------------------------------------

# One narrow row per case; SQLite walks each debtor's invoices and contacts in C (indexes
# invoices_debtor_due and contacts_debtor_status, schema 6). An invoice's tag is '0' when it is
# unpaid, NULL when paid, '1' when SQLite cannot tell exactly. The debtor's invoices are walked
# oldest first up to the first with a tag: a '0' gives the anchor due date; for a '1' that
# case's invoices are decided again in Python, in Decimal. Money is decimal text ("1210.00",
# always two decimals: it comes from mailer.domain.money.parse_amount) and is compared in whole
# cents, as integers, never as floats; text of another shape, or too long for a sum of integers
# to hold, gets the '1'.
_CANON = "({0} NOT GLOB '*[^0-9.]*' AND instr({0}, '.') = length({0}) - 2 AND length({0}) <= 15)"
_CENTS = "CAST(replace({0}, '.', '') AS INTEGER)"
_TAG = (
    "CASE WHEN NOT EXISTS (SELECT 1 FROM payments p WHERE p.invoice_number = i.number)"
    " THEN CASE WHEN CAST(i.amount AS REAL) > 0 THEN '0' END"
    " ELSE (SELECT CASE"
    f" WHEN NOT {_CANON.format('i.amount')} OR NOT min({_CANON.format('p.amount')}) THEN '1'"
    f" WHEN {_CENTS.format('i.amount')} > sum({_CENTS.format('p.amount')}) THEN '0' END"
    " FROM payments p WHERE p.invoice_number = i.number) END"
)
FACTS_SQL = (
    "SELECT c.id, c.status, c.paused_until, d.kind, d.country, d.region, d.timezone,"
    f" (SELECT i.due_date || ({_TAG}) FROM invoices i WHERE i.debtor_id = c.debtor_id"
    f" AND ({_TAG}) IS NOT NULL ORDER BY i.due_date LIMIT 1),"
    " EXISTS (SELECT 1 FROM contacts t WHERE t.debtor_id = c.debtor_id AND t.position >= 0"
    " AND t.status = 'active')"
    " FROM cases c JOIN debtors d ON d.id = c.debtor_id WHERE {where} ORDER BY c.id"
)
_PAID_SQL = (
    "SELECT c.id, i.due_date, i.amount, (SELECT group_concat(p.amount, ' ') FROM payments p"
    " WHERE p.invoice_number = i.number) FROM cases c JOIN invoices i ON i.debtor_id = c.debtor_id"
    " WHERE c.id IN ({marks})"
)
_new_facts = PlanFacts._make


def load_plan_facts(
    store: Store,
    case_ids: Iterable[int] | None = None,
    *,
    include_closed: bool = False,
    chunk: int = 2000,
) -> Iterator[PlanFacts]:
    """What the planner needs of each case (``planner.facts_of`` of the loaded Case, exactly).

    Chosen as ``load_cases`` chooses, in the same order, a chunk at a time: without
    ``case_ids`` every open case (every case with ``include_closed``), by id whatever their
    status otherwise. Each chunk is read whole before its first facts are yielded.
    """
    dates: dict[str, date] = {}  # "2026-03-15" and "2026-03-150" alike: few distinct values
    for where, args in _case_chunks(store, case_ids, include_closed, chunk):
        yield from _facts_chunk(store.conn, where, args, dates)


def _facts_chunk(
    conn: sqlite3.Connection, where: str, args: tuple[int, ...], dates: dict[str, date]
) -> list[PlanFacts]:
    rows = conn.execute(FACTS_SQL.format(where=where), args).fetchall()
    statuses, kinds, known_day, new_facts = _CASE_STATUS, _KIND, dates.get, _new_facts
    moment = datetime.fromisoformat
    facts: list[PlanFacts] = []
    undecided: list[int] = []  # positions in ``facts`` whose oldest candidate has payments
    for case_id, status, paused, kind, country, region, tz, oldest, reachable in rows:
        anchor = None
        if oldest is not None:
            anchor = known_day(oldest)
            if anchor is None:
                if oldest[-1] == "1":
                    undecided.append(len(facts))
                else:
                    anchor = dates[oldest] = date.fromisoformat(oldest[:-1])
        facts.append(
            new_facts(
                (
                    case_id,
                    statuses[status],
                    moment(paused) if paused else None,
                    anchor,
                    bool(reachable),
                    kinds[kind],
                    country,
                    region,
                    tz,
                )
            )
        )
    if undecided:
        anchors = _paid_anchors(conn, [facts[i].id for i in undecided], dates)
        for i in undecided:
            found = anchors.get(facts[i].id)
            if found is not None:
                facts[i] = facts[i]._replace(anchor=found)
    return facts


def _paid_anchors(
    conn: sqlite3.Connection, case_ids: list[int], dates: dict[str, date]
) -> dict[int, date]:
    """The oldest unpaid due date of each of ``case_ids`` that owes anything, in Decimal."""
    anchors: dict[int, date] = {}
    for case_id, due, amount, paid in rows_in(conn, _PAID_SQL, case_ids):
        owed = Decimal(amount) - sum(map(Decimal, paid.split()), ZERO) if paid else None
        # As Invoice.is_paid: unpaid while the payments sum to less than the amount.
        if (Decimal(amount) > ZERO) if owed is None else owed > ZERO:
            day = _day(dates, due)
            if case_id not in anchors or day < anchors[case_id]:
                anchors[case_id] = day
    return anchors


def _day(dates: dict[str, date], text: str) -> date:
    found = dates.get(text)
    if found is None:
        found = dates[text] = date.fromisoformat(text)
    return found


def load_history(
    store: Store, case_ids: Sequence[int] | None = None
) -> dict[int, list[HistoryEntry]]:
    """What each case's outbox already holds, as the planner sees it."""
    sql = "SELECT case_id, step, coalesce(sent_at, scheduled_at), state FROM messages"
    args: tuple[Any, ...] = ()
    if case_ids is not None:
        sql += f" WHERE case_id IN ({', '.join('?' * len(case_ids))})"
        args = tuple(case_ids)
    history: defaultdict[int, list[HistoryEntry]] = defaultdict(list)
    states, new_entry, moment = _MESSAGE_STATE, _new_entry, datetime.fromisoformat
    for case_id, step, at, state in store.conn.execute(sql + " ORDER BY case_id, step", args):
        history[case_id].append(new_entry(step, moment(at), states[state]))
    return history
