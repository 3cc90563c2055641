"""Pure instalment plans: splitting a balance, and which plan reminder a case gets next and when."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from mailer.domain.calendar import (
    ONE_DAY,
    HolidayCalendar,
    local_wall_to_utc,
    next_slot,
    zone,
)
from mailer.domain.models import (
    ZERO,
    Action,
    Case,
    CaseStatus,
    ContactStatus,
    HistoryEntry,
    Idle,
    MessageState,
    Policy,
    SendStep,
    Step,
)

# Plan reminders live far above any campaign's step indices (0..n-1): instalment ``seq`` has a
# "due soon" step 100 + 2*seq and a "missed" step 101 + 2*seq. Seqs only grow within a case
# (a new plan continues the numbering), so UNIQUE (case, step) in the outbox holds across plans.
STEP_BASE = 100
NOTICE_DAYS = 3  # business days before a due date ("due soon") and after it ("missed")
DUE_TEMPLATE = "instalment_due"
MISSED_TEMPLATE = "instalment_missed"
TEMPLATES = (DUE_TEMPLATE, MISSED_TEMPLATE)

# Idle reasons the instalment flow acts on.
COMPLETE = "instalment plan complete"
MISSED_REVIEW = "instalment missed: review"

_CAP_PERIOD = ONE_DAY * 30
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Instalment:
    """One agreed instalment; ``agreed_on`` is the plan's date: payments from then count."""

    seq: int  # unique within the case, across plans
    due_date: date
    amount: Decimal
    agreed_on: date


def split(
    balance: Decimal, n: int, first_due: date, every_days: int
) -> list[tuple[int, date, Decimal]]:
    """``balance`` in ``n`` instalments (number 1..n, due date, amount), ``every_days`` apart.

    Exact to the cent: each instalment is the balance divided by ``n`` rounded down to the
    cent, and the last one takes the remainder, so they always add up to ``balance``.
    ValueError for a balance that is not a positive amount in cents, ``n`` < 1, ``every_days``
    < 1, or fewer cents than instalments.
    """
    if n < 1:
        raise ValueError(f"{n} instalments: at least one is needed")
    if every_days < 1:
        raise ValueError(f"instalments every {every_days} days: at least one day apart")
    if not balance.is_finite() or balance <= ZERO or balance != balance.quantize(_CENT):
        raise ValueError(f"cannot split {balance}: not a positive amount in cents")
    cents = int(balance.scaleb(2))
    if cents < n:
        raise ValueError(f"cannot split {balance} into {n} instalments of at least 0.01")
    each = cents // n
    amounts = [each] * (n - 1) + [cents - each * (n - 1)]
    return [
        (k + 1, first_due + timedelta(days=every_days * k), Decimal(c).scaleb(-2))
        for k, c in enumerate(amounts)
    ]


def steps_for(seq: int) -> tuple[Step, Step]:
    """The "due soon" and "missed" reminder steps of instalment ``seq``."""
    index = STEP_BASE + 2 * seq
    return (
        Step(index, f"instalment-{seq}-due", -NOTICE_DAYS, DUE_TEMPLATE),
        Step(index + 1, f"instalment-{seq}-missed", NOTICE_DAYS, MISSED_TEMPLATE),
    )


def seq_of(step_index: int) -> int | None:
    """The instalment a plan step reminds of; None for a campaign step."""
    return (step_index - STEP_BASE) // 2 if step_index >= STEP_BASE + 2 else None


def paid_toward(case: Case, instalments: Sequence[Instalment]) -> Decimal:
    """Payments on the case's invoices dated on or after the plan's date."""
    if not instalments:
        return ZERO
    since = min(i.agreed_on for i in instalments)
    return sum(
        (p.amount for inv in case.invoices for p in inv.payments if p.paid_on >= since), ZERO
    )


def plan_instalments(
    case: Case,
    instalments: Sequence[Instalment],
    history: Sequence[HistoryEntry],
    calendar: HolidayCalendar,
    policy: Policy,
    now: datetime,
) -> Action:
    """The next plan reminder for ``case``: SendStep (due when ``at <= now``), or Idle.

    Instalment k is covered when what was paid toward the plan reaches the sum of the
    instalments up to k; every instalment after the first uncovered one is uncovered too.
    Reminders go for the first uncovered instalment whose "missed" reminder is not in
    ``history``: "due soon" at the first slot from NOTICE_DAYS business days before its due
    date (skipped if that slot would fall on or after the due date: it would no longer be
    true), then "missed" from NOTICE_DAYS business days after it. A missed instalment thus
    gets its reminder and the plan goes on to the next one.

    A step found in ``history`` in any state is never planned again: taken, or cancelled (the
    outbox keeps one row per step, so it could not go anyway). Like the campaign, sends keep
    the policy's window, minimum gap and 30-day cap, counted over all of the case's messages.

    Idle(COMPLETE) once every instalment is covered; Idle(MISSED_REVIEW) once the last
    instalment's "missed" reminder is in the history and it is still uncovered.
    """
    if now.tzinfo is None:
        raise ValueError(f"naive now {now}: pass aware UTC")
    if case.status is not CaseStatus.INSTALMENTS:
        return Idle("not on an instalment plan")
    plan = sorted(instalments, key=lambda i: i.seq)
    if not plan:
        return Idle("no instalment plan")
    paid = paid_toward(case, plan)
    cumulative = ZERO
    uncovered: list[Instalment] = []
    for instalment in plan:
        cumulative += instalment.amount
        if paid < cumulative:
            uncovered.append(instalment)
    if not uncovered:
        return Idle(COMPLETE)
    if not any(c.status is ContactStatus.ACTIVE for c in case.debtor.contacts):
        return Idle("no address may be mailed")
    if policy.max_per_30_days < 1:
        return Idle("the policy allows no messages")

    known = {entry.step for entry in history}
    earliest = _earliest(history, policy, now)
    tz = case.debtor.timezone
    tzinfo = zone(tz)
    for instalment in uncovered:
        due_soon, missed = steps_for(instalment.seq)
        if missed.index in known:
            continue
        if due_soon.index not in known:
            day = calendar.add_business_days(instalment.due_date, due_soon.offset_days)
            start = max(earliest, local_wall_to_utc(day, policy.window_start, tzinfo))
            at = next_slot(start, tz, policy, calendar)
            if at.astimezone(tzinfo).date() < instalment.due_date:
                return SendStep(due_soon, at)
        day = calendar.add_business_days(instalment.due_date, missed.offset_days)
        start = max(earliest, local_wall_to_utc(day, policy.window_start, tzinfo))
        return SendStep(missed, next_slot(start, tz, policy, calendar))
    return Idle(MISSED_REVIEW)


def _earliest(history: Sequence[HistoryEntry], policy: Policy, now: datetime) -> datetime:
    """``now``, or later as the minimum gap and the 30-day cap require (as planner.plan)."""
    times = sorted(e.at for e in history if e.state is not MessageState.CANCELLED)
    earliest = now
    if times:
        earliest = max(earliest, times[-1] + ONE_DAY * policy.min_gap_days)
        cap = policy.max_per_30_days
        if len(times) >= cap:
            earliest = max(earliest, times[-cap] + _CAP_PERIOD)
    return earliest


def template_values(instalments: Sequence[Instalment], seq: int, paid: Decimal) -> dict[str, Any]:
    """What the instalment templates may use about instalment ``seq`` (see templates/README.md).

    ``number``/``of`` count within the plan (1..n); ``outstanding`` is what is still needed
    to be up to date with this instalment (earlier arrears included), ``remaining`` what is
    left of the whole plan; ``schedule`` lists every instalment and whether it is covered.
    """
    plan = sorted(instalments, key=lambda i: i.seq)
    position = next((k for k, i in enumerate(plan) if i.seq == seq), None)
    if position is None:
        raise ValueError(f"instalment {seq} is not in the plan")
    schedule: list[dict[str, Any]] = []
    cumulative = ZERO
    for number, instalment in enumerate(plan, start=1):
        cumulative += instalment.amount
        schedule.append(
            {
                "number": number,
                "due_date": instalment.due_date,
                "amount": instalment.amount,
                "covered": paid >= cumulative,
            }
        )
    total = cumulative
    up_to = sum((i.amount for i in plan[: position + 1]), ZERO)
    current = plan[position]
    return {
        "number": position + 1,
        "of": len(plan),
        "amount": current.amount,
        "due_date": current.due_date,
        "outstanding": max(up_to - paid, ZERO),
        "paid": min(paid, total),
        "remaining": max(total - paid, ZERO),
        "total": total,
        "schedule": schedule,
    }
