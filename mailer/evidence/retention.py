"""Retention (GDPR art. 5.1.e, LOPDGDD art. 32): block a closed case, later purge it, on record.

Blocking: ``block_after_years`` after a case is closed it is marked blocked (a
``case_blocked`` event): its data stays, kept only for claims, courts and authorities.
Purging: ``purge_after_years`` after closing, the case's personal data goes:

- the raw bytes of every email out and in (blobs emptied; name and size stay),
- the bodies of the case's events, and of its debtor's ledger events when no other case of that
  debtor is left unpurged (redacted: the body becomes a stub, ``body_sha256`` and ``hash`` stay),
- names, addresses, subjects and free text in the mutable tables (messages, inbound, reviews,
  contacts, the debtor's name); amounts, dates and invoice numbers stay (bookkeeping).

How the purge and the hash chain coexist: since schema 3 each event's hash covers the SHA-256 of
its body, not the body (see ``mailer.store.chain``). The purge first appends one
``retention_purged`` event that records how many events it redacts with the SHA-256 of their id
list, and how many blobs it empties with the SHA-256 of their names; only then are those rows
changed, each pointing back at that event. The database triggers allow exactly this change and
no other. ``mailer evidence verify`` still recomputes every link, and treats a redaction or an
emptied blob that no purge recorded as a break. Events written before schema 3 hash their body
itself and cannot be redacted; a purge leaves them and says how many it left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mailer.config import EvidenceSettings
from mailer.errors import PermanentError
from mailer.store.chain import PURGE_KIND, id_list_digest
from mailer.store.db import Store, iso

PURGED_NAME = "[purged]"


def add_years(moment: datetime, years: int) -> datetime:
    """The same day ``years`` later; 29 February becomes 28 February."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return (moment - timedelta(days=1)).replace(year=moment.year + years)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    case_id: int
    event_id: int
    events_redacted: int
    blobs_emptied: int
    legacy_events_kept: int
    debtor_purged: bool


@dataclass
class RetentionReport:
    blocked: list[int] = field(default_factory=list)
    purged: list[PurgeReport] = field(default_factory=list)


def due(store: Store, evidence: EvidenceSettings, now: datetime) -> tuple[list[int], list[int]]:
    """(cases to block, cases to purge) now: closed long enough, not done yet."""
    to_block: list[int] = []
    to_purge: list[int] = []
    for case_id, closed_at, blocked_at in store.conn.execute(
        "SELECT id, closed_at, blocked_at FROM cases WHERE closed_at IS NOT NULL"
        " AND purged_at IS NULL ORDER BY id"
    ):
        closed = datetime.fromisoformat(closed_at)
        if add_years(closed, evidence.purge_after_years) <= now:
            to_purge.append(int(case_id))
        elif blocked_at is None and add_years(closed, evidence.block_after_years) <= now:
            to_block.append(int(case_id))
    return to_block, to_purge


def apply_retention(store: Store, evidence: EvidenceSettings, now: datetime) -> RetentionReport:
    """Block and purge what is due; each step in its own transaction, each on record."""
    report = RetentionReport()
    to_block, to_purge = due(store, evidence, now)
    for case_id in to_block:
        block_case(store, case_id, now, evidence)
        report.blocked.append(case_id)
    for case_id in to_purge:
        report.purged.append(purge_case(store, case_id, now, "retention period over"))
    return report


def block_case(store: Store, case_id: int, now: datetime, evidence: EvidenceSettings) -> None:
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT debtor_id, closed_at FROM cases WHERE id = ? AND blocked_at IS NULL", (case_id,)
        ).fetchone()
        if row is None or row[1] is None:
            return
        purge_on = add_years(datetime.fromisoformat(row[1]), evidence.purge_after_years)
        conn.execute("UPDATE cases SET blocked_at = ? WHERE id = ?", (iso(now), case_id))
        store.append_event(
            now,
            "case_blocked",
            {"basis": "LOPDGDD art. 32", "purge_on": iso(purge_on)},
            case_id=case_id,
            debtor_id=row[0],
        )


def purge_case(store: Store, case_id: int, now: datetime, reason: str) -> PurgeReport:
    """Purge one closed case's personal data (see the module's docstring for what and how)."""
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT debtor_id, closed_at, purged_at FROM cases WHERE id = ?", (case_id,)
        ).fetchone()
        if row is None:
            raise PermanentError(f"no case {case_id}")
        debtor_id, closed_at, purged_at = row
        if closed_at is None:
            raise PermanentError(f"case {case_id} is still open: only a closed case is purged")
        if purged_at is not None:
            raise PermanentError(f"case {case_id} was already purged on {purged_at}")
        others = conn.execute(
            "SELECT count(*) FROM cases WHERE debtor_id = ? AND id != ? AND purged_at IS NULL",
            (debtor_id, case_id),
        ).fetchone()[0]
        whole_debtor = others == 0
        scope = "case_id = ?"
        args: tuple[object, ...] = (case_id,)
        if whole_debtor:
            scope = "(case_id = ? OR (case_id IS NULL AND debtor_id = ?))"
            args = (case_id, debtor_id)
        ids = [
            int(r[0])
            for r in conn.execute(
                f"SELECT id FROM events WHERE {scope} AND redacted_by IS NULL"
                " AND body_sha256 IS NOT NULL AND kind != ? ORDER BY id",
                (*args, PURGE_KIND),
            )
        ]
        legacy = conn.execute(
            f"SELECT count(*) FROM events WHERE {scope} AND body_sha256 IS NULL", args
        ).fetchone()[0]
        blobs = sorted(
            {
                r[0]
                for r in conn.execute(
                    "SELECT raw_sha256 FROM messages WHERE case_id = ? UNION"
                    " SELECT raw_sha256 FROM inbound WHERE case_id = ?",
                    (case_id, case_id),
                )
                if r[0] is not None
            }
            - _used_elsewhere(store, case_id)
            - {r[0] for r in conn.execute("SELECT sha256 FROM blobs WHERE purged_by IS NOT NULL")}
        )
        purge_id = store.append_event(
            now,
            PURGE_KIND,
            {
                "reason": reason,
                "events": {"count": len(ids), "ids_sha256": id_list_digest(ids)},
                "blobs": {"count": len(blobs), "names_sha256": id_list_digest(blobs)},
                "legacy_events_kept": legacy,
                "debtor_data": whole_debtor,
            },
            case_id=case_id,
            debtor_id=debtor_id,
        )
        conn.executemany(
            "UPDATE events SET redacted_by = ?, body = json_object('at', at, 'kind', kind,"
            " 'case_id', case_id, 'message_id', message_id, 'debtor_id', debtor_id,"
            " 'data', json_object('redacted_by', ?)) WHERE id = ?",
            [(purge_id, purge_id, i) for i in ids],
        )
        conn.executemany(
            "UPDATE blobs SET data = x'', purged_by = ? WHERE sha256 = ?",
            [(purge_id, b) for b in blobs],
        )
        _scrub_rows(store, case_id, debtor_id if whole_debtor else None, now)
    return PurgeReport(case_id, purge_id, len(ids), len(blobs), legacy, whole_debtor)


def _used_elsewhere(store: Store, case_id: int) -> set[str]:
    """Blobs that mail of another case not yet purged, or of no case, also uses."""
    return {
        r[0]
        for r in store.conn.execute(
            "SELECT m.raw_sha256 FROM messages m JOIN cases c ON c.id = m.case_id"
            " WHERE m.case_id != ? AND c.purged_at IS NULL"
            " UNION SELECT i.raw_sha256 FROM inbound i LEFT JOIN cases c ON c.id = i.case_id"
            " WHERE i.case_id IS NOT ? AND c.purged_at IS NULL",
            (case_id, case_id),
        )
    }


def _scrub_rows(store: Store, case_id: int, debtor_id: str | None, now: datetime) -> None:
    """Free text and addresses out of the mutable tables; amounts and dates stay."""
    conn = store.conn
    stamp = iso(now)
    conn.execute(
        "UPDATE messages SET recipients = '[]', subject = '', receipt = NULL, last_error = NULL,"
        " updated_at = ? WHERE case_id = ?",
        (stamp, case_id),
    )
    conn.execute(
        "UPDATE inbound SET from_address = NULL, subject = '', classification = '{}',"
        " error = NULL WHERE case_id = ?",
        (case_id,),
    )
    conn.execute("UPDATE reviews SET text = '' WHERE case_id = ?", (case_id,))
    conn.execute(
        "UPDATE cases SET status_reason = NULL, purged_at = ? WHERE id = ?", (stamp, case_id)
    )
    if debtor_id is None:
        return
    conn.execute(
        "UPDATE debtors SET name = ?, updated_at = ? WHERE id = ?", (PURGED_NAME, stamp, debtor_id)
    )
    conn.execute("DELETE FROM contacts WHERE debtor_id = ?", (debtor_id,))
    conn.execute(
        "UPDATE invoices SET pdf_path = NULL, payment_link = NULL WHERE debtor_id = ?", (debtor_id,)
    )
    conn.execute(
        "UPDATE payments SET reference = NULL WHERE invoice_number IN"
        " (SELECT number FROM invoices WHERE debtor_id = ?)",
        (debtor_id,),
    )


def describe(report: PurgeReport) -> str:
    return json.dumps(
        {
            "case": report.case_id,
            "purge_event": report.event_id,
            "events_redacted": report.events_redacted,
            "blobs_emptied": report.blobs_emptied,
            "legacy_events_kept": report.legacy_events_kept,
            "debtor_data": report.debtor_purged,
        }
    )
