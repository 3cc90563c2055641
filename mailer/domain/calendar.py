"""Business days, holidays and sending windows, in the debtor's own time zone."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import holidays

from mailer.domain.models import Policy

ONE_DAY = timedelta(days=1)
_SATURDAY = 5  # date.weekday(): Saturday and Sunday are the weekend everywhere we serve

# Default years a calendar precomputes; dates outside still work, just more slowly.
DEFAULT_YEARS = (2000, 2100)

# A window may be closed for weeks (one allowed weekday plus holidays), never for years: a scan
# longer than this means the policy can never send, which is a configuration error.
_MAX_SCAN_DAYS = 3 * 366

# Country → IANA zone of its capital, for countries whose debtors we can place in time.
_COUNTRY_TZ: dict[str, str] = {
    "AD": "Europe/Andorra",
    "AT": "Europe/Vienna",
    "BE": "Europe/Brussels",
    "BG": "Europe/Sofia",
    "CA": "America/Toronto",
    "CH": "Europe/Zurich",
    "CY": "Asia/Nicosia",
    "CZ": "Europe/Prague",
    "DE": "Europe/Berlin",
    "DK": "Europe/Copenhagen",
    "EE": "Europe/Tallinn",
    "ES": "Europe/Madrid",
    "FI": "Europe/Helsinki",
    "FR": "Europe/Paris",
    "GB": "Europe/London",
    "GI": "Europe/Gibraltar",
    "GR": "Europe/Athens",
    "HR": "Europe/Zagreb",
    "HU": "Europe/Budapest",
    "IE": "Europe/Dublin",
    "IS": "Atlantic/Reykjavik",
    "IT": "Europe/Rome",
    "LI": "Europe/Vaduz",
    "LT": "Europe/Vilnius",
    "LU": "Europe/Luxembourg",
    "LV": "Europe/Riga",
    "MA": "Africa/Casablanca",
    "MC": "Europe/Monaco",
    "MT": "Europe/Malta",
    "NL": "Europe/Amsterdam",
    "NO": "Europe/Oslo",
    "PL": "Europe/Warsaw",
    "PT": "Europe/Lisbon",
    "RO": "Europe/Bucharest",
    "SE": "Europe/Stockholm",
    "SI": "Europe/Ljubljana",
    "SK": "Europe/Bratislava",
    "SM": "Europe/San_Marino",
    "US": "America/New_York",
    "VA": "Europe/Vatican",
}


def _regions(zone: str, codes: str) -> dict[str, str]:
    return dict.fromkeys(codes.split(), zone)


# (country, region) → zone, where a region is not on its country's default time.
_REGION_TZ: dict[tuple[str, str], str] = {
    ("ES", "CN"): "Atlantic/Canary",
    ("PT", "20"): "Atlantic/Azores",
    ("PT", "30"): "Atlantic/Madeira",
    ("FR", "971"): "America/Guadeloupe",
    ("FR", "972"): "America/Martinique",
    ("FR", "973"): "America/Cayenne",
    ("FR", "974"): "Indian/Reunion",
    ("FR", "976"): "Indian/Mayotte",
    **{
        ("US", code): zone
        for zone, codes in (
            ("America/Chicago", "AL AR IA IL KS LA MN MO MS ND NE OK SD TN TX WI"),
            ("America/Denver", "CO ID MT NM UT WY"),
            ("America/Phoenix", "AZ"),
            ("America/Los_Angeles", "CA NV OR WA"),
            ("America/Anchorage", "AK"),
            ("Pacific/Honolulu", "HI"),
            ("America/Puerto_Rico", "PR"),
            ("America/St_Thomas", "VI"),
            ("Pacific/Guam", "GU"),
            ("Pacific/Saipan", "MP"),
            ("Pacific/Pago_Pago", "AS"),
        )
        for code in codes.split()
    },
    **{
        ("CA", code): zone
        for zone, codes in (
            ("America/Vancouver", "BC"),
            ("America/Edmonton", "AB"),
            ("America/Regina", "SK"),
            ("America/Winnipeg", "MB"),
            ("America/Halifax", "NB NS PE"),
            ("America/St_Johns", "NL"),
            ("America/Whitehorse", "YT"),
            ("America/Yellowknife", "NT"),
            ("America/Iqaluit", "NU"),
        )
        for code in codes.split()
    },
}


# --- places: countries, regions, zones ----------------------------------------------------


@lru_cache(maxsize=1)
def _supported() -> dict[str, list[str]]:
    supported: dict[str, list[str]] = holidays.list_supported_countries(include_aliases=False)
    return supported


def is_known_country(country: str) -> bool:
    """True if we know both the time zone and the holidays of ``country`` (ISO 3166-1 alpha-2)."""
    code = country.strip().upper()
    return code in _COUNTRY_TZ and code in _supported()


def supported_regions(country: str) -> tuple[str, ...]:
    """The subdivision codes the holiday data knows for ``country``, e.g. ES → AN, AR, …, MD."""
    return tuple(_supported().get(country.strip().upper(), ()))


def normalize_region(country: str, region: str | None) -> str | None:
    """The canonical spelling of ``region`` ("md", "ES-MD" → "MD"); ValueError if unknown.

    An empty region means "the country as a whole" and gives None.
    """
    code = country.strip().upper()
    if not is_known_country(code):
        raise ValueError(f"unknown country {country!r}: expected one of {sorted(_COUNTRY_TZ)}")
    if region is None or not region.strip():
        return None
    wanted = region.strip().upper().removeprefix(f"{code}-")
    for known in supported_regions(code):
        if known.upper() == wanted:
            return known
    raise ValueError(
        f"unknown region {region!r} for country {code}: expected one of "
        f"{', '.join(supported_regions(code)) or '(none: leave it empty)'}"
    )


def is_known_region(country: str, region: str | None) -> bool:
    """True if ``normalize_region`` accepts the pair (an empty region always is, for a country)."""
    try:
        normalize_region(country, region)
    except ValueError:
        return False
    return True


def timezone_for(country: str, region: str | None) -> str:
    """The IANA zone of a debtor in ``country``/``region``; ValueError if either is unknown."""
    code = country.strip().upper()
    canonical = normalize_region(code, region)
    if canonical is not None and (code, canonical) in _REGION_TZ:
        return _REGION_TZ[code, canonical]
    return _COUNTRY_TZ[code]


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """A cached ZoneInfo: the planner asks for the same few zones millions of times."""
    return ZoneInfo(name)


# --- holidays ------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _holidays(country: str, subdiv: str | None, first: int, last: int) -> Any:
    # Building the holidays object is the slow part (~10-100 ms): once per place and span.
    return holidays.country_holidays(country, subdiv=subdiv, years=range(first, last + 1))


@lru_cache(maxsize=256)
def _tables(
    country: str, subdiv: str | None, first: int, last: int
) -> tuple[frozenset[int], tuple[int, ...], tuple[int, ...]]:
    """Holiday ordinals, business-day ordinals, and for each day the business days before it."""
    days = frozenset(d.toordinal() for d in _holidays(country, subdiv, first, last))
    start, end = date(first, 1, 1).toordinal(), date(last + 1, 1, 1).toordinal()
    business: list[int] = []
    before: list[int] = []
    for ordinal in range(start, end):
        before.append(len(business))
        # Ordinal 1 (0001-01-01) was a Monday, so (ordinal - 1) % 7 is date.weekday().
        if (ordinal - 1) % 7 < _SATURDAY and ordinal not in days:
            business.append(ordinal)
    before.append(len(business))
    return days, tuple(business), tuple(before)


@dataclass(frozen=True, slots=True)
class HolidayCalendar:
    """Public holidays of one country and region, with business-day arithmetic over them.

    Business days are Monday to Friday except holidays. Lookups inside ``years`` are O(1)
    from precomputed tables shared by every calendar of the same place.
    """

    country: str
    subdiv: str | None = None
    years: tuple[int, int] = DEFAULT_YEARS
    _holiday_days: frozenset[int] = field(init=False, repr=False, compare=False)
    _business: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _before: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _base: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        country = self.country.strip().upper()
        subdiv = normalize_region(country, self.subdiv)  # raises ValueError with the choices
        first, last = self.years
        if first > last:
            raise ValueError(f"empty span of years {self.years}")
        object.__setattr__(self, "country", country)
        object.__setattr__(self, "subdiv", subdiv)
        days, business, before = _tables(country, subdiv, first, last)
        object.__setattr__(self, "_holiday_days", days)
        object.__setattr__(self, "_business", business)
        object.__setattr__(self, "_before", before)
        object.__setattr__(self, "_base", date(first, 1, 1).toordinal())

    def is_holiday(self, d: date) -> bool:
        if self.years[0] <= d.year <= self.years[1]:
            return d.toordinal() in self._holiday_days
        return d.toordinal() in _tables(self.country, self.subdiv, d.year, d.year)[0]

    def holiday_name(self, d: date) -> str | None:
        """The holiday's name in the country's language, or None on an ordinary day."""
        first, last = self.years if self.years[0] <= d.year <= self.years[1] else (d.year, d.year)
        name = _holidays(self.country, self.subdiv, first, last).get(d)
        return None if name is None else str(name)

    def is_business_day(self, d: date) -> bool:
        return d.weekday() < _SATURDAY and not self.is_holiday(d)

    def add_business_days(self, d: date, n: int) -> date:
        """The ``n``-th business day after ``d`` (before it if ``n`` < 0), not counting ``d``.

        ``n == 0`` returns ``d`` itself even on a weekend or holiday: an offset of 0 means "on
        the due date", and the sending window then moves it to the next allowed day. So with a
        due date on Saturday, offsets 0 and 1 both end up on Monday's window.
        """
        if n == 0:
            return d
        i = d.toordinal() - self._base
        if 0 <= i < len(self._before) - 1:
            # _before[i + 1] counts business days up to and including d.
            k = self._before[i + 1] + n - 1 if n > 0 else self._before[i] + n
            if 0 <= k < len(self._business):
                return date.fromordinal(self._business[k])
        return self._walk(d, n)

    def _walk(self, d: date, n: int) -> date:
        # Outside the precomputed span: count day by day (correct, just slower).
        step = ONE_DAY if n > 0 else -ONE_DAY
        left = abs(n)
        while left:
            d += step
            if self.is_business_day(d):
                left -= 1
        return d


# --- sending windows -----------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def local_wall_to_utc(d: date, wall: time, tz: ZoneInfo) -> datetime:
    """The first instant whose wall-clock time on ``d`` in ``tz`` is at or after ``wall``.

    An ambiguous time (the repeated hour in autumn) is its first occurrence; a time that does
    not exist (the skipped hour in spring) moves forward to the end of the gap, e.g. 02:30 on
    2026-03-29 in Madrid gives 03:00 CEST. Cached: cases share their due dates and windows,
    and the conversion with its gap check is the costliest step of planning.
    """
    local = datetime.combine(d, wall, tzinfo=tz)  # fold=0: first occurrence
    utc = local.astimezone(UTC)
    naive = local.replace(tzinfo=None)
    if utc.astimezone(tz).replace(tzinfo=None) == naive:
        return utc
    # In a gap fold=1 reads the time with the later offset (an instant before the jump) and
    # fold=0 with the earlier one (after it): the jump lies between, found to the second.
    lo, hi = local.replace(fold=1).astimezone(UTC), utc
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0) if hi.microsecond else hi


def can_send_on(d: date, policy: Policy, cal: HolidayCalendar) -> bool:
    """True if ``d`` (a debtor-local date) is an allowed weekday and, if asked, not a holiday."""
    return d.weekday() in policy.weekdays and not (policy.skip_holidays and cal.is_holiday(d))


def in_window(at: datetime, tz: str, policy: Policy, cal: HolidayCalendar) -> bool:
    """True if ``at`` is an allowed day and inside the policy's window, debtor-local."""
    local = at.astimezone(zone(tz))
    return (
        can_send_on(local.date(), policy, cal)
        and policy.window_start <= local.time() < policy.window_end
    )


def next_slot(earliest: datetime, tz: str, policy: Policy, cal: HolidayCalendar) -> datetime:
    """The first instant at or after ``earliest`` (aware) in which ``policy`` allows a send.

    That is an allowed weekday, not a holiday when ``policy.skip_holidays``, and inside
    [window_start, window_end) on the debtor-local wall clock; the result is aware UTC.
    Windows do not cross midnight. ValueError if the policy can never send. Once past the
    window's end the search moves to the next day, so when an autumn night repeats the
    window's end hour, the repeated part of the window is not used: a later slot, never a
    wrong one.
    """
    if earliest.tzinfo is None:
        raise ValueError(f"naive datetime {earliest}: pass aware UTC")
    start, end = policy.window_start, policy.window_end
    if start >= end or not policy.weekdays:
        raise ValueError(f"the policy can never send: {policy}")
    tzinfo = zone(tz)
    weekdays, skip_holidays = policy.weekdays, policy.skip_holidays
    t = earliest.astimezone(UTC)
    for _ in range(2 * _MAX_SCAN_DAYS):
        local = t.astimezone(tzinfo)
        d = local.date()
        # can_send_on, inlined: this loop is the planner's hot path.
        if d.weekday() in weekdays and not (skip_holidays and cal.is_holiday(d)):
            wall = local.time()
            if start <= wall < end:
                return t
            if wall < start:
                opening = local_wall_to_utc(d, start, tzinfo)
                if opening <= t:
                    # Only in the repeated autumn hour: the first occurrence has gone by.
                    opening = datetime.combine(d, start.replace(fold=1), tzinfo=tzinfo)
                    opening = opening.astimezone(UTC)
                if opening > t:
                    t = opening
                    continue
        t = local_wall_to_utc(d + ONE_DAY, start, tzinfo)
    raise ValueError(f"no sending slot within {_MAX_SCAN_DAYS} days of {earliest}: {policy}")
