"""What staff decide: approve or cancel a held message; resume, stop, pause or agree a plan."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from mailer.domain.instalments import split
from mailer.domain.models import CaseStatus, MessageState
from mailer.errors import MailerError
from mailer.store import outbox
from mailer.store.cases import load_cases
from mailer.store.db import Store, iso
from mailer.store.inbound import close_reviews
from mailer.store.instalments import replace_plan


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


# The statuses ``to_review`` moves to review (closed and stopped cases stay as they are).
REVIEWABLE = frozenset(
    {CaseStatus.ACTIVE, CaseStatus.PAUSED, CaseStatus.REVIEW, CaseStatus.INSTALMENTS}
)


def to_review(
    store: Store,
    case_id: int,
    status: CaseStatus,
    now: datetime,
    reason: str,
    *,
    withdraw: bool = True,
) -> None:
    """Mailer hands a case to a person: review (unless closed or stopped), nothing pending left.

    The one way mailer itself does it (a reply, a refusal, a blocking verdict); ``status`` is
    the case's status as the caller read it in this transaction. ``withdraw`` False: the caller
    knows the case has no message waiting to go, so there is nothing to withdraw.
    """
    if status in REVIEWABLE:
        set_case_status(store, case_id, CaseStatus.REVIEW, now, "mailer", reason[:500])
    if withdraw:
        outbox.cancel_pending(store, case_id, now, {"reason": f"case to review: {reason[:200]}"})


class Resolution(StrEnum):
    RESUME = "resume"
    STOP = "stop"
    PROMISE = "promise"


def resolve(
    store: Store,
    case_id: int,
    how: Resolution,
    now: datetime,
    who: str,
    *,
    until: datetime | None = None,
    note: str = "",
) -> int:
    """A person's decision on a case in review: every open review item is closed by it.

    ``resume`` sends the case back to its campaign now; ``stop`` ends automatic mail (queued
    messages are withdrawn); ``promise`` pauses it until ``until``, then it resumes by itself.
    Returns how many review items were closed.
    """
    if how is Resolution.PROMISE and until is None:
        raise MailerError("a promise needs the date it runs to")
    row = store.conn.execute(
        "SELECT status FROM cases WHERE id = ? AND closed_at IS NULL", (case_id,)
    ).fetchone()
    if row is None:
        raise MailerError(f"no open case {case_id}")
    status, reason = {
        Resolution.RESUME: (CaseStatus.ACTIVE, "resumed by staff"),
        Resolution.STOP: (CaseStatus.STOPPED, "stopped by staff"),
        Resolution.PROMISE: (CaseStatus.PAUSED, "promise recorded by staff"),
    }[how]
    if note:
        reason = f"{reason}: {note}"
    with store.transaction():
        set_case_status(store, case_id, status.value, now, who, reason, until)
        if how is not Resolution.RESUME:
            outbox.cancel_pending(store, case_id, now, {"by": who, "reason": reason})
        if how is Resolution.PROMISE and until is not None:
            store.conn.execute(
                "UPDATE cases SET next_action_at = ? WHERE id = ?", (iso(until), case_id)
            )
        closed = close_reviews(store, case_id, f"{how.value} by {who}", now)
        store.append_event(
            now,
            "case_resolved",
            {"by": who, "how": how.value, "until": iso(until) if until else None,
             "note": note, "reviews_closed": closed},
            case_id=case_id,
        )  # fmt: skip
    return closed


def agree_instalments(
    store: Store,
    case_id: int,
    count: int,
    every_days: int,
    first_due: date | None,
    now: datetime,
    who: str,
) -> list[tuple[int, date, Decimal]]:
    """Put the case on a plan: its balance in ``count`` instalments, ``every_days`` apart.

    The first falls due on ``first_due`` (default: ``every_days`` after today, UTC). The plan's
    reminders (flows/instalments.py) replace the campaign's: anything queued or held for the
    case is withdrawn, open review items are closed, and a plan agreed earlier is cancelled.
    Returns the schedule as (number 1..count, due date, amount).
    """
    if count < 1:
        raise MailerError(f"{count} instalments: at least one is needed")
    if every_days < 1:
        raise MailerError(f"instalments every {every_days} days: at least one day apart")
    today = now.date()
    first = first_due or today + timedelta(days=every_days)
    if first < today:
        raise MailerError(f"the first instalment cannot fall due in the past ({first})")
    with store.transaction() as conn:
        cases = list(load_cases(store, [case_id]))
        row = conn.execute("SELECT closed_at FROM cases WHERE id = ?", (case_id,)).fetchone()
        if not cases or row is None or row[0] is not None:
            raise MailerError(f"no open case {case_id}")
        case = cases[0]
        currencies = {i.currency for i in case.open_invoices}
        if len(currencies) > 1:
            raise MailerError(
                f"case {case_id} owes in several currencies ({', '.join(sorted(currencies))})"
            )
        try:
            schedule = split(case.balance, count, first, every_days)
        except ValueError as exc:
            raise MailerError(f"case {case_id}: {exc}") from exc
        cancelled, seqs = replace_plan(conn, case_id, schedule, now)
        reason = f"instalment plan: {count} every {every_days} days from {first.isoformat()}"
        conn.execute(
            "UPDATE cases SET status = ?, status_reason = ?, paused_until = NULL,"
            " next_action_at = ? WHERE id = ?",
            (CaseStatus.INSTALMENTS.value, reason, iso(now), case_id),
        )
        outbox.cancel_pending(store, case_id, now, {"by": who, "reason": "instalment plan agreed"})
        closed = close_reviews(store, case_id, f"instalment plan agreed by {who}", now)
        store.append_event(
            now,
            "instalments_agreed",
            {
                "by": who,
                "balance": str(case.balance),
                "currency": next(iter(currencies), None),
                "every_days": every_days,
                "schedule": [
                    {"number": n, "seq": seq, "due_date": due.isoformat(), "amount": str(amount)}
                    for seq, (n, due, amount) in zip(seqs, schedule, strict=True)
                ],
                "replaces": cancelled,
                "reviews_closed": closed,
            },
            case_id=case_id,
        )
    return schedule
