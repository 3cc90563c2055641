"""Compliance profiles: every rule of business and consumer, clamping and policy checks."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from mailer.domain.calendar import HolidayCalendar
from mailer.domain.models import (
    DEFAULT_PROFILES,
    Campaign,
    Case,
    Contact,
    ContactStatus,
    Debtor,
    DebtorKind,
    Idle,
    Invoice,
    Policy,
    SendStep,
    Step,
)
from mailer.domain.planner import plan, simulate
from mailer.domain.policy import (
    campaign_problems,
    effective_policy,
    policy_problems,
    profile_for,
)

BUSINESS = DEFAULT_PROFILES[DebtorKind.BUSINESS]
CONSUMER = DEFAULT_PROFILES[DebtorKind.CONSUMER]
ES_MD = HolidayCalendar("ES", "MD")
MADRID = "Europe/Madrid"

# As loose as a policy can be: every profile rule has to bite on it.
LOOSE = Policy(
    weekdays=frozenset(range(7)),
    window_start=time(0, 0),
    window_end=time(23, 59),
    min_gap_days=0,
    max_per_30_days=30,
    skip_holidays=False,
)


def debtor(kind: DebtorKind, status: ContactStatus = ContactStatus.ACTIVE) -> Debtor:
    return Debtor(
        id="d1",
        name="Ana",
        kind=kind,
        lang="es",
        country="ES",
        region="MD",
        timezone=MADRID,
        contacts=(Contact("ana@example.es", status),),
    )


def overdue_case(kind: DebtorKind, status: ContactStatus = ContactStatus.ACTIVE) -> Case:
    invoice = Invoice("F-1", "d1", "EUR", Decimal("121.00"), date(2026, 1, 1), date(2026, 1, 15))
    return Case(id=1, debtor=debtor(kind, status), invoices=(invoice,))


# Ten steps on consecutive business days: only the profile's gap and cap can space them.
STEPS = tuple(Step(i, f"s{i}", i, f"t{i}") for i in range(10))


def sends_under(kind: DebtorKind) -> list[datetime]:
    profile = DEFAULT_PROFILES[kind]
    campaign = Campaign("loose", "", STEPS, effective_policy(LOOSE, profile))
    start = datetime(2026, 1, 15, tzinfo=UTC)
    sent = simulate(overdue_case(kind), campaign, (), ES_MD, start, start + timedelta(days=90))
    assert len(sent) >= 3
    return [at for at, _ in sent]


# --- the profiles as configured -------------------------------------------------------------


def test_profile_is_chosen_by_debtor_kind() -> None:
    assert profile_for(debtor(DebtorKind.BUSINESS)) is BUSINESS
    assert profile_for(debtor(DebtorKind.CONSUMER)) is CONSUMER
    only_business = {DebtorKind.BUSINESS: BUSINESS}
    assert profile_for(debtor(DebtorKind.CONSUMER), only_business) is BUSINESS


@pytest.mark.parametrize(
    ("kind", "earliest", "latest"),
    [
        (DebtorKind.BUSINESS, time(8), time(20)),
        (DebtorKind.CONSUMER, time(8), time(21)),
    ],
)
def test_sending_hours_rule(kind: DebtorKind, earliest: time, latest: time) -> None:
    profile = DEFAULT_PROFILES[kind]
    assert (profile.earliest, profile.latest) == (earliest, latest)
    clamped = effective_policy(LOOSE, profile)
    assert (clamped.window_start, clamped.window_end) == (earliest, latest)
    for at in sends_under(kind):
        local = at.astimezone(ZoneInfo(MADRID)).time()
        assert earliest <= local < latest


@pytest.mark.parametrize(("kind", "cap"), [(DebtorKind.BUSINESS, 4), (DebtorKind.CONSUMER, 3)])
def test_monthly_cap_rule(kind: DebtorKind, cap: int) -> None:
    assert DEFAULT_PROFILES[kind].max_per_30_days == cap
    assert effective_policy(LOOSE, DEFAULT_PROFILES[kind]).max_per_30_days == cap
    sends = sends_under(kind)
    for at in sends:
        assert sum(at <= other < at + timedelta(days=30) for other in sends) <= cap


def test_consumer_cap_is_lower_than_business() -> None:
    assert CONSUMER.max_per_30_days < BUSINESS.max_per_30_days


@pytest.mark.parametrize(("kind", "gap"), [(DebtorKind.BUSINESS, 3), (DebtorKind.CONSUMER, 5)])
def test_minimum_gap_rule(kind: DebtorKind, gap: int) -> None:
    assert DEFAULT_PROFILES[kind].min_gap_days == gap
    assert effective_policy(LOOSE, DEFAULT_PROFILES[kind]).min_gap_days == gap
    sends = sends_under(kind)
    assert all(b - a >= timedelta(days=gap) for a, b in itertools.pairwise(sends))
    # The gap is what spaces them: the first two are exactly one gap apart.
    assert sends[1] - sends[0] == timedelta(days=gap)


def test_opt_out_line_rule() -> None:
    # Rendering adds the line; the profile is what tells it to.
    assert CONSUMER.opt_out_line is True
    assert BUSINESS.opt_out_line is False


@pytest.mark.parametrize("kind", list(DebtorKind))
@pytest.mark.parametrize("status", [ContactStatus.OPTED_OUT, ContactStatus.UNDELIVERABLE])
def test_opt_out_request_is_honoured(kind: DebtorKind, status: ContactStatus) -> None:
    campaign = Campaign("c", "", STEPS, effective_policy(Policy(), DEFAULT_PROFILES[kind]))
    now = datetime(2026, 1, 20, 10, tzinfo=UTC)
    assert isinstance(plan(overdue_case(kind), campaign, (), ES_MD, now), SendStep)
    assert plan(overdue_case(kind, status), campaign, (), ES_MD, now) == Idle(
        "no address may be mailed"
    )


# --- clamping -------------------------------------------------------------------------------


def test_a_stricter_campaign_is_left_alone() -> None:
    strict = Policy(
        weekdays=frozenset({1, 3}),
        window_start=time(10),
        window_end=time(12),
        min_gap_days=10,
        max_per_30_days=1,
        skip_holidays=True,
    )
    assert effective_policy(strict, BUSINESS) == strict
    assert effective_policy(strict, CONSUMER) == strict


def test_clamping_keeps_weekdays_and_holidays() -> None:
    clamped = effective_policy(LOOSE, CONSUMER)
    assert clamped.weekdays == LOOSE.weekdays
    assert clamped.skip_holidays is False


def test_window_is_intersected_not_replaced() -> None:
    evening = Policy(window_start=time(17), window_end=time(22))
    assert effective_policy(evening, BUSINESS).window_start == time(17)
    assert effective_policy(evening, BUSINESS).window_end == time(20)
    assert effective_policy(evening, CONSUMER).window_end == time(21)


# --- problems for `mailer check` ------------------------------------------------------------


def test_default_policy_has_no_problems() -> None:
    assert policy_problems(Policy()) == []
    assert policy_problems(Policy(), BUSINESS) == []
    assert policy_problems(Policy(), CONSUMER) == []


def test_window_empty_after_clamping() -> None:
    late = Policy(window_start=time(20, 30), window_end=time(23))
    assert policy_problems(late) == []
    assert policy_problems(late, CONSUMER) == []  # 20:30-21:00 is left
    (problem,) = policy_problems(late, BUSINESS)
    assert "20:30-20:00" in problem and "business" in problem


def test_other_policy_problems() -> None:
    assert "no weekday" in policy_problems(Policy(weekdays=frozenset()))[0]
    assert "0 (Monday) to 6" in policy_problems(Policy(weekdays=frozenset({7})))[0]
    assert "max_per_30_days" in policy_problems(Policy(max_per_30_days=0))[0]
    assert "min_gap_days" in policy_problems(Policy(min_gap_days=-1))[0]
    assert "empty" in policy_problems(Policy(window_start=time(9), window_end=time(9)))[0]


def test_campaign_problems() -> None:
    good = Campaign("c", "", (Step(0, "a", -3, "t"), Step(1, "b", 0, "t")), Policy())
    assert campaign_problems(good, BUSINESS) == []
    shuffled = Campaign("c", "", (Step(1, "b", 0, "t"), Step(0, "a", -3, "t")), Policy())
    problems = campaign_problems(shuffled)
    assert any("index 1, expected 0" in p for p in problems)
    assert any("must not decrease" in p for p in problems)
    assert campaign_problems(Campaign("c", "", (), Policy())) == ["the campaign has no steps"]
