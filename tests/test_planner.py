"""The planner: each rule on concrete dates, then properties over random campaigns and cases."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.domain.calendar import HolidayCalendar, in_window, local_wall_to_utc, next_slot
from mailer.domain.instalments import STEP_BASE
from mailer.domain.models import (
    DEFAULT_PROFILES,
    STEP_TAKEN_STATES,
    ZERO,
    Action,
    Campaign,
    Case,
    CaseStatus,
    Contact,
    ContactStatus,
    Debtor,
    DebtorKind,
    HistoryEntry,
    Idle,
    Invoice,
    LookAgain,
    MessageState,
    Payment,
    Policy,
    SendStep,
    Step,
)
from mailer.domain.planner import facts_of, plan, plan_facts, simulate
from mailer.domain.policy import effective_policy

MADRID = "Europe/Madrid"
ES_MD = HolidayCalendar("ES", "MD")
DUE = date(2026, 2, 16)  # a Monday

STEPS = (
    Step(0, "courtesy", -3, "courtesy"),
    Step(1, "due", 0, "due"),
    Step(2, "first", 5, "first"),
    Step(3, "second", 12, "second"),
    Step(4, "final", 25, "final", approval=True),
)
# Business profile over the default policy: Mon-Fri 09:00-18:00, gap 5 days, 4 per 30 days.
POLICY = effective_policy(Policy(), DEFAULT_PROFILES[DebtorKind.BUSINESS])
CAMPAIGN = Campaign("business", "", STEPS, POLICY)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def invoice(number: str, due: date, amount: str = "100.00", paid: str | None = None) -> Invoice:
    payments = () if paid is None else (Payment(number, due, Decimal(paid)),)
    return Invoice(
        number, "d1", "EUR", Decimal(amount), due - timedelta(30), due, payments=payments
    )


def make_case(
    *invoices: Invoice,
    status: CaseStatus = CaseStatus.ACTIVE,
    paused_until: datetime | None = None,
    tz: str = MADRID,
    region: str = "MD",
) -> Case:
    debtor = Debtor(
        "d1", "Acme SL", DebtorKind.BUSINESS, "es", "ES", region, tz, (Contact("a@x.es"),)
    )
    return Case(1, debtor, invoices or (invoice("F-1", DUE),), status, paused_until)


def sent(step: int, at: datetime, state: MessageState = MessageState.SENT) -> HistoryEntry:
    return HistoryEntry(step, at, state)


# --- statuses -------------------------------------------------------------------------------

NOW = utc(2026, 2, 20, 10, 0)  # Friday 11:00 in Madrid, four days overdue


@pytest.mark.parametrize(
    "status",
    [CaseStatus.RESOLVED, CaseStatus.STOPPED, CaseStatus.HANDED_OVER, CaseStatus.REVIEW],
)
def test_closed_statuses_get_nothing(status: CaseStatus) -> None:
    assert isinstance(plan(make_case(status=status), CAMPAIGN, (), ES_MD, NOW), Idle)


def test_pause_with_a_date_looks_again_then() -> None:
    until = utc(2026, 3, 1, 12, 0)
    case = make_case(status=CaseStatus.PAUSED, paused_until=until)
    assert plan(case, CAMPAIGN, (), ES_MD, NOW) == LookAgain(until, "paused")


def test_pause_without_a_date_waits_for_a_person() -> None:
    case = make_case(status=CaseStatus.PAUSED)
    assert isinstance(plan(case, CAMPAIGN, (), ES_MD, NOW), Idle)


def test_a_pause_that_ran_out_plans_as_active() -> None:
    case = make_case(status=CaseStatus.PAUSED, paused_until=NOW - timedelta(hours=1))
    assert plan(case, CAMPAIGN, (), ES_MD, NOW) == SendStep(STEPS[1], NOW)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        plan(make_case(), CAMPAIGN, (), ES_MD, datetime(2026, 2, 20, 10))


# --- payments -------------------------------------------------------------------------------


def test_fully_paid_gets_nothing() -> None:
    case = make_case(invoice("F-1", DUE, paid="100.00"), invoice("F-2", DUE, paid="100.00"))
    assert plan(case, CAMPAIGN, (), ES_MD, NOW) == Idle("paid")


def test_partly_paid_is_still_chased() -> None:
    case = make_case(invoice("F-1", DUE, paid="40.00"))
    assert plan(case, CAMPAIGN, (), ES_MD, NOW) == SendStep(STEPS[1], NOW)


def test_anchor_is_the_oldest_unpaid_invoice() -> None:
    older_paid = invoice("F-0", date(2026, 1, 5), paid="100.00")
    later = invoice("F-1", date(2026, 3, 2))
    case = make_case(older_paid, later)
    # Courtesy notice 3 business days before 2 March, not long overdue from 5 January.
    assert plan(case, CAMPAIGN, (), ES_MD, NOW) == SendStep(STEPS[0], utc(2026, 2, 25, 8, 0))


# --- steps in order, never twice ------------------------------------------------------------


def test_courtesy_notice_before_the_due_date() -> None:
    action = plan(make_case(), CAMPAIGN, (), ES_MD, utc(2026, 2, 1))
    assert action == SendStep(STEPS[0], utc(2026, 2, 11, 8, 0))  # Wednesday 09:00 Madrid


def test_next_step_follows_the_last_taken_one() -> None:
    history = [sent(0, utc(2026, 2, 11, 8, 0))]
    action = plan(make_case(), CAMPAIGN, history, ES_MD, utc(2026, 2, 11, 8, 0))
    assert action == SendStep(STEPS[1], utc(2026, 2, 16, 8, 0))  # exactly the 5-day gap


@pytest.mark.parametrize(
    "state",
    [
        MessageState.AWAITING_APPROVAL,
        MessageState.QUEUED,
        MessageState.SENDING,
        MessageState.DEFERRED,
        MessageState.FAILED,
    ],
)
def test_a_step_in_any_taken_state_is_not_planned_again(state: MessageState) -> None:
    history = [sent(1, utc(2026, 2, 16, 8, 0), state)]
    action = plan(make_case(), CAMPAIGN, history, ES_MD, NOW)
    assert isinstance(action, SendStep)
    assert action.step.index == 2


def test_a_cancelled_step_is_planned_again_and_does_not_count() -> None:
    history = [sent(1, NOW - timedelta(hours=2), MessageState.CANCELLED)]
    assert plan(make_case(), CAMPAIGN, history, ES_MD, NOW) == SendStep(STEPS[1], NOW)


def test_campaign_finished() -> None:
    history = [sent(4, utc(2026, 1, 1))]
    assert plan(make_case(), CAMPAIGN, history, ES_MD, NOW) == Idle("campaign finished")


def test_first_seen_overdue_skips_the_courtesy_notice() -> None:
    assert plan(make_case(), CAMPAIGN, (), ES_MD, NOW) == SendStep(STEPS[1], NOW)


def test_courtesy_notice_too_late_for_the_window_is_skipped() -> None:
    friday_evening = utc(2026, 2, 13, 17, 30)  # 18:30 Madrid: next window is Monday, the due date
    action = plan(make_case(), CAMPAIGN, (), ES_MD, friday_evening)
    assert action == SendStep(STEPS[1], utc(2026, 2, 16, 8, 0))


def test_courtesy_notice_pushed_past_due_by_the_gap_is_skipped() -> None:
    two_notices = Campaign(
        "c",
        "",
        (Step(0, "early", -5, "t"), Step(1, "late", -2, "t"), Step(2, "due", 0, "t")),
        POLICY,
    )
    history = [sent(0, utc(2026, 2, 9, 8, 0))]  # Monday; +5 days is Saturday, then Monday = due
    action = plan(make_case(), two_notices, history, ES_MD, utc(2026, 2, 9, 9, 0))
    assert action == SendStep(two_notices.steps[2], utc(2026, 2, 16, 8, 0))


def test_long_overdue_case_climbs_the_steps_one_gap_at_a_time() -> None:
    start = utc(2026, 4, 20, 10, 0)  # Monday, two months after the due date
    sends = simulate(make_case(), CAMPAIGN, (), ES_MD, start, start + timedelta(days=60))
    assert sends == [
        (start, STEPS[1]),
        (utc(2026, 4, 27, 7, 0), STEPS[2]),  # +5 days is Saturday: Monday 09:00 CEST
        (utc(2026, 5, 4, 7, 0), STEPS[3]),  # Saturday 2 May is also Madrid's holiday
        (utc(2026, 5, 11, 7, 0), STEPS[4]),
    ]


def test_simulate_waits_out_a_pause() -> None:
    until = utc(2026, 3, 2, 12, 0)
    case = make_case(status=CaseStatus.PAUSED, paused_until=until)
    sends = simulate(case, CAMPAIGN, (), ES_MD, NOW, NOW + timedelta(days=30))
    assert sends[0] == (until, STEPS[1])


def test_simulate_stops_at_the_end() -> None:
    assert simulate(make_case(), CAMPAIGN, (), ES_MD, NOW, NOW) == []


# --- gap, cap, holidays, zones --------------------------------------------------------------


def test_minimum_gap_from_the_last_message() -> None:
    history = [sent(1, NOW)]
    action = plan(make_case(), CAMPAIGN, history, ES_MD, utc(2026, 2, 21))
    assert action == SendStep(STEPS[2], NOW + timedelta(days=5))  # Wednesday 11:00 Madrid


def test_a_scheduled_message_counts_toward_the_gap() -> None:
    later = NOW + timedelta(days=2)
    history = [sent(1, later, MessageState.AWAITING_APPROVAL)]
    action = plan(make_case(), CAMPAIGN, history, ES_MD, NOW)
    assert isinstance(action, SendStep)
    assert action.at >= later + timedelta(days=5)


def test_monthly_cap_waits_for_the_oldest_to_age_out() -> None:
    tight = Campaign("c", "", STEPS, Policy(min_gap_days=1, max_per_30_days=2))
    history = [sent(0, utc(2026, 3, 2, 9, 0)), sent(1, utc(2026, 3, 3, 9, 0))]
    action = plan(make_case(), tight, history, ES_MD, utc(2026, 3, 4, 9, 0))
    assert action == SendStep(STEPS[2], utc(2026, 4, 1, 9, 0))


def test_step_on_a_holiday_moves_to_the_next_business_day() -> None:
    case = make_case(invoice("F-1", date(2025, 12, 25)))
    action = plan(case, CAMPAIGN, [sent(0, utc(2025, 12, 1))], ES_MD, utc(2025, 12, 20))
    assert action == SendStep(STEPS[1], utc(2025, 12, 26, 8, 0))


def test_canarias_debtor_gets_mail_at_its_own_nine() -> None:
    case = make_case(tz="Atlantic/Canary", region="CN")
    action = plan(case, CAMPAIGN, (), HolidayCalendar("ES", "CN"), utc(2026, 2, 1))
    assert action == SendStep(STEPS[0], utc(2026, 2, 11, 9, 0))


# --- properties -----------------------------------------------------------------------------

PLACES = [
    ("ES", "MD", MADRID),
    ("ES", "CN", "Atlantic/Canary"),
    ("PT", "20", "Atlantic/Azores"),
    ("GB", "ENG", "Europe/London"),
    ("US", "CA", "America/Los_Angeles"),
]
CALENDARS = {(c, r): HolidayCalendar(c, r) for c, r, _ in PLACES}
SPAN = timedelta(days=150)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    start = draw(st.integers(min_value=0, max_value=22))
    end = draw(st.integers(min_value=start + 1, max_value=23))
    return Policy(
        weekdays=frozenset(draw(st.sets(st.integers(0, 6), min_size=1))),
        window_start=time(start, draw(st.sampled_from([0, 30]))),
        window_end=time(end, 0),
        min_gap_days=draw(st.integers(min_value=0, max_value=10)),
        max_per_30_days=draw(st.integers(min_value=1, max_value=6)),
        skip_holidays=draw(st.booleans()),
    )


@st.composite
def campaigns(draw: st.DrawFn) -> Campaign:
    offsets = sorted(draw(st.lists(st.integers(-10, 40), min_size=1, max_size=7)))
    steps = tuple(Step(i, f"s{i}", off, f"t{i}") for i, off in enumerate(offsets))
    policy = draw(policies())
    if draw(st.booleans()):
        policy = effective_policy(policy, draw(st.sampled_from(list(DEFAULT_PROFILES.values()))))
        if policy.window_start >= policy.window_end:
            policy = effective_policy(Policy(), DEFAULT_PROFILES[DebtorKind.CONSUMER])
    return Campaign("random", "", steps, policy)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    country, region, tz = draw(st.sampled_from(PLACES))
    debtor = Debtor("d", "D", DebtorKind.BUSINESS, "es", country, region, tz, (Contact("d@x"),))
    invoices = []
    for n in range(draw(st.integers(min_value=1, max_value=3))):
        due = draw(st.dates(min_value=date(2025, 6, 1), max_value=date(2027, 6, 1)))
        paid = draw(st.sampled_from([None, "30.00"]))
        invoices.append(invoice(f"F-{n}", due, paid=paid))
    return Case(1, debtor, tuple(invoices))


STARTS = st.datetimes(
    min_value=datetime(2025, 6, 1), max_value=datetime(2027, 6, 1), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(case=cases(), campaign=campaigns(), start=STARTS)
def test_simulated_sends_respect_every_rule(
    case: Case, campaign: Campaign, start: datetime
) -> None:
    policy = campaign.policy
    tz = case.debtor.timezone
    cal = CALENDARS[case.debtor.country, case.debtor.region or ""]
    sends = simulate(case, campaign, (), cal, start, start + SPAN)
    times = [at for at, _ in sends]
    indices = [step.index for _, step in sends]

    assert all(start <= at < start + SPAN for at in times)
    # Never the same step twice, and always in campaign order.
    assert indices == sorted(set(indices))
    # Never two messages closer than the minimum gap.
    gap = timedelta(days=policy.min_gap_days)
    assert all(b - a >= gap for a, b in itertools.pairwise(times))
    # Never on a disallowed weekday, a skipped holiday or outside the window, debtor-local.
    for at in times:
        assert in_window(at, tz, policy, cal)
        local = at.astimezone(ZoneInfo(tz))
        assert local.weekday() in policy.weekdays
        assert policy.window_start <= local.time() < policy.window_end
        if policy.skip_holidays:
            assert not cal.is_holiday(local.date())
    # Never more than the cap in any 30-day window.
    for at in times:
        in_month = [t for t in times if at <= t < at + timedelta(days=30)]
        assert len(in_month) <= policy.max_per_30_days
    # No "due soon" notice on or after the due date.
    anchor = case.anchor_due_date
    assert anchor is not None
    for at, step in sends:
        if step.offset_days < 0:
            assert at.astimezone(ZoneInfo(tz)).date() < anchor


@settings(max_examples=200, deadline=None)
@given(
    case=cases(),
    campaign=campaigns(),
    start=STARTS,
    paid_after=st.timedeltas(min_value=timedelta(0), max_value=SPAN),
)
def test_nothing_after_full_payment(
    case: Case, campaign: Campaign, start: datetime, paid_after: timedelta
) -> None:
    cal = CALENDARS[case.debtor.country, case.debtor.region or ""]
    paid_at = start + paid_after
    before = simulate(case, campaign, (), cal, start, paid_at)
    history = [HistoryEntry(step.index, at, MessageState.SENT) for at, step in before]
    settled = tuple(
        invoice(i.number, i.due_date, amount=str(i.amount), paid=str(i.amount))
        for i in case.invoices
    )
    paid_case = Case(case.id, case.debtor, settled, case.status)
    assert plan(paid_case, campaign, history, cal, paid_at) == Idle("paid")
    assert simulate(paid_case, campaign, history, cal, paid_at, start + SPAN) == []


@settings(max_examples=200, deadline=None)
@given(
    case=cases(),
    campaign=campaigns(),
    now=STARTS,
    status=st.sampled_from(list(CaseStatus)),
    pause=st.timedeltas(min_value=timedelta(days=-10), max_value=timedelta(days=10)),
)
def test_only_active_or_expired_pauses_send(
    case: Case, campaign: Campaign, now: datetime, status: CaseStatus, pause: timedelta
) -> None:
    cal = CALENDARS[case.debtor.country, case.debtor.region or ""]
    paused_until = now + pause if status is CaseStatus.PAUSED and pause else None
    action = plan(Case(1, case.debtor, case.invoices, status, paused_until), campaign, (), cal, now)
    if isinstance(action, SendStep):
        assert status is CaseStatus.ACTIVE or (paused_until is not None and paused_until <= now)
        assert action.at >= now
    elif isinstance(action, LookAgain):
        assert paused_until is not None and action.at == paused_until > now


# --- planning from facts: the same answers as the planner before facts --------------------------


def reference_plan(
    case: Case,
    campaign: Campaign,
    history: Sequence[HistoryEntry],
    calendar: HolidayCalendar,
    now: datetime,
) -> Action:
    """``plan`` as it was before PlanFacts and its memo (verbatim, but for names): the oracle."""
    if now.tzinfo is None:
        raise ValueError(f"naive now {now}: pass aware UTC")
    idle_reason = {
        CaseStatus.RESOLVED: "resolved",
        CaseStatus.STOPPED: "stopped",
        CaseStatus.HANDED_OVER: "handed over",
        CaseStatus.REVIEW: "waiting for review",
        CaseStatus.INSTALMENTS: "on an instalment plan",
    }.get(case.status)
    if idle_reason is not None:
        return Idle(idle_reason)
    if case.status is CaseStatus.PAUSED:
        if case.paused_until is None:
            return Idle("paused until a person resumes it")
        if case.paused_until > now:
            return LookAgain(case.paused_until, "paused")
    dues = [
        invoice.due_date
        for invoice in case.invoices
        if (invoice.amount > ZERO if not invoice.payments else not invoice.is_paid)
    ]
    if not dues:
        return Idle("paid")
    if not any(contact.status is ContactStatus.ACTIVE for contact in case.debtor.contacts):
        return Idle("no address may be mailed")
    policy = campaign.policy
    if policy.max_per_30_days < 1:
        return Idle("the policy allows no messages")
    taken = -1
    times: list[datetime] = []
    for entry in history:
        if entry.state in STEP_TAKEN_STATES and taken < entry.step < STEP_BASE:
            taken = entry.step
        if entry.state is not MessageState.CANCELLED:
            times.append(entry.at)
    earliest = now
    if times:
        times.sort()
        earliest = max(earliest, times[-1] + timedelta(days=policy.min_gap_days))
        cap = policy.max_per_30_days
        if len(times) >= cap:
            earliest = max(earliest, times[-cap] + timedelta(days=30))
    anchor = min(dues)
    tz = case.debtor.timezone
    tzinfo = ZoneInfo(tz)
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
            start = max(earliest, local_wall_to_utc(step_day, policy.window_start, tzinfo))
        at = next_slot(start, tz, policy, calendar)
        if courtesy and at.astimezone(tzinfo).date() >= anchor:
            continue
        return SendStep(step, at)
    return Idle("campaign finished")


def outcome(plan_fn: Callable[[], Action]) -> Action | tuple[str, str]:
    """The answer, or what was raised, compared by type and message."""
    try:
        return plan_fn()
    except (ValueError, OverflowError) as exc:
        return type(exc).__name__, str(exc)


@st.composite
def any_cases(draw: st.DrawFn) -> Case:
    """Cases in any state: payments partial, whole or in parts, addresses refused, pauses."""
    country, region, tz = draw(st.sampled_from(PLACES))
    statuses = st.sampled_from(list(ContactStatus))
    contacts = tuple(
        Contact(f"c{n}@x.example", draw(statuses))
        for n in range(draw(st.integers(min_value=0, max_value=3)))
    )
    kind = draw(st.sampled_from(list(DebtorKind)))
    debtor = Debtor("d", "D", kind, "es", country, region, tz, contacts)
    invoices = []
    for n in range(draw(st.integers(min_value=0, max_value=4))):
        due = draw(st.dates(min_value=date(2025, 6, 1), max_value=date(2027, 6, 1)))
        cents = draw(st.integers(min_value=0, max_value=500_00))
        parts = draw(st.lists(st.integers(min_value=1, max_value=500_00), max_size=3))
        payments = tuple(Payment(f"F-{n}", due, Decimal(p) / 100) for p in parts)
        invoices.append(
            Invoice(f"F-{n}", "d", "EUR", Decimal(cents) / 100, due - timedelta(30), due,
                    payments=payments)
        )  # fmt: skip
    status = draw(st.sampled_from(list(CaseStatus)))
    paused_until = None
    if status is CaseStatus.PAUSED and draw(st.booleans()):
        paused_until = draw(STARTS)
    return Case(1, debtor, tuple(invoices), status, paused_until)


@st.composite
def histories(draw: st.DrawFn, around: datetime) -> list[HistoryEntry]:
    steps = st.one_of(st.integers(min_value=0, max_value=8), st.sampled_from([STEP_BASE + 2]))
    return [
        HistoryEntry(
            draw(steps),
            around
            + timedelta(minutes=draw(st.integers(min_value=-90 * 1440, max_value=20 * 1440))),
            draw(st.sampled_from(list(MessageState))),
        )
        for _ in range(draw(st.integers(min_value=0, max_value=6)))
    ]


@settings(max_examples=400, deadline=None)
@given(case=any_cases(), campaign=campaigns(), now=STARTS, data=st.data())
def test_plan_answers_as_the_planner_before_facts(
    case: Case, campaign: Campaign, now: datetime, data: st.DataObject
) -> None:
    cal = CALENDARS[case.debtor.country, case.debtor.region or ""]
    history = data.draw(histories(now))
    expected = outcome(lambda: reference_plan(case, campaign, history, cal, now))
    assert outcome(lambda: plan(case, campaign, history, cal, now)) == expected
    facts = facts_of(case)
    assert outcome(lambda: plan_facts(facts, campaign, history, cal, now)) == expected
    # Asked again (its answer remembered), and by an equal campaign that is another object.
    assert outcome(lambda: plan_facts(facts, campaign, history, cal, now)) == expected
    twin = replace(campaign, name="twin")
    assert outcome(lambda: plan_facts(facts, twin, history, cal, now)) == expected


@settings(max_examples=100, deadline=None)
@given(case=cases(), campaign=campaigns(), start=STARTS)
def test_simulate_sends_what_the_planner_before_facts_sent(
    case: Case, campaign: Campaign, start: datetime
) -> None:
    cal = CALENDARS[case.debtor.country, case.debtor.region or ""]
    expected: list[tuple[datetime, Step]] = []
    known: list[HistoryEntry] = []
    now = start
    for _ in range(len(campaign.steps) + 2):
        action = reference_plan(case, campaign, known, cal, now)
        if isinstance(action, Idle) or action.at >= start + SPAN:
            break
        if isinstance(action, SendStep):
            expected.append((action.at, action.step))
            known.append(HistoryEntry(action.step.index, action.at, MessageState.SENT))
        now = max(now, action.at)
    assert simulate(case, campaign, (), cal, start, start + SPAN) == expected


def test_a_changed_campaign_is_never_answered_from_memory() -> None:
    case = make_case(invoice("F-1", DUE))
    first = plan(case, CAMPAIGN, (), ES_MD, NOW)
    assert first == SendStep(STEPS[1], NOW)
    # The same question with a campaign whose steps differ: a new answer, not the kept one.
    later = replace(CAMPAIGN, steps=tuple(replace(s, offset_days=s.offset_days + 5) for s in STEPS))
    assert plan(case, later, (), ES_MD, NOW) == reference_plan(case, later, (), ES_MD, NOW)
    assert plan(case, later, (), ES_MD, NOW) != first
    assert plan(case, CAMPAIGN, (), ES_MD, NOW) == first
