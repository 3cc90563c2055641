"""What staff read, for `mailer case`/`review` and the review page: case sheet, queue, identities."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from mailer.config import Settings
from mailer.domain.blocking import Health
from mailer.domain.calendar import local_wall_to_utc, zone
from mailer.domain.models import ZERO, Case
from mailer.errors import MailerError
from mailer.store import blocking as store_blocking
from mailer.store import inbound as store_inbound
from mailer.store.blocking import IdentityCounts
from mailer.store.cases import load_cases
from mailer.store.db import Store
from mailer.store.inbound import ReviewItem


def short(text: str, width: int = 90) -> str:
    """One line of at most ``width`` characters: whitespace folded, an ellipsis where cut."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def local_time(moment: datetime | str, tz: str) -> str:
    """A stored UTC moment as the creditor reads it: ``YYYY-MM-DD HH:MM`` in ``tz``."""
    when = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return f"{when.astimezone(zone(tz)):%Y-%m-%d %H:%M}"


def promise_end(store: Store, case_id: int, day: date, grace_days: int) -> datetime:
    """A promise to pay on ``day`` pauses the case until local midnight ``grace_days`` after it."""
    facts = store_inbound.case_facts(store, case_id)
    if facts is None:
        raise MailerError(f"no case {case_id}")
    return local_wall_to_utc(day + timedelta(days=grace_days), time(0, 0), zone(facts.timezone))


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    id: int
    at: datetime
    kind: str
    detail: str  # one readable line; the full record is in `mailer evidence export`


@dataclass(frozen=True, slots=True)
class ContactLine:
    address: str
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    number: str
    currency: str
    amount: Decimal
    due_date: date
    paid: Decimal


@dataclass(frozen=True, slots=True)
class CaseSheet:
    """One case as a person reads it: debtor, status, addresses, invoices, timeline, open reviews."""

    id: int
    status: str
    status_reason: str | None
    paused_until: datetime | None
    campaign: str
    closed_at: datetime | None
    debtor_id: str
    debtor_name: str
    debtor_kind: str
    debtor_lang: str
    contacts: tuple[ContactLine, ...]
    invoices: tuple[InvoiceLine, ...]
    balance: Decimal
    currency: str
    timeline: tuple[TimelineEntry, ...]
    reviews: tuple[ReviewItem, ...]
    identity: str | None = None  # writing from (None: the failover pool's first)
    verdict: dict[str, Any] | None = None  # the latest blocking assessment, with its evidence


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _currency(case: Case) -> str:
    # Mixed currencies cannot be added up: a case that owes in two says so rather than lie.
    currencies = sorted({i.currency for i in case.open_invoices} or {"EUR"})
    return "/".join(currencies)


def case_sheet(store: Store, case_id: int) -> CaseSheet:
    head = store.conn.execute(
        "SELECT k.status, k.status_reason, k.paused_until, k.campaign, k.closed_at, d.id, d.name,"
        " d.kind, d.lang, k.identity FROM cases k JOIN debtors d ON d.id = k.debtor_id"
        " WHERE k.id = ?",
        (case_id,),
    ).fetchone()
    loaded = list(load_cases(store, [case_id]))
    if head is None or not loaded:
        raise MailerError(f"no case {case_id}")
    status, reason, paused_until, campaign, closed_at, debtor_id, name, kind, lang, ident = head
    case = loaded[0]
    contacts = tuple(
        ContactLine(address, c_status, c_reason)
        for address, c_status, c_reason in store.conn.execute(
            "SELECT address, status, status_reason FROM contacts WHERE debtor_id = ?"
            " ORDER BY position",
            (debtor_id,),
        )
    )
    events = store.events(case_id)
    verdicts = [e["data"] for e in events if e["kind"] == "blocking_verdict"]
    return CaseSheet(
        identity=ident,
        verdict=verdicts[-1] if verdicts else None,
        id=case_id,
        status=status,
        status_reason=reason,
        paused_until=_when(paused_until),
        campaign=campaign,
        closed_at=_when(closed_at),
        debtor_id=debtor_id,
        debtor_name=name,
        debtor_kind=kind,
        debtor_lang=lang,
        contacts=contacts,
        invoices=tuple(
            InvoiceLine(i.number, i.currency, i.amount, i.due_date, i.paid) for i in case.invoices
        ),
        balance=case.balance,
        currency=_currency(case),
        timeline=tuple(
            TimelineEntry(
                e["id"],
                datetime.fromisoformat(e["at"]),
                e["kind"],
                event_detail(e["kind"], e["data"]),
            )
            for e in events
        ),
        reviews=tuple(store_inbound.open_reviews(store, case_id)),
    )


def event_detail(kind: str, data: dict[str, Any]) -> str:
    """One readable line per event; the full record is in `mailer evidence export`."""
    if kind in ("message_queued", "message_awaiting_approval"):
        return f"{data.get('step_name')} to {', '.join(data.get('recipients', []))}: {data.get('subject')}"
    if kind == "message_sent":
        receipt = data.get("receipt") or {}
        return f"{data.get('message_id')} accepted: {receipt.get('code', '')} {receipt.get('text', '')}".strip()
    if kind == "mail_received":
        c = data.get("classification") or {}
        what = c.get("kind", "?") + (f" ({c['intent']})" if c.get("intent") else "")
        text = c.get("reply_text") or c.get("subject") or ""
        return short(f"{what} from {c.get('from_address') or '?'}: {text}")
    if kind == "blocking_verdict":
        decision = data.get("decision") or {}
        return short(
            f"{data.get('identity')} → {data.get('address')}: {data.get('verdict')} ({data.get('why')});"
            f" {decision.get('action', '')} {decision.get('to', '')}".rstrip()
        )
    if kind == "identity_switched":
        return short(f"{data.get('from')} → {data.get('to')}: {data.get('why')}")
    if kind == "contact_status":
        return short(f"{data.get('address')} → {data.get('status')}: {data.get('reason')}")
    for key in ("reason", "note", "error"):
        if data.get(key):
            return short(str(data[key]))
    return short(json.dumps(data, ensure_ascii=False, default=str))


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A review item with what the person deciding wants beside it: what the debtor owes."""

    item: ReviewItem
    balance: Decimal
    currency: str


def review_queue(store: Store) -> list[QueueRow]:
    items = store_inbound.open_reviews(store)
    cases = {c.id: c for c in load_cases(store, {i.case_id for i in items})}
    rows = []
    for item in items:
        case = cases.get(item.case_id)
        balance, currency = (case.balance, _currency(case)) if case else (ZERO, "")
        rows.append(QueueRow(item, balance, currency))
    return rows


@dataclass(frozen=True, slots=True)
class IdentityRow:
    """How one sending identity fares: its counts, and whether receivers refuse it as such."""

    name: str
    address: str
    counts: IdentityCounts
    health: Health
    in_pool: bool  # failover may move cases to it ([blocking] pool)


def identity_rows(store: Store, settings: Settings, now: datetime) -> list[IdentityRow]:
    """Every configured identity, with mailer/store/blocking.py's counts and verdict."""
    counts = store_blocking.identity_counts(store)
    pool = settings.failover_pool()
    return [
        IdentityRow(
            ident.name,
            ident.address,
            counts.get(ident.name) or IdentityCounts(ident.name, 0, 0, 0, 0, 0, 0),
            store_blocking.health(store, ident.name, settings.blocking, now),
            ident.name in pool,
        )
        for ident in settings.identities
    ]
