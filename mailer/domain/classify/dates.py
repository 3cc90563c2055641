"""Dates people write in es/en/pt/fr/de ("el día 15", "next Friday", "15. März") resolved against a reference day."""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta

from mailer.domain.classify.lookahead import starting_with

_MONTHS: dict[str, int] = {}
for _number, _names in enumerate(
    (
        "january jan enero ene janeiro janvier januar janner",
        "february feb febrero fevereiro fev fevrier fevr februar",
        "march mar marzo marco mars marz",
        "april apr abril abr avril avr",
        "may mayo maio mai",
        "june jun junio junho juin juni",
        "july jul julio julho juillet juil juli",
        "august aug agosto ago aout august",
        "september sep sept septiembre setiembre set setembro septembre",
        "october oct octubre outubro out octobre oktober okt",
        "november nov noviembre novembro novembre",
        "december dec diciembre dic dezembro dez decembre dezember",
    ),
    start=1,
):
    for _name in _names.split():
        _MONTHS[_name] = _number

_WEEKDAYS: dict[str, int] = {}
for _number, _names in enumerate(
    (
        "monday mon lunes segunda segunda-feira lundi montag",
        "tuesday tue tues martes terca terca-feira mardi dienstag",
        "wednesday wed miercoles quarta quarta-feira mercredi mittwoch",
        "thursday thu thurs jueves quinta quinta-feira jeudi donnerstag",
        "friday fri viernes sexta sexta-feira vendredi freitag",
        "saturday sat sabado samedi samstag sonnabend",
        "sunday sun domingo dimanche sonntag",
    )
):
    for _name in _names.split():
        _WEEKDAYS[_name] = _number

_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_WEEKDAY_RE = "|".join(sorted(_WEEKDAYS, key=len, reverse=True))
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th|er|º|°|\.)?"
_YEAR = r"(?:,?\s*(?:de\s+|del\s+)?(?P<year>(?:19|20)\d\d))?"

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "iso",
        starting_with("12", r"\b(?P<year>(?:19|20)\d\d)-(?P<month>[01]?\d)-(?P<day>[0-3]?\d)\b"),
    ),
    # 15/03/2024, 15.03.2024, 15-03-24, 15/03, 15.03.
    (
        "numeric",
        starting_with(
            r"\d",
            r"(?<![\d/.])(?P<day>[0-3]?\d)[/.-](?P<month>[01]?\d)(?:[/.-](?P<year>(?:19|20)?\d\d))?(?![\d/]|\.\d)",
        ),
    ),
    # 15 de marzo de 2024, 15 March 2024, 15th of March, 15. März, le 15 mars
    (
        "day_month",
        starting_with(r"\d", rf"\b{_DAY}\s*(?:de\s+|of\s+|-)?(?P<month>{_MONTH_RE})\b\.?{_YEAR}"),
    ),
    # March 15, 2024 / March 15th
    (
        "month_day",
        starting_with(
            "adefjmnos", rf"\b(?P<month>{_MONTH_RE})\.?\s+(?:the\s+)?{_DAY}(?![\d:]){_YEAR}"
        ),
    ),
)
_WEEKDAY_PAT = re.compile(
    rf"\b(?P<next>next|this|coming|el pr[oó]ximo|pr[oó]ximo|pr[oó]xima|este|esta|la|el|on|"
    rf"prochain|ce|n[aä]chste[nr]?|am|diesen)?\s*(?P<weekday>{_WEEKDAY_RE})\b"
)
_DAY_ONLY = starting_with(
    "abdehlnotu",
    r"\b(?:el\s+d[ií]a|el|d[ií]a|on\s+the|the|by\s+the|le|am|dia|no\s+dia|until\s+the|hasta\s+el)\s+"
    r"(?P<day>[0-3]?\d)(?:st|nd|rd|th|º|°|\.)?(?!\s*(?:%|€|\$|eur|euros|d[ií]as|days|horas|hours|[:/.,]\d))\b",
)
_RELATIVE: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"\b(?:end of (?:the |this )?month|month[- ]end|a? ?(?:fin(?:al)?(?:es)?) de(?:l)? mes|fin du mois|ende des monats|monatsende|final do m[eê]s)\b"
        ),
        "month_end",
    ),
    (
        re.compile(
            r"\b(?:end of next month|a? ?(?:fin(?:al)?(?:es)?) del? (?:mes que viene|pr[oó]ximo mes))\b"
        ),
        "next_month_end",
    ),
    (
        re.compile(
            r"\b(?:next week|la semana que viene|la pr[oó]xima semana|la semana pr[oó]xima|semaine prochaine|n[aä]chste woche|pr[oó]xima semana|semana que vem)\b"
        ),
        "next_week",
    ),
    (re.compile(r"\b(?:this week|esta semana|cette semaine|diese woche)\b"), "this_week"),
    (
        re.compile(
            r"\b(?:next month|el mes que viene|el pr[oó]ximo mes|mois prochain|n[aä]chsten monat|pr[oó]ximo m[eê]s)\b"
        ),
        "next_month_end",
    ),
    (
        re.compile(
            r"\b(?:day after tomorrow|pasado ma[nñ]ana|depois de amanh[aã]|apr[eè]s-demain|[uü]bermorgen)\b"
        ),
        "plus2",
    ),
    (
        re.compile(
            r"\b(?:tomorrow|(?<!por la )(?<!de la )(?<!esta )ma[nñ]ana|amanh[aã]|demain|morgen)\b"
        ),
        "plus1",
    ),
    (re.compile(r"\b(?:today|hoy|hoje|aujourd'hui|heute)\b"), "plus0"),
    (
        re.compile(
            r"\b(?:in|en|within|dentro de|em|dans|in den n[aä]chsten)\s+(?P<n>\d{1,2})\s+(?:days|d[ií]as|dias|jours|tage[n]?)\b"
        ),
        "plus_n",
    ),
)

# Quick tests that a group of the patterns above can match at all, made from the same patterns:
# most texts name no weekday and no relative day, and these scans cost a third of the patterns'.
_ANY_WEEKDAY = re.compile(_WEEKDAY_RE)
_ANY_RELATIVE = re.compile("|".join(pattern.pattern for pattern, _kind in _RELATIVE))

# A quicker test still, before _ANY_RELATIVE: a word that each alternative of each _RELATIVE
# pattern contains, so where none is found no pattern can match. It opens with a letter, which
# the regex engine scans for in one fast loop; _ANY_RELATIVE opens with \b, tried at every
# position. tests/test_classify_equiv.py checks it against every string each pattern can match.
_RELATIVE_WORDS = re.compile(
    r"month|monat|mois|m[eê]s|fin|week|woche|semana|semaine|"
    r"tomorrow|ma[nñ]ana|amanh|demain|morgen|today|hoy|hoje|aujourd'hui|heute|"
    r"days|d[ií]as|jours|tage"
)


@dataclass(frozen=True, slots=True)
class DateMention:
    start: int
    end: int
    value: date


class _Unaccent(dict[int, str]):
    """A `str.translate` table filled as characters are met: each one without its accents."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        base = unicodedata.normalize("NFKD", ch)
        stripped = "".join(c for c in base if not unicodedata.combining(c))
        out = stripped[:1] if stripped else ch
        if len(self) < 20_000:  # hostile text cannot grow it without bound
            self[code] = out
        return out


_UNACCENT = _Unaccent()


def normalize(text: str) -> str:
    """Lower-case without accents, so "miércoles" and "miercoles" match alike; length is kept."""
    low = text.lower()
    return low if low.isascii() else low.translate(_UNACCENT)


def _on_or_after(
    ref: date, month: int, day: int, year: int | None, *, strictly: bool = False
) -> date | None:
    try:
        if year is not None:
            return date(year, month, day)
        candidate = date(ref.year, month, day)
        if candidate < ref or (strictly and candidate == ref):
            candidate = date(ref.year + 1, month, day)
        return candidate
    except ValueError:
        return None


def _year(raw: str | None) -> int | None:
    if not raw:
        return None
    value = int(raw)
    return value + 2000 if value < 100 else value


def _next_day_of_month(ref: date, day: int) -> date | None:
    """The next `day`-th strictly after `ref` ("pagaré el 15" said on the 20th means next month)."""
    year, month = ref.year, ref.month
    for _ in range(13):
        if day <= calendar.monthrange(year, month)[1]:
            candidate = date(year, month, day)
            if candidate > ref:
                return candidate
        month += 1
        if month == 13:
            year, month = year + 1, 1
    return None


def _month_end(ref: date, months_ahead: int = 0) -> date:
    month = ref.month + months_ahead
    year = ref.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return date(year, month, calendar.monthrange(year, month)[1])


def find_dates(text: str, ref: date, *, low: str | None = None) -> list[DateMention]:
    """Every date the text states or implies, in reading order; unknown years resolve forward.

    `low` is `normalize(text)` when the caller has it already.
    """
    if low is None:
        low = normalize(text)
    taken: list[tuple[int, int]] = []
    found: list[DateMention] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    def add(start: int, end: int, value: date | None) -> None:
        if value is not None and free(start, end):
            taken.append((start, end))
            found.append(DateMention(start, end, value))

    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(low):
            if not free(m.start(), m.end()):
                continue
            month_raw = m.group("month")
            month = int(month_raw) if month_raw.isdigit() else _MONTHS.get(month_raw.rstrip("."), 0)
            day = int(m.group("day"))
            if kind == "numeric" and month > 12 and day <= 12:
                day, month = month, day  # a US-style 03/15
            if not (1 <= month <= 12 and 1 <= day <= 31):
                continue
            if kind == "numeric" and m.group("year") is None and "." in m.group(0):
                # "2.10" or "1.5" is more likely a number than a date; "15.03." and "15.03" are dates
                parts = m.group(0).rstrip(".").split(".")
                if not m.group(0).endswith(".") and not all(len(x) == 2 for x in parts):
                    continue
            add(m.start(), m.end(), _on_or_after(ref, month, day, _year(m.group("year"))))
    for m in _WEEKDAY_PAT.finditer(low) if _ANY_WEEKDAY.search(low) else ():
        if not free(m.start("weekday"), m.end("weekday")):
            continue
        if any(0 <= d.start - m.end("weekday") <= 5 for d in found):
            continue  # "Monday 16 March": the weekday only names the date that follows
        target = _WEEKDAYS[m.group("weekday")]
        # "the next Friday" after the reference day; today's weekday means a week ahead
        ahead = (target - ref.weekday()) % 7 or 7
        add(m.start("weekday"), m.end("weekday"), ref + timedelta(days=ahead))
    relative = _RELATIVE_WORDS.search(low) and _ANY_RELATIVE.search(low)
    for pattern, kind in _RELATIVE if relative else ():
        for m in pattern.finditer(low):
            if not free(m.start(), m.end()):
                continue
            value: date
            if kind == "month_end":
                value = _month_end(ref) if ref != _month_end(ref) else _month_end(ref, 1)
            elif kind == "next_month_end":
                value = _month_end(ref, 1)
            elif kind == "next_week":
                value = ref + timedelta(days=7 - ref.weekday() + 4)  # Friday of next week
            elif kind == "this_week":
                value = ref + timedelta(days=max(0, 4 - ref.weekday()))
            elif kind == "plus_n":
                value = ref + timedelta(days=int(m.group("n")))
            else:
                value = ref + timedelta(days=int(kind[4:]))
            add(m.start(), m.end(), value)
    for m in _DAY_ONLY.finditer(low):
        day = int(m.group("day"))
        if 1 <= day <= 31 and free(m.start("day"), m.end("day")):
            add(m.start("day"), m.end("day"), _next_day_of_month(ref, day))
    return sorted(found, key=lambda d: d.start)
