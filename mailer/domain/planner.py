"""Pure planning: which step a case gets next and when, or why it gets nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import NamedTuple

from mailer.domain.calendar import (
    ONE_DAY,
    HolidayCalendar,
    local_wall_to_utc,
    next_slot,
    zone,
)
from mailer.domain.instalments import STEP_BASE
from mailer.domain.models import (
    STEP_TAKEN_STATES,
    ZERO,
    Action,
    Campaign,
    Case,
    CaseStatus,
    ContactStatus,
    DebtorKind,
    HistoryEntry,
    Idle,
    LookAgain,
    MessageState,
    SendStep,
    Step,
)
from mailer.slots import slot_constructor

CAP_PERIOD = ONE_DAY * 30
_send_step = slot_constructor(SendStep)  # one per case in a pass, at half the cost

# Enum members looked up on their class cost ~0.1 µs each in Python 3.11: plan reads these often.
_PAUSED = CaseStatus.PAUSED
_CANCELLED = MessageState.CANCELLED
_REACHABLE = ContactStatus.ACTIVE

# Statuses in which mailer sends nothing, whatever the time: a person or a payment ended it.
_IDLE_STATUSES = {
    CaseStatus.RESOLVED: "resolved",
    CaseStatus.STOPPED: "stopped",
    CaseStatus.HANDED_OVER: "handed over",
    CaseStatus.REVIEW: "waiting for review",
    CaseStatus.INSTALMENTS: "on an instalment plan",  # reminded by the plan, not the campaign
}


class PlanFacts(NamedTuple):
    """All the planner reads of a case: one narrow row, where a Case holds every invoice.

    ``mailer.store.cases.load_plan_facts`` reads these with SQLite doing the sums; ``facts_of``
    derives them from a loaded Case. Both give equal facts for the same stored case. A named
    tuple, not a dataclass: a planning pass builds one per case, and ``_make`` builds it at a
    quarter of a frozen dataclass's cost.
    """

    id: int
    status: CaseStatus
    paused_until: datetime | None  # aware UTC
    anchor: date | None  # due date of the oldest unpaid invoice; None when nothing is owed
    reachable: bool  # some address of the debtor may be mailed (status active)
    kind: DebtorKind  # chooses the campaign (through the compliance profile)
    country: str  # with region: the holiday calendar
    region: str | None
    timezone: str  # IANA: the sending window is the debtor's local time


def facts_of(case: Case) -> PlanFacts:
    """What ``plan`` needs of ``case``."""
    debtor = case.debtor
    # An invoice is unpaid while its payments sum to less than its amount; most have none.
    dues = [
        invoice.due_date
        for invoice in case.invoices
        if (invoice.amount > ZERO if not invoice.payments else not invoice.is_paid)
    ]
    return PlanFacts(
        case.id,
        case.status,
        case.paused_until,
        min(dues) if dues else None,
        any(contact.status is _REACHABLE for contact in debtor.contacts),
        debtor.kind,
        debtor.country,
        debtor.region,
        debtor.timezone,
    )


def plan(
    case: Case,
    campaign: Campaign,
    history: Sequence[HistoryEntry],
    calendar: HolidayCalendar,
    now: datetime,
) -> Action:
    """The next thing to do for ``case``: ``plan_facts`` on what it reads of the case."""
    return plan_facts(facts_of(case), campaign, history, calendar, now)


def plan_facts(
    facts: PlanFacts,
    campaign: Campaign,
    history: Sequence[HistoryEntry],
    calendar: HolidayCalendar,
    now: datetime,
) -> Action:
    """The next thing to do for a case: SendStep (due when ``at <= now``), LookAgain or Idle.

    ``campaign.policy`` must already be effective (clamped to the debtor's compliance profile)
    and its steps indexed 0..n-1 in order. ``history`` is every message of the case: taken
    steps are never planned again, and every entry but a CANCELLED one counts, at its ``at``,
    toward the minimum gap and the 30-day cap.

    Idle when the case is closed, paused with no end, fully paid, has no address that may be
    mailed (an opt-out is honoured here) or has run out of steps; LookAgain at the end of a
    pause. Otherwise the next step goes at the first slot after its own date (anchor due date
    plus its offset in business days, at window start), the last message plus the minimum gap,
    the day the 30-day cap frees a place, and ``now``.

    Skip rules: a courtesy step (negative offset) whose slot would fall on or after the anchor
    due date is skipped, whatever was sent before, since "due soon" would then be false. No
    other step is ever skipped: a case first seen long overdue starts at its first step with an
    offset >= 0 and climbs the steps one by one, spaced by the minimum gap, rather than jumping
    to the last one.
    """
    if now.tzinfo is None:
        raise ValueError(f"naive now {now}: pass aware UTC")
    idle_reason = _IDLE_STATUSES.get(facts.status)
    if idle_reason is not None:
        return Idle(idle_reason)
    if facts.status is _PAUSED:
        paused_until = facts.paused_until
        if paused_until is None:
            return Idle("paused until a person resumes it")
        if paused_until > now:
            return LookAgain(paused_until, "paused")
        # A pause that has run out plans as active; the caller flips the status.
    anchor = facts.anchor
    if anchor is None:
        return Idle("paid")
    if not facts.reachable:
        # Opt-outs and hard bounces end here: a refusal is honoured by never planning again.
        return Idle("no address may be mailed")
    policy = campaign.policy
    if policy.max_per_30_days < 1:
        return Idle("the policy allows no messages")

    taken = -1
    earliest = now
    if history:
        times: list[datetime] = []
        for entry in history:
            # An instalment plan's reminders (from STEP_BASE) are not campaign steps: a case
            # back from a plan goes on from the campaign's own last step.
            if entry.state in STEP_TAKEN_STATES and taken < entry.step < STEP_BASE:
                taken = entry.step
            if entry.state is not _CANCELLED:
                times.append(entry.at)
        if times:
            times.sort()
            earliest = max(earliest, times[-1] + ONE_DAY * policy.min_gap_days)
            cap = policy.max_per_30_days
            if len(times) >= cap:
                # The new message comes after all of these; the cap-th latest must be 30 days
                # old.
                earliest = max(earliest, times[-cap] + CAP_PERIOD)

    return _next_send(campaign, calendar, facts.timezone, anchor, taken, earliest)


# The step that goes next and when depend only on these six values, and the cases of a pass
# share them: most have no message waiting out its gap, so ``earliest`` is ``now``, and a ledger
# has few anchor due dates, places and campaigns. So each answer is kept (SendStep and Idle are
# frozen: one object serves every case that asks). Keyed by the identity of the campaign and
# calendar, since hashing a campaign costs more than planning a case; each entry holds both, so
# neither can be freed and its id reused while the entry lives. Cleared whole when full.
_NextKey = tuple[int, int, str, date, int, datetime]
_NEXT: dict[_NextKey, tuple[Campaign, HolidayCalendar, SendStep | Idle]] = {}
_NEXT_MAX = 1 << 15


def _next_send(
    campaign: Campaign,
    calendar: HolidayCalendar,
    tz: str,
    anchor: date,
    taken: int,
    earliest: datetime,
) -> SendStep | Idle:
    """``_first_send``, remembered."""
    key = (id(campaign), id(calendar), tz, anchor, taken, earliest)
    found = _NEXT.get(key)
    if found is not None and found[0] is campaign and found[1] is calendar:
        return found[2]
    action = _first_send(campaign, calendar, tz, anchor, taken, earliest)
    if len(_NEXT) >= _NEXT_MAX:
        _NEXT.clear()
    _NEXT[key] = (campaign, calendar, action)
    return action


def _first_send(
    campaign: Campaign,
    calendar: HolidayCalendar,
    tz: str,
    anchor: date,
    taken: int,
    earliest: datetime,
) -> SendStep | Idle:
    """The first step after ``taken`` with its slot at or after ``earliest`` (equal instants
    give equal answers), or Idle when none is left."""
    policy = campaign.policy
    tzinfo = zone(tz)
    earliest_day = earliest.astimezone(tzinfo).date()
    for step in campaign.steps:
        if step.index <= taken:
            continue
        courtesy = step.offset_days < 0
        if courtesy and earliest_day >= anchor:
            continue
        step_day = calendar.add_business_days(anchor, step.offset_days)
        start = earliest
        if step_day >= earliest_day:
            # Only then can the step's own time be later than ``earliest``: skip the conversion.
            start = max(earliest, local_wall_to_utc(step_day, policy.window_start, tzinfo))
        at = next_slot(start, tz, policy, calendar)
        if courtesy and at.astimezone(tzinfo).date() >= anchor:
            continue
        return _send_step(step, at)
    return _FINISHED


_FINISHED = Idle("campaign finished")


def simulate(
    case: Case,
    campaign: Campaign,
    history: Sequence[HistoryEntry],
    calendar: HolidayCalendar,
    start: datetime,
    end: datetime,
) -> list[tuple[datetime, Step]]:
    """The sends ``plan`` would make from ``start`` until ``end``, each assumed sent on time.

    The case itself does not change: no payment or reply arrives during the simulation.
    """
    known = list(history)
    sends: list[tuple[datetime, Step]] = []
    now = start.astimezone(UTC)
    facts = facts_of(case)
    # Each send takes a step and a pause is waited out once, so this bound is never reached.
    for _ in range(len(campaign.steps) + 2):
        action = plan_facts(facts, campaign, known, calendar, now)
        if isinstance(action, Idle) or action.at >= end:
            break
        if isinstance(action, SendStep):
            sends.append((action.at, action.step))
            known.append(HistoryEntry(action.step.index, action.at, MessageState.SENT))
        now = max(now, action.at)
    return sends
