"""Time zones by place, holidays, business-day arithmetic and sending slots across DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.domain import calendar as cal_mod
from mailer.domain.calendar import (
    HolidayCalendar,
    in_window,
    is_known_country,
    is_known_region,
    local_wall_to_utc,
    next_slot,
    normalize_region,
    timezone_for,
)
from mailer.domain.models import Policy

MADRID = "Europe/Madrid"
ES_MD = HolidayCalendar("ES", "MD")
ES = HolidayCalendar("ES")
EVERY_DAY = frozenset(range(7))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- places ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "region", "zone"),
    [
        ("ES", None, "Europe/Madrid"),
        ("ES", "MD", "Europe/Madrid"),
        ("ES", "CN", "Atlantic/Canary"),
        ("es", "cn", "Atlantic/Canary"),
        ("ES", "ES-CN", "Atlantic/Canary"),
        ("ES", "", "Europe/Madrid"),
        ("PT", None, "Europe/Lisbon"),
        ("PT", "20", "Atlantic/Azores"),
        ("PT", "30", "Atlantic/Madeira"),
        ("GB", None, "Europe/London"),
        ("GB", "SCT", "Europe/London"),
        ("IE", None, "Europe/Dublin"),
        ("FR", None, "Europe/Paris"),
        ("FR", "974", "Indian/Reunion"),
        ("DE", "BY", "Europe/Berlin"),
        ("IT", None, "Europe/Rome"),
        ("NL", None, "Europe/Amsterdam"),
        ("BE", None, "Europe/Brussels"),
        ("US", None, "America/New_York"),
        ("US", "NY", "America/New_York"),
        ("US", "CA", "America/Los_Angeles"),
        ("US", "TX", "America/Chicago"),
    ],
)
def test_timezone_for(country: str, region: str | None, zone: str) -> None:
    assert timezone_for(country, region) == zone


def test_unknown_country_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown country 'XX'"):
        timezone_for("XX", None)
    assert not is_known_country("XX")
    assert is_known_country("es")


def test_unknown_region_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown region 'ZZ' for country ES: .*MD"):
        timezone_for("ES", "ZZ")
    assert not is_known_region("ES", "ZZ")
    assert is_known_region("ES", "md")
    assert is_known_region("ES", None)
    assert normalize_region("ES", " es-md ") == "MD"


def test_every_zone_in_the_tables_exists_and_every_region_is_known() -> None:
    for country, zone in cal_mod._COUNTRY_TZ.items():
        ZoneInfo(zone)
        assert is_known_country(country), country
    for (country, region), zone in cal_mod._REGION_TZ.items():
        ZoneInfo(zone)
        assert is_known_region(country, region), (country, region)


# --- holidays and business days -------------------------------------------------------------


@pytest.mark.parametrize("day", [date(2025, 12, 25), date(2026, 1, 6), date(2026, 1, 1)])
def test_spanish_national_holidays(day: date) -> None:
    assert ES.is_holiday(day)
    assert ES_MD.is_holiday(day)
    assert not ES.is_business_day(day)


def test_madrid_has_its_own_holiday_on_2_may() -> None:
    day = date(2025, 5, 2)  # a Friday
    assert ES_MD.is_holiday(day)
    assert ES_MD.holiday_name(day)
    assert not ES.is_holiday(day)
    assert ES.is_business_day(day)
    assert not HolidayCalendar("ES", "CT").is_holiday(day)


def test_weekend_is_not_a_business_day() -> None:
    assert not ES.is_business_day(date(2026, 1, 10))  # Saturday
    assert not ES.is_business_day(date(2026, 1, 11))
    assert ES.is_business_day(date(2026, 1, 12))
    assert ES.holiday_name(date(2026, 1, 12)) is None


def test_invalid_calendar_places() -> None:
    with pytest.raises(ValueError, match="unknown region"):
        HolidayCalendar("ES", "XX")
    with pytest.raises(ValueError, match="unknown country"):
        HolidayCalendar("QQ")
    with pytest.raises(ValueError, match="empty span"):
        HolidayCalendar("ES", years=(2030, 2020))


def test_calendars_are_values() -> None:
    assert HolidayCalendar("es", "md") == ES_MD
    assert hash(HolidayCalendar("ES", "MD")) == hash(ES_MD)


@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        (date(2025, 12, 24), 1, date(2025, 12, 26)),  # over Christmas
        (date(2026, 1, 5), 1, date(2026, 1, 7)),  # over Epiphany
        (date(2026, 1, 7), -1, date(2026, 1, 5)),
        (date(2026, 1, 9), 1, date(2026, 1, 12)),  # over a weekend
        (date(2026, 1, 12), -1, date(2026, 1, 9)),
        (date(2026, 1, 10), 1, date(2026, 1, 12)),  # from a Saturday
        (date(2026, 1, 10), -1, date(2026, 1, 9)),
        (date(2026, 1, 10), 0, date(2026, 1, 10)),  # 0 is the day itself, even a Saturday
        (date(2025, 12, 25), 0, date(2025, 12, 25)),
        (date(2025, 12, 31), 2, date(2026, 1, 5)),  # over New Year and a weekend
        (date(2026, 1, 12), -5, date(2026, 1, 2)),  # back over Epiphany and New Year
    ],
)
def test_add_business_days(start: date, n: int, expected: date) -> None:
    assert ES_MD.add_business_days(start, n) == expected


def _walk(cal: HolidayCalendar, d: date, n: int) -> date:
    step = timedelta(days=1 if n > 0 else -1)
    for _ in range(abs(n)):
        d += step
        while not cal.is_business_day(d):
            d += step
    return d


SMALL = HolidayCalendar("ES", "MD", years=(2025, 2026))


@settings(max_examples=200, deadline=None)
@given(
    d=st.dates(min_value=date(2023, 6, 1), max_value=date(2028, 6, 1)),
    n=st.integers(min_value=-60, max_value=60),
)
def test_add_business_days_matches_counting_by_hand(d: date, n: int) -> None:
    # SMALL covers only 2025-2026, so this also exercises the slow path outside its tables.
    assert SMALL.add_business_days(d, n) == _walk(SMALL, d, n)
    assert ES_MD.add_business_days(d, n) == _walk(ES_MD, d, n)
    assert SMALL.is_holiday(d) == ES_MD.is_holiday(d)


# --- sending slots --------------------------------------------------------------------------

OFFICE = Policy()  # Monday-Friday, 09:00-18:00, holidays skipped


def test_slot_inside_the_window_is_immediate() -> None:
    t = utc(2026, 1, 12, 10, 0)  # Monday 11:00 Madrid
    assert next_slot(t, MADRID, OFFICE, ES_MD) == t


def test_before_the_window_waits_for_it() -> None:
    assert next_slot(utc(2026, 1, 12, 5, 0), MADRID, OFFICE, ES_MD) == utc(2026, 1, 12, 8, 0)


def test_quiet_hours_move_to_the_next_morning() -> None:
    # 18:00 Madrid is the end of the window: it is already closed.
    assert next_slot(utc(2026, 1, 12, 17, 0), MADRID, OFFICE, ES_MD) == utc(2026, 1, 13, 8, 0)
    assert next_slot(utc(2026, 1, 12, 16, 59), MADRID, OFFICE, ES_MD) == utc(2026, 1, 12, 16, 59)


def test_weekend_moves_to_monday() -> None:
    assert next_slot(utc(2026, 1, 9, 18, 0), MADRID, OFFICE, ES_MD) == utc(2026, 1, 12, 8, 0)


def test_holidays_are_skipped_unless_the_policy_says_not_to() -> None:
    christmas = utc(2025, 12, 25, 10, 0)
    assert next_slot(christmas, MADRID, OFFICE, ES_MD) == utc(2025, 12, 26, 8, 0)
    keep_holidays = Policy(skip_holidays=False)
    assert next_slot(christmas, MADRID, keep_holidays, ES_MD) == christmas
    # Epiphany (Tuesday) after a Monday evening: Wednesday.
    assert next_slot(utc(2026, 1, 5, 18, 0), MADRID, OFFICE, ES_MD) == utc(2026, 1, 7, 8, 0)


def test_regional_holiday_only_for_that_region() -> None:
    t = utc(2025, 5, 2, 8, 0)
    assert next_slot(t, MADRID, OFFICE, ES) == t
    assert next_slot(t, MADRID, OFFICE, ES_MD) == utc(2025, 5, 5, 7, 0)  # CEST Monday


def test_canarias_is_one_hour_behind_madrid() -> None:
    t = utc(2026, 1, 12, 0, 0)
    assert next_slot(t, MADRID, OFFICE, ES) == utc(2026, 1, 12, 8, 0)
    canarias = HolidayCalendar("ES", "CN")
    assert next_slot(t, "Atlantic/Canary", OFFICE, canarias) == utc(2026, 1, 12, 9, 0)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 3, 28), utc(2026, 3, 28, 8, 0)),  # CET, the day before
        (date(2026, 3, 29), utc(2026, 3, 29, 7, 0)),  # CEST from 02:00
        (date(2026, 10, 24), utc(2026, 10, 24, 7, 0)),
        (date(2026, 10, 25), utc(2026, 10, 25, 8, 0)),  # back to CET at 03:00
    ],
)
def test_window_start_follows_dst(day: date, expected: datetime) -> None:
    every_day = Policy(weekdays=EVERY_DAY, skip_holidays=False)
    midnight = datetime.combine(day, time(0), tzinfo=ZoneInfo(MADRID)).astimezone(UTC)
    assert next_slot(midnight, MADRID, every_day, ES_MD) == expected


def test_window_start_in_the_spring_gap_moves_to_the_end_of_the_gap() -> None:
    night = Policy(
        weekdays=EVERY_DAY, window_start=time(2, 30), window_end=time(6, 0), skip_holidays=False
    )
    got = next_slot(utc(2026, 3, 28, 22, 0), MADRID, night, ES_MD)
    assert got == utc(2026, 3, 29, 1, 0)  # 03:00 CEST: 02:30 never happens that night
    assert got.astimezone(ZoneInfo(MADRID)).time() == time(3, 0)
    assert local_wall_to_utc(date(2026, 3, 29), time(2, 30), ZoneInfo(MADRID)) == got


def test_a_window_inside_the_spring_gap_is_skipped_that_day() -> None:
    gap_only = Policy(
        weekdays=EVERY_DAY, window_start=time(2, 15), window_end=time(2, 45), skip_holidays=False
    )
    got = next_slot(utc(2026, 3, 28, 22, 0), MADRID, gap_only, ES_MD)
    assert got == utc(2026, 3, 30, 0, 15)  # 02:15 CEST on Monday


def test_repeated_autumn_hour() -> None:
    night = Policy(
        weekdays=EVERY_DAY, window_start=time(2, 30), window_end=time(5, 0), skip_holidays=False
    )
    # The first 02:30 (CEST) opens the window.
    assert next_slot(utc(2026, 10, 24, 22, 0), MADRID, night, ES_MD) == utc(2026, 10, 25, 0, 30)
    # 02:10 CET, the second time round: local time is before the window again until 02:30 CET.
    assert next_slot(utc(2026, 10, 25, 1, 10), MADRID, night, ES_MD) == utc(2026, 10, 25, 1, 30)


def test_next_slot_rejects_naive_and_impossible_policies() -> None:
    with pytest.raises(ValueError, match="naive"):
        next_slot(datetime(2026, 1, 12, 10), MADRID, OFFICE, ES_MD)
    with pytest.raises(ValueError, match="never send"):
        next_slot(utc(2026, 1, 12), MADRID, Policy(weekdays=frozenset()), ES_MD)
    with pytest.raises(ValueError, match="never send"):
        next_slot(utc(2026, 1, 12), MADRID, Policy(window_start=time(18)), ES_MD)


ZONES = st.sampled_from(
    [
        (MADRID, ES_MD),
        ("Atlantic/Canary", HolidayCalendar("ES", "CN")),
        ("Europe/London", HolidayCalendar("GB", "ENG")),
        ("America/New_York", HolidayCalendar("US", "NY")),
        ("Atlantic/Azores", HolidayCalendar("PT", "20")),
    ]
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    start = draw(st.integers(min_value=0, max_value=23 * 60 - 1))
    end = draw(st.integers(min_value=start + 1, max_value=24 * 60 - 1))
    return Policy(
        weekdays=frozenset(draw(st.sets(st.integers(0, 6), min_size=1))),
        window_start=time(start // 60, start % 60),
        window_end=time(end // 60, end % 60),
        skip_holidays=draw(st.booleans()),
    )


@settings(max_examples=200, deadline=None)
@given(
    place=ZONES,
    policy=policies(),
    earliest=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
)
def test_next_slot_is_the_first_allowed_instant(
    place: tuple[str, HolidayCalendar], policy: Policy, earliest: datetime
) -> None:
    tz, cal = place
    got = next_slot(earliest, tz, policy, cal)
    assert got >= earliest
    assert got.tzinfo is UTC
    assert in_window(got, tz, policy, cal)
    # Nothing earlier would do: either no wait at all, or the window has just opened.
    if got > earliest:
        assert not in_window(got - timedelta(seconds=1), tz, policy, cal)
