"""What each outbox message sent through Mailchimp became there: one row per message (schema v5)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailer.store.db import Store, iso

_COLUMNS = (
    "message, channel, address, title, state, remote_id, segment_id, scheduled_for, launched_at,"
    " refusal, outcome, member_status, seen, abuse_seen, next_poll_at, created_at"
)

# States, in order: new → creating (a create was asked for: look it up by title after a crash)
# → created → launching (schedule/send asked for) → launched (Mailchimp has it) → sent (reports
# say it went) → settled (read-back over). Or refused: Mailchimp will not send to the member.
STATES = ("new", "creating", "created", "launching", "launched", "sent", "settled", "refused")


@dataclass(frozen=True, slots=True)
class SendRow:
    message: int  # the outbox row
    channel: str  # "mailchimp" (campaign) or "mandrill" (transactional message)
    address: str
    title: str  # unique: the campaign's title in Mailchimp
    state: str
    remote_id: str | None  # campaign id, or Mandrill message _id
    segment_id: int | None
    scheduled_for: datetime | None
    launched_at: datetime | None
    refusal: str | None  # why Mailchimp would not send: member status, "compliance", …
    outcome: str | None  # what was done about the refusal
    member_status: str | None  # last status read back
    seen: frozenset[str]  # activity already recorded
    abuse_seen: int
    next_poll_at: datetime | None
    created_at: datetime


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _row(r: tuple[Any, ...]) -> SendRow:
    return SendRow(
        message=r[0], channel=r[1], address=r[2], title=r[3], state=r[4], remote_id=r[5],
        segment_id=r[6], scheduled_for=_dt(r[7]), launched_at=_dt(r[8]), refusal=r[9],
        outcome=r[10], member_status=r[11], seen=frozenset(json.loads(r[12])), abuse_seen=r[13],
        next_poll_at=_dt(r[14]), created_at=datetime.fromisoformat(r[15]),
    )  # fmt: skip


def get(store: Store, message: int) -> SendRow | None:
    row = store.conn.execute(
        f"SELECT {_COLUMNS} FROM mailchimp_sends WHERE message = ?", (message,)
    ).fetchone()
    return _row(row) if row else None


def start(
    store: Store, message: int, channel: str, address: str, title: str, now: datetime
) -> SendRow:
    """The message's row, created on its first attempt (kept as it is on later ones)."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO mailchimp_sends (message, channel, address, title, state,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, 'new', ?, ?)",
            (message, channel, address, title, iso(now), iso(now)),
        )
    found = get(store, message)
    assert found is not None
    return found


def update(store: Store, message: int, now: datetime, **fields: Any) -> SendRow:
    """Change columns (committed at once, or with the caller's transaction)."""
    values = []
    for value in fields.values():
        if isinstance(value, datetime):
            value = iso(value)
        elif isinstance(value, frozenset | set):
            value = json.dumps(sorted(value))
        values.append(value)
    assignments = ", ".join(f"{c} = ?" for c in [*fields, "updated_at"])
    with store.transaction() as conn:
        conn.execute(
            f"UPDATE mailchimp_sends SET {assignments} WHERE message = ?",
            (*values, iso(now), message),
        )
    found = get(store, message)
    assert found is not None
    return found


def select(store: Store, where: str, args: tuple[Any, ...] = (), limit: int = 200) -> list[SendRow]:
    rows = store.conn.execute(
        f"SELECT {_COLUMNS} FROM mailchimp_sends WHERE {where} ORDER BY message LIMIT ?",
        (*args, limit),
    )
    return [_row(r) for r in rows]


def due_polls(store: Store, channel: str, now: datetime, limit: int = 50) -> list[SendRow]:
    """Launched messages whose next read-back is due."""
    return select(
        store,
        "channel = ? AND next_poll_at IS NOT NULL AND next_poll_at <= ?",
        (channel, iso(now)),
        limit,
    )
