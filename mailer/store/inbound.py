"""Queries of the inbound side: folder checkpoints, what we sent, contacts, stored mail, reviews."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailer.domain.inbound import CaseFacts, SentRef
from mailer.domain.models import CaseStatus, ContactStatus, DebtorKind
from mailer.store.db import Store, canonical, iso, rows_in


def encode_classification(data: dict[str, Any]) -> str:
    """A classification (``Classification.to_json()``) as the inbound row keeps it: in the
    events' canonical form, so that its event takes the same text (``Canonical``) instead of
    encoding it again. (Rows before 2026-11 have the default spacing: readers parse either.)"""
    return canonical(data)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    uidvalidity: int
    last_uid: int
    updated_at: datetime


def checkpoint(store: Store, identity: str, folder: str) -> Checkpoint | None:
    row = store.conn.execute(
        "SELECT uidvalidity, last_uid, updated_at FROM mailbox_state"
        " WHERE identity = ? AND folder = ?",
        (identity, folder),
    ).fetchone()
    if row is None:
        return None
    return Checkpoint(int(row[0]), int(row[1]), datetime.fromisoformat(row[2]))


def save_checkpoint(
    store: Store, identity: str, folder: str, uidvalidity: int, last_uid: int, now: datetime
) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO mailbox_state (identity, folder, uidvalidity, last_uid, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (identity, folder) DO UPDATE SET"
            " uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid,"
            " updated_at = excluded.updated_at",
            (identity, folder, uidvalidity, last_uid, iso(now)),
        )


def sent_refs(store: Store, message_ids: Iterable[str]) -> dict[str, SentRef]:
    """Which of these Message-IDs are ours, with what the inbound side needs of each."""
    rows = rows_in(
        store.conn,
        "SELECT id, case_id, message_id, step, resend, recipients, identity FROM messages"
        " WHERE message_id IN ({marks})",
        sorted({m for m in message_ids if m}),
    )
    return {
        message_id: SentRef(
            row_id, case_id, message_id, step, resend, tuple(json.loads(recipients)), identity
        )
        for row_id, case_id, message_id, step, resend, recipients, identity in rows
    }


def contact_cases(store: Store, addresses: Iterable[str]) -> dict[str, int]:
    """Debtor contact address (lower case) → that debtor's case (the open one, else the latest)."""
    wanted = sorted({a.lower() for a in addresses if a})
    found: dict[str, int] = {}
    # Open cases first, through the index of open cases: asked for all cases at once, SQLite
    # reads every case in the store for each look-up.
    for address, case_id in rows_in(
        store.conn,
        "SELECT lower(c.address), k.id FROM contacts c JOIN cases k"
        " ON k.debtor_id = c.debtor_id AND k.closed_at IS NULL"
        " WHERE c.address IN ({marks}) ORDER BY k.id",
        wanted,
    ):
        found[address] = int(case_id)  # the newest open case is written last
    # The rest: addresses of no contact at all (report senders, strangers), and now and then a
    # debtor whose cases are all closed. CROSS JOIN keeps SQLite to this order, contacts first:
    # an address that is no contact reads no case.
    for address, case_id in rows_in(
        store.conn,
        "SELECT lower(c.address), k.id FROM contacts c CROSS JOIN cases k"
        " ON k.debtor_id = c.debtor_id WHERE c.address IN ({marks}) ORDER BY k.id",
        [a for a in wanted if a not in found],
    ):
        found[address] = int(case_id)  # the newest case is written last
    return found


def soft_bounced(store: Store, addresses: Iterable[str]) -> set[str]:
    """Which of these contact addresses (lower case) have soft bounces counted."""
    rows = rows_in(
        store.conn,
        "SELECT address FROM contacts WHERE soft_bounces != 0 AND address IN ({marks})",
        sorted({a.lower() for a in addresses if a}),
    )
    return {r[0].lower() for r in rows}  # Python's lower, as the callers look up


def case_facts(store: Store, case_id: int) -> CaseFacts | None:
    return cases_facts(store, [case_id]).get(case_id)


def cases_facts(store: Store, case_ids: Iterable[int]) -> dict[int, CaseFacts]:
    """``case_facts`` of many cases, read together: case id → facts (absent: no such case)."""
    rows: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows_in(
        store.conn,
        "SELECT k.id, k.status, k.paused_until, d.kind, d.timezone, c.address, c.status,"
        " c.soft_bounces FROM cases k JOIN debtors d ON d.id = k.debtor_id"
        " LEFT JOIN contacts c ON c.debtor_id = k.debtor_id"
        " WHERE k.id IN ({marks}) ORDER BY k.id, c.position, c.id",
        sorted(set(case_ids)),
    ):
        rows.setdefault(row[0], []).append(row)
    found: dict[int, CaseFacts] = {}
    for case_id, case_rows in rows.items():
        _id, status, paused_until, kind, timezone = case_rows[0][:5]
        found[case_id] = CaseFacts(
            case_id=case_id,
            status=CaseStatus(status),
            paused_until=datetime.fromisoformat(paused_until) if paused_until else None,
            debtor_kind=DebtorKind(kind),
            timezone=timezone,
            contacts=tuple(
                (a, ContactStatus(s), int(n)) for *_, a, s, n in case_rows if a is not None
            ),
        )
    return found


def cases_with_pending(store: Store, case_ids: Iterable[int]) -> set[int]:
    """Which of these cases have messages not yet handed to a server: the ones
    ``outbox.cancel_pending`` would withdraw (same states)."""
    rows = rows_in(
        store.conn,
        "SELECT DISTINCT case_id FROM messages"
        " WHERE state IN ('queued', 'deferred', 'awaiting_approval') AND case_id IN ({marks})",
        sorted(set(case_ids)),
    )
    return {int(r[0]) for r in rows}


def handled_bounces(
    store: Store, identity: str, folder: str, validity: int, bodies: Mapping[int, str]
) -> list[int]:
    """Which of these UIDs (→ SHA-256 of the message fetched) are bounce reports about our
    messages, stored and acted on. A UID's row, if any, holds that very message (UIDs are not
    reused within a UIDVALIDITY), so it is looked up by its hash: indexed, where the UIDs are not.
    """
    rows = rows_in(
        store.conn,
        "SELECT uid FROM inbound WHERE identity = ? AND folder = ? AND uidvalidity = ?"
        " AND state = 'handled' AND kind = 'bounce' AND related_message IS NOT NULL"
        " AND raw_sha256 IN ({marks})",
        [digest for _uid, digest in sorted(bodies.items())],
        (identity, folder, validity),
    )
    return sorted(int(r[0]) for r in rows if r[0] is not None and int(r[0]) in bodies)


def already_stored(store: Store, sha256: str, message_id: str | None) -> bool:
    """Seen before, by content or by Message-ID (the same mail fetched again, or delivered twice)."""
    row = store.conn.execute(
        "SELECT 1 FROM inbound WHERE raw_sha256 = ? OR (? IS NOT NULL AND message_id = ?) LIMIT 1",
        (sha256, message_id, message_id),
    ).fetchone()
    return row is not None


def stored_keys(
    store: Store, digests: Iterable[str], message_ids: Iterable[str | None]
) -> tuple[set[str], set[str]]:
    """``already_stored`` for many messages at once: the digests and Message-IDs on file."""
    sql = "SELECT {column} FROM inbound WHERE {column} IN ({{marks}})"
    by_sha = rows_in(store.conn, sql.format(column="raw_sha256"), sorted(set(digests)))
    by_id = rows_in(
        store.conn, sql.format(column="message_id"), sorted({m for m in message_ids if m})
    )
    return {r[0] for r in by_sha}, {r[0] for r in by_id}


def insert(
    store: Store,
    *,
    identity: str,
    folder: str,
    uidvalidity: int | None,
    uid: int | None,
    message_id: str | None,
    sha256: str,
    state: str,
    kind: str,
    case_id: int | None,
    related_message: int | None,
    from_address: str | None,
    subject: str,
    classification: dict[str, Any] | str,
    error: str | None,
    now: datetime,
) -> int:
    """One stored message; ``classification`` as ``to_json()`` gives it, or already encoded
    (``encode_classification``)."""
    cursor = store.conn.execute(
        "INSERT INTO inbound (identity, folder, uidvalidity, uid, message_id, raw_sha256, state,"
        " kind, case_id, related_message, from_address, subject, classification, error,"
        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            identity, folder, uidvalidity, uid, message_id, sha256, state, kind, case_id,
            related_message, from_address, subject[:500],
            classification if isinstance(classification, str)
            else encode_classification(classification), error, iso(now),
        ),
    )  # fmt: skip
    return int(cursor.lastrowid or 0)


def open_review(
    store: Store,
    case_id: int,
    inbound_id: int | None,
    reason: str,
    intent: str | None,
    text: str,
    now: datetime,
) -> int:
    """Put an item in the review queue; the event log records that a person was asked."""
    cursor = store.conn.execute(
        "INSERT INTO reviews (case_id, inbound_id, reason, intent, text, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (case_id, inbound_id, reason, intent, text[:4000], iso(now)),
    )
    review = int(cursor.lastrowid or 0)
    store.append_event(
        now,
        "review_opened",
        {"review_id": review, "reason": reason[:500], "inbound_id": inbound_id, "intent": intent},
        case_id=case_id,
    )
    return review


@dataclass(frozen=True, slots=True)
class ReviewItem:
    id: int
    case_id: int
    debtor_id: str
    debtor_name: str
    case_status: str
    reason: str
    intent: str | None
    text: str
    created_at: datetime
    inbound_id: int | None


def open_reviews(store: Store, case_id: int | None = None) -> list[ReviewItem]:
    sql = (
        "SELECT r.id, r.case_id, d.id, d.name, k.status, r.reason, r.intent, r.text, r.created_at,"
        " r.inbound_id FROM reviews r JOIN cases k ON k.id = r.case_id"
        " JOIN debtors d ON d.id = k.debtor_id WHERE r.resolved_at IS NULL"
    )
    args: tuple[Any, ...] = ()
    if case_id is not None:
        sql += " AND r.case_id = ?"
        args = (case_id,)
    rows = store.conn.execute(sql + " ORDER BY r.created_at, r.id", args).fetchall()
    return [
        ReviewItem(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], datetime.fromisoformat(r[8]), r[9]
        )
        for r in rows
    ]


def close_reviews(store: Store, case_id: int, resolution: str, now: datetime) -> int:
    cursor = store.conn.execute(
        "UPDATE reviews SET resolved_at = ?, resolution = ? WHERE case_id = ?"
        " AND resolved_at IS NULL",
        (iso(now), resolution, case_id),
    )
    return cursor.rowcount
