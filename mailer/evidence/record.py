"""One case's record as the export reads it: mails out and in, events, ledger and interest."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from mailer.domain.models import Case, Invoice
from mailer.domain.money import InterestComputation, late_interest
from mailer.store.db import Store
from mailer.store.ledger import load_cases

_EVENT_COLUMNS = (
    "id, at, kind, case_id, message_id, debtor_id, body, body_sha256, prev_hash, hash, redacted_by"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: str
    kind: str
    case_id: int | None
    message_id: int | None
    debtor_id: str | None
    body: str
    body_sha256: str | None
    prev_hash: str
    hash: str
    redacted_by: int | None

    @property
    def data(self) -> dict[str, Any]:
        if self.redacted_by is not None:
            return {}
        data = json.loads(self.body).get("data")
        return data if isinstance(data, dict) else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": self.at, "kind": self.kind, "case_id": self.case_id,
            "message_id": self.message_id, "debtor_id": self.debtor_id, "body": self.body,
            "body_sha256": self.body_sha256, "prev_hash": self.prev_hash, "hash": self.hash,
            "redacted_by": self.redacted_by,
        }  # fmt: skip


def event_rows(store: Store, where: str, args: tuple[Any, ...] = ()) -> list[EventRow]:
    rows = store.conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where} ORDER BY id", args
    )
    return [EventRow(*r) for r in rows]


@dataclass(slots=True)
class Mail:
    """An email of the case, out or in, with where its exact bytes go in the export."""

    direction: str  # "out" or "in"
    row_id: int
    at: datetime  # sent (or created, if never sent) / received
    label: str  # the step's name, or what the incoming mail was found to be
    subject: str
    party: str  # recipients, or the sender
    state: str
    sha256: str | None
    receipt: dict[str, Any] | None = None
    file: str | None = None  # path inside the export, once written

    def file_name(self, number: int) -> str:
        label = _UNSAFE.sub("-", self.label).strip("-")[:40] or "mail"
        return f"{number:03d}-{self.direction}-{self.at:%Y%m%d-%H%M}-{label}.eml"


@dataclass(slots=True)
class CaseRecord:
    case: Case
    campaign: str
    status_reason: str | None
    opened_at: datetime
    closed_at: datetime | None
    blocked_at: datetime | None
    purged_at: datetime | None
    as_of: date
    mails: list[Mail] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    interest: dict[str, InterestComputation | None] = field(default_factory=dict)

    @property
    def invoices(self) -> tuple[Invoice, ...]:
        return self.case.invoices


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def load_record(store: Store, case_id: int, as_of: date, since: datetime | None) -> CaseRecord:
    """Everything the export writes about one case (``since``: only what happened from then)."""
    cases = list(load_cases(store, [case_id], include_closed=True))
    if not cases:
        raise KeyError(case_id)
    case = cases[0]
    row = store.conn.execute(
        "SELECT campaign, status_reason, opened_at, closed_at, blocked_at, purged_at FROM cases"
        " WHERE id = ?",
        (case_id,),
    ).fetchone()
    record = CaseRecord(
        case, row[0], row[1], datetime.fromisoformat(row[2]), _dt(row[3]), _dt(row[4]), _dt(row[5]),
        as_of,
    )  # fmt: skip
    floor = since.isoformat() if since else ""
    for r in store.conn.execute(
        "SELECT id, coalesce(sent_at, created_at), step_name, subject, recipients, state,"
        " raw_sha256, receipt FROM messages WHERE case_id = ? AND coalesce(sent_at, created_at) >= ?"
        " ORDER BY coalesce(sent_at, created_at), id",
        (case_id, floor),
    ):
        receipt = json.loads(r[7]) if r[7] else None
        record.mails.append(
            Mail("out", r[0], datetime.fromisoformat(r[1]), r[2], r[3],
                 ", ".join(json.loads(r[4])), r[5], r[6], receipt)
        )  # fmt: skip
    for r in store.conn.execute(
        "SELECT id, received_at, kind, subject, from_address, state, raw_sha256 FROM inbound"
        " WHERE case_id = ? AND received_at >= ? ORDER BY received_at, id",
        (case_id, floor),
    ):
        record.mails.append(
            Mail("in", r[0], datetime.fromisoformat(r[1]), r[2], r[3], r[4] or "", r[5], r[6])
        )
    record.mails.sort(key=lambda m: (m.at, m.direction != "out", m.row_id))
    record.events = event_rows(
        store,
        "(case_id = ? OR (case_id IS NULL AND debtor_id = ?)) AND at >= ?",
        (case_id, case.debtor.id, floor),
    )
    for invoice in case.invoices:
        try:
            record.interest[invoice.number] = late_interest(invoice, case.debtor.kind, as_of)
        except LookupError:
            record.interest[invoice.number] = None  # no published rate for a day: no figure
    return record
