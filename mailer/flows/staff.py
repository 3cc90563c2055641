"""What staff decide: approve or cancel a held message, pause, resume or stop a case."""

from __future__ import annotations

from datetime import datetime

from mailer.domain.models import MessageState
from mailer.errors import MailerError
from mailer.store import outbox
from mailer.store.db import Store, iso


def approve(store: Store, row_id: int, now: datetime, who: str) -> None:
    """Let a message held for approval go out at the next tick."""
    message = outbox.get(store, row_id)
    if message is None or message.state is not MessageState.AWAITING_APPROVAL:
        raise MailerError(f"message {row_id} is not waiting for approval")
    outbox.move(
        store,
        message,
        MessageState.QUEUED,
        now,
        "message_approved",
        {"by": who},
        next_attempt_at=now,
    )


def cancel(store: Store, row_id: int, now: datetime, who: str) -> None:
    message = outbox.get(store, row_id)
    if message is None or not outbox.move(
        store, message, MessageState.CANCELLED, now, "message_cancelled", {"by": who}
    ):
        raise MailerError(f"message {row_id} cannot be cancelled now")


def set_case_status(
    store: Store, case_id: int, status: str, now: datetime, who: str, reason: str,
    paused_until: datetime | None = None,
) -> None:  # fmt: skip
    """Pause, resume, stop or send a case to review; the next tick re-plans it."""
    with store.transaction() as conn:
        cursor = conn.execute(
            "UPDATE cases SET status = ?, status_reason = ?, paused_until = ?, next_action_at = ?"
            " WHERE id = ? AND closed_at IS NULL",
            (status, reason, iso(paused_until) if paused_until else None, iso(now), case_id),
        )
        if cursor.rowcount != 1:
            raise MailerError(f"no open case {case_id}")
        store.append_event(
            now,
            f"case_{status}",
            {"by": who, "reason": reason, "until": iso(paused_until) if paused_until else None},
            case_id=case_id,
        )
