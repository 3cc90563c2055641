"""Pure planning: which step a case gets next and when, or why it gets nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

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
    Policy,
    SendStep,
    Step,
)

CAP_PERIOD = ONE_DAY * 30

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


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """All the planner reads of a case: one narrow row, where a Case holds every invoice.

    ``mailer.store.cases.load_facts`` reads these with SQLite doing the sums; ``facts_of``
    derives them from a loaded Case. Both give equal facts for the same stored case.
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


def facts_of(case: Case) -> CaseFacts:
    """What ``plan`` needs of ``case``."""
    debtor = case.debtor
    # An invoice is unpaid while its payments sum to less than its amount; most have none.
    dues = [
        invoice.due_date
        for invoice in case.invoices
        if (invoice.amount > ZERO if not invoice.payments else not invoice.is_paid)
    ]
    return CaseFacts(
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
    facts: CaseFacts,
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

    tz = facts.timezone
    tzinfo = zone(tz)
    earliest_day = earliest.astimezone(tzinfo).date()
    for step, row in _step_rows(campaign, calendar, tz, tzinfo, anchor):
        if step.index <= taken:
            continue
        courtesy = step.offset_days < 0
        if courtesy and earliest_day >= anchor:
            continue
        at_day: date | None = None
        if row is None:
            at = _step_slot(step, anchor, earliest, earliest_day, campaign, calendar, tz, tzinfo)
        else:
            step_day, opening, opening_day = row
            if step_day < earliest_day or opening < earliest:
                # Only a step day on or after ``earliest``'s can make its own time the later.
                at = _slot_from(earliest, tz, policy, calendar)
            elif opening_day is not None:
                at, at_day = opening, opening_day  # the step's own time is a slot
            else:
                at = next_slot(opening, tz, policy, calendar)
        if courtesy and (at_day or at.astimezone(tzinfo).date()) >= anchor:
            continue
        return SendStep(step, at)
    return Idle("campaign finished")


# The last slot found from ``earliest`` per (policy, calendar, zone): every case without
# history starts from ``now``, so a planning pass asks the same question over and over.
# Identity keys, as for _STEP_ROWS below.
_LAST_SLOT: dict[tuple[int, int, str], tuple[Policy, HolidayCalendar, datetime, datetime]] = {}


def _slot_from(earliest: datetime, tz: str, policy: Policy, calendar: HolidayCalendar) -> datetime:
    """``next_slot(earliest, tz, policy, calendar)``, remembered for the next equal question."""
    key = (id(policy), id(calendar), tz)
    last = _LAST_SLOT.get(key)
    if last is not None and last[2] == earliest and last[0] is policy and last[1] is calendar:
        return last[3]
    at = next_slot(earliest, tz, policy, calendar)
    if len(_LAST_SLOT) >= _STEP_ROWS_MAX:
        _LAST_SLOT.clear()
    _LAST_SLOT[key] = (policy, calendar, earliest, at)
    return at


def _step_slot(
    step: Step,
    anchor: date,
    earliest: datetime,
    earliest_day: date,
    campaign: Campaign,
    calendar: HolidayCalendar,
    tz: str,
    tzinfo: ZoneInfo,
) -> datetime:
    """The first slot for ``step`` at or after ``earliest``, computed from scratch."""
    policy = campaign.policy
    step_day = calendar.add_business_days(anchor, step.offset_days)
    start = earliest
    if step_day >= earliest_day:
        # Only then can the step's own time be later than ``earliest``: skip the conversion.
        start = max(earliest, local_wall_to_utc(step_day, policy.window_start, tzinfo))
    return next_slot(start, tz, policy, calendar)


# Per step: its day, its window opening that day and, if that opening is a slot, its local day.
# They depend on the campaign, the place and the anchor due date, not on the case's history or
# ``now``, and a ledger's cases share few of those: computed once per (campaign, calendar,
# zone, anchor). Keyed by the identity of the campaign and calendar (hashing a campaign costs
# more than planning a case); each entry holds both, so neither can be freed and its id reused
# while the entry lives. Cleared whole when full.
_StepRow = tuple[Step, tuple[date, datetime, date | None] | None]
_STEP_ROWS: dict[tuple[int, int, str, date], tuple[Campaign, HolidayCalendar, list[_StepRow]]]
_STEP_ROWS = {}
_STEP_ROWS_MAX = 1 << 14


def _step_rows(
    campaign: Campaign, calendar: HolidayCalendar, tz: str, tzinfo: ZoneInfo, anchor: date
) -> list[_StepRow]:
    """One row per step of ``campaign``; None where a value cannot be computed ahead (a date
    out of range, a policy that never sends): the caller then computes it as it comes, and
    fails where and only where that fails."""
    key = (id(campaign), id(calendar), tz, anchor)
    found = _STEP_ROWS.get(key)
    if found is not None and found[0] is campaign and found[1] is calendar:
        return found[2]
    policy = campaign.policy
    rows: list[_StepRow] = []
    for step in campaign.steps:
        try:
            day = calendar.add_business_days(anchor, step.offset_days)
            opening = local_wall_to_utc(day, policy.window_start, tzinfo)
        except (ValueError, OverflowError):
            rows.append((step, None))
            continue
        try:
            is_slot = next_slot(opening, tz, policy, calendar) == opening
        except (ValueError, OverflowError):
            is_slot = False  # next_slot, called for the case, fails as it would have
        rows.append((step, (day, opening, opening.astimezone(tzinfo).date() if is_slot else None)))
    if len(_STEP_ROWS) >= _STEP_ROWS_MAX:
        _STEP_ROWS.clear()
    _STEP_ROWS[key] = (campaign, calendar, rows)
    return rows


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
