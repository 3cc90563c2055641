"""Instalment plans in the database: rows written once, cancelled by a new plan, never edited."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal

from mailer.domain.calendar import zone
from mailer.domain.instalments import Instalment
from mailer.store.db import Store, iso


def active_plans(store: Store, case_ids: Iterable[int], tz: str) -> dict[int, list[Instalment]]:
    """Each case's current (not cancelled) plan, by seq; ``tz`` dates the day it was agreed."""
    wanted = sorted(set(case_ids))
    plans: defaultdict[int, list[Instalment]] = defaultdict(list)
    if not wanted:
        return plans
    where = zone(tz)
    rows = store.conn.execute(
        "SELECT case_id, seq, due_date, amount, created_at FROM instalments"
        f" WHERE cancelled_at IS NULL AND case_id IN ({', '.join('?' * len(wanted))})"
        " ORDER BY case_id, seq",
        tuple(wanted),
    )
    for case_id, seq, due, amount, created in rows:
        agreed_on = datetime.fromisoformat(created).astimezone(where).date()
        plans[case_id].append(Instalment(seq, date.fromisoformat(due), Decimal(amount), agreed_on))
    return plans


def replace_plan(
    conn: sqlite3.Connection,
    case_id: int,
    schedule: Sequence[tuple[int, date, Decimal]],
    now: datetime,
) -> tuple[list[int], list[int]]:
    """Cancel the case's current plan and write ``schedule`` (numbered 1..n) as the new one.

    The new rows continue the case's seq numbering, so their reminder steps never collide with
    an earlier plan's. Returns (cancelled seqs, new seqs). Call inside a transaction.
    """
    stamp = iso(now)
    cancelled = [
        int(r[0])
        for r in conn.execute(
            "SELECT seq FROM instalments WHERE case_id = ? AND cancelled_at IS NULL ORDER BY seq",
            (case_id,),
        )
    ]
    conn.execute(
        "UPDATE instalments SET cancelled_at = ? WHERE case_id = ? AND cancelled_at IS NULL",
        (stamp, case_id),
    )
    (last,) = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM instalments WHERE case_id = ?", (case_id,)
    ).fetchone()
    seqs = [int(last) + number for number, _, _ in schedule]
    conn.executemany(
        "INSERT INTO instalments (case_id, seq, due_date, amount, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (case_id, seq, due.isoformat(), str(amount), stamp)
            for seq, (_, due, amount) in zip(seqs, schedule, strict=True)
        ],
    )
    return cancelled, seqs
