"""The durable outbox: a message's bytes and Message-ID are stored before the first attempt."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailer.domain.models import MessageState
from mailer.domain.outbox import sources
from mailer.store.db import Store, iso

_COLUMNS = (
    "id, case_id, step, step_name, channel, identity, message_id, state, scheduled_at, recipients,"
    " subject, raw_sha256, in_reply_to, attempts, next_attempt_at, deadline_at, sent_at, copied_at,"
    " copy_attempts, updated_at"
)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    case_id: int
    step: int
    step_name: str
    channel: str
    identity: str
    message_id: str
    state: MessageState
    scheduled_at: datetime
    recipients: tuple[str, ...]  # envelope recipients, receipt copy included
    subject: str
    raw_sha256: str
    in_reply_to: str | None
    attempts: int
    next_attempt_at: datetime | None
    deadline_at: datetime | None
    sent_at: datetime | None
    copied_at: datetime | None
    copy_attempts: int
    updated_at: datetime


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _row(r: Sequence[Any]) -> OutboxMessage:
    return OutboxMessage(
        id=r[0], case_id=r[1], step=r[2], step_name=r[3], channel=r[4], identity=r[5],
        message_id=r[6], state=MessageState(r[7]), scheduled_at=datetime.fromisoformat(r[8]),
        recipients=tuple(json.loads(r[9])), subject=r[10], raw_sha256=r[11], in_reply_to=r[12],
        attempts=r[13], next_attempt_at=_dt(r[14]), deadline_at=_dt(r[15]), sent_at=_dt(r[16]),
        copied_at=_dt(r[17]), copy_attempts=r[18], updated_at=datetime.fromisoformat(r[19]),
    )  # fmt: skip


def enqueue(
    store: Store,
    *,
    case_id: int,
    step: int,
    step_name: str,
    channel: str,
    identity: str,
    message_id: str,
    recipients: Sequence[str],
    subject: str,
    raw: bytes,
    in_reply_to: str | None,
    state: MessageState,
    now: datetime,
    deadline: datetime | None,
    resend: int = 0,
    not_before: datetime | None = None,
) -> int | None:
    """Store the exact bytes and the message row in one transaction; None if the step exists.

    UNIQUE (case_id, step, resend) makes "a step is never planned twice" a database fact, not a
    hope; ``resend`` numbers the copies of a step sent again to another address after a bounce.
    """
    with store.transaction() as conn:
        digest = store.put_blob(raw)
        try:
            cursor = conn.execute(
                "INSERT INTO messages (case_id, step, step_name, channel, identity, message_id,"
                " state, scheduled_at, recipients, subject, raw_sha256, in_reply_to, deadline_at,"
                " next_attempt_at, created_at, updated_at, resend)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    case_id, step, step_name, channel, identity, message_id, state.value, iso(now),
                    json.dumps(list(recipients)), subject, digest, in_reply_to,
                    iso(deadline) if deadline else None, iso(not_before or now), iso(now), iso(now),
                    resend,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError:
            return None
        row_id = int(cursor.lastrowid or 0)
        store.append_event(
            now,
            "message_queued" if state is MessageState.QUEUED else "message_awaiting_approval",
            {
                "message_id": message_id,
                "step": step,
                "step_name": step_name,
                "identity": identity,
                "channel": channel,
                "recipients": list(recipients),
                "subject": subject,
                "sha256": digest,
                "size": len(raw),
                **({"resend": resend} if resend else {}),
            },
            case_id=case_id,
            message_id=row_id,
        )
        return row_id


def move(
    store: Store,
    message: OutboxMessage,
    new: MessageState,
    now: datetime,
    event: str,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Change state if the message is still in a state that may move to ``new``; plus an event.

    Returns False (and changes nothing) when another process moved it first.
    """
    allowed = sources(new)
    assignments = ["state = ?", "updated_at = ?"]
    values: list[Any] = [new.value, iso(now)]
    for column, value in fields.items():
        assignments.append(f"{column} = ?")
        values.append(iso(value) if isinstance(value, datetime) else value)
    with store.transaction() as conn:
        cursor = conn.execute(
            f"UPDATE messages SET {', '.join(assignments)} WHERE id = ?"
            f" AND state IN ({', '.join('?' * len(allowed))})",
            (*values, message.id, *(s.value for s in allowed)),
        )
        if cursor.rowcount != 1:
            return False
        store.append_event(
            now,
            event,
            {
                "message_id": message.message_id,
                "from": message.state.value,
                "to": new.value,
                **(data or {}),
            },
            case_id=message.case_id,
            message_id=message.id,
        )
    return True


def record(
    store: Store,
    message: OutboxMessage,
    now: datetime,
    event: str,
    data: dict[str, Any],
    **fields: Any,
) -> None:
    """An event about a message that does not change its state (e.g. the Sent copy filed)."""
    with store.transaction() as conn:
        if fields:
            assignments = ", ".join(f"{c} = ?" for c in fields)
            values = [iso(v) if isinstance(v, datetime) else v for v in fields.values()]
            conn.execute(f"UPDATE messages SET {assignments} WHERE id = ?", (*values, message.id))
        store.append_event(
            now,
            event,
            {"message_id": message.message_id, **data},
            case_id=message.case_id,
            message_id=message.id,
        )


def select(
    store: Store, where: str, args: tuple[Any, ...] = (), limit: int = 1000
) -> list[OutboxMessage]:
    rows = store.conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY id LIMIT ?", (*args, limit)
    )
    return [_row(r) for r in rows]


def due(store: Store, now: datetime, limit: int = 500) -> list[OutboxMessage]:
    """Queued messages, and deferred ones whose retry time has come."""
    return select(
        store,
        "state IN ('queued', 'deferred') AND (next_attempt_at IS NULL OR next_attempt_at <= ?)",
        (iso(now),),
        limit,
    )


def cancel_pending(
    store: Store, case_id: int, now: datetime, data: dict[str, Any], only_to: str | None = None
) -> int:
    """Withdraw the case's messages not yet handed to a server (all, or those to ``only_to``).

    The planner plans a cancelled step again when the case is next active.
    """
    cancelled = 0
    for message in select(
        store, "case_id = ? AND state IN ('queued', 'deferred', 'awaiting_approval')", (case_id,)
    ):
        if only_to is not None and only_to.lower() not in (r.lower() for r in message.recipients):
            continue
        cancelled += move(store, message, MessageState.CANCELLED, now, "message_cancelled", data)
    return cancelled


def get(store: Store, row_id: int) -> OutboxMessage | None:
    found = select(store, "id = ?", (row_id,), 1)
    return found[0] if found else None


def thread(store: Store, case_id: int) -> tuple[str | None, list[str]]:
    """The Message-ID to reply to (the case's latest sent message) and the References chain."""
    rows = store.conn.execute(
        "SELECT message_id FROM messages WHERE case_id = ? AND state = 'sent' ORDER BY sent_at, id",
        (case_id,),
    ).fetchall()
    ids = [r[0] for r in rows]
    if not ids:
        return None, []
    return ids[-1], ids[:-1]


def raw(store: Store, message: OutboxMessage) -> bytes:
    return store.get_blob(message.raw_sha256)
