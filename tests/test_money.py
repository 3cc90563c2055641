"""Tests for mailer.domain.money: amounts, statutory interest, compensation and the rate tables.

Every expected figure is worked out by hand in a comment:
interest = principal x rate x days / 36500.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.domain.models import DebtorKind, Invoice, Payment
from mailer.domain.money import (
    InterestComputation,
    case_totals,
    cents,
    late_interest,
    parse_amount,
    rate_on,
)
from mailer.domain.rates import LATE_PAYMENT_RATES, LEGAL_INTEREST_RATES, RatePeriod

BUSINESS = DebtorKind.BUSINESS
CONSUMER = DebtorKind.CONSUMER


def invoice(amount: str, due: date, *payments: tuple[date, str]) -> Invoice:
    return Invoice(
        number="F-1",
        debtor_id="D-1",
        currency="EUR",
        amount=Decimal(amount),
        issue_date=due - timedelta(days=30),
        due_date=due,
        payments=tuple(Payment("F-1", day, Decimal(paid)) for day, paid in payments),
    )


# --- the worked example from the issue --------------------------------------------------------


def test_worked_example_to_the_cent() -> None:
    # 16 May-30 Jun 2025 = 16 + 30 = 46 days at 11.15 %: 1210 x 11.15 x 46 / 36500 = 17.00299
    # 1 Jul-10 Aug 2025 = 31 + 10 = 41 days at 10.15 %:  1210 x 10.15 x 41 / 36500 = 13.79566
    # total 30.79864 -> 30.80; plus 40.00 -> 70.80
    result = late_interest(invoice("1210.00", date(2025, 5, 15)), BUSINESS, date(2025, 8, 10))
    assert result.interest == Decimal("30.80")
    assert result.compensation == Decimal("40.00")
    assert result.total == Decimal("70.80")
    assert result.days_overdue == 87
    assert [(s.start, s.end, s.days, s.rate) for s in result.segments] == [
        (date(2025, 5, 16), date(2025, 6, 30), 46, Decimal("11.15")),
        (date(2025, 7, 1), date(2025, 8, 10), 41, Decimal("10.15")),
    ]
    assert result.basis.startswith("Ley 3/2004")


def test_paid_on_the_day_counts_that_day() -> None:
    # Same invoice, paid in full on 2025-08-10 and asked about later: interest stops on the
    # payment day (which counts), so the figures are the worked example's: 30.80 + 40.00.
    inv = invoice("1210.00", date(2025, 5, 15), (date(2025, 8, 10), "1210.00"))
    result = late_interest(inv, BUSINESS, date(2025, 12, 1))
    assert result.until == date(2025, 8, 10)
    assert result.days_overdue == 87
    assert (result.interest, result.compensation) == (Decimal("30.80"), Decimal("40.00"))


# --- half-year boundaries --------------------------------------------------------------------


def test_due_29_june_splits_at_30_june() -> None:
    # 30 Jun 2025: 1 day at 11.15 % = 10000 x 11.15 x 1 / 36500 = 3.05479
    # 1-2 Jul 2025: 2 days at 10.15 % = 10000 x 10.15 x 2 / 36500 = 5.56164
    # total 8.61644 -> 8.62
    result = late_interest(invoice("10000", date(2025, 6, 29)), BUSINESS, date(2025, 7, 2))
    assert [(s.days, s.rate) for s in result.segments] == [
        (1, Decimal("11.15")),
        (2, Decimal("10.15")),
    ]
    assert result.interest == Decimal("8.62")


def test_due_30_june_starts_in_the_second_half() -> None:
    # 1 Jul 2025: 1 day at 10.15 % = 10000 x 10.15 / 36500 = 2.78082 -> 2.78
    result = late_interest(invoice("10000", date(2025, 6, 30)), BUSINESS, date(2025, 7, 1))
    assert len(result.segments) == 1
    assert result.segments[0].start == date(2025, 7, 1)
    assert result.days_overdue == 1
    assert result.interest == Decimal("2.78")


def test_due_31_december_starts_in_the_new_year() -> None:
    # 1-2 Jan 2025: 2 days at 11.15 % = 10000 x 11.15 x 2 / 36500 = 6.10959 -> 6.11
    result = late_interest(invoice("10000", date(2024, 12, 31)), BUSINESS, date(2025, 1, 2))
    assert [(s.start, s.days, s.rate) for s in result.segments] == [
        (date(2025, 1, 1), 2, Decimal("11.15"))
    ]
    assert result.interest == Decimal("6.11")


def test_over_a_year_end() -> None:
    # 31 Dec 2024 at 12.25 %: 10000 x 12.25 / 36500 = 3.35616
    # 1 Jan 2025 at 11.15 %:  10000 x 11.15 / 36500 = 3.05479
    # total 6.41096 -> 6.41
    result = late_interest(invoice("10000", date(2024, 12, 30)), BUSINESS, date(2025, 1, 1))
    assert [s.rate for s in result.segments] == [Decimal("12.25"), Decimal("11.15")]
    assert result.interest == Decimal("6.41")


def test_over_several_half_years_and_a_leap_year() -> None:
    # 1-30 Jun 2023:   30 days at 10.50 %: 1000 x 10.50 x 30 / 36500  =  8.63014
    # 2023-H2:        184 days at 12.00 %: 1000 x 12.00 x 184 / 36500 = 60.49315
    # 2024-H1 (leap): 182 days at 12.50 %: 1000 x 12.50 x 182 / 36500 = 62.32877 (still / 365)
    # 1-31 Jul 2024:   31 days at 12.25 %: 1000 x 12.25 x 31 / 36500  = 10.40411
    # total 141.85616 -> 141.86 over 30 + 184 + 182 + 31 = 427 days
    result = late_interest(invoice("1000", date(2023, 5, 31)), BUSINESS, date(2024, 7, 31))
    assert [(s.days, s.rate) for s in result.segments] == [
        (30, Decimal("10.50")),
        (184, Decimal("12.00")),
        (182, Decimal("12.50")),
        (31, Decimal("12.25")),
    ]
    assert result.days_overdue == 427
    assert result.interest == Decimal("141.86")


# --- nothing owed ----------------------------------------------------------------------------


def test_paid_on_the_due_date_owes_nothing() -> None:
    inv = invoice("1210.00", date(2025, 5, 15), (date(2025, 5, 15), "1210.00"))
    result = late_interest(inv, BUSINESS, date(2025, 8, 10))
    assert (result.interest, result.compensation, result.days_overdue) == (
        Decimal("0.00"),
        Decimal("0.00"),
        0,
    )
    assert result.segments == ()


@pytest.mark.parametrize("until", [date(2025, 5, 1), date(2025, 5, 15)])
def test_not_yet_late_owes_nothing(until: date) -> None:
    result = late_interest(invoice("1210.00", date(2025, 5, 15)), BUSINESS, until)
    assert result.total == Decimal("0.00")
    assert result.days_overdue == 0


# --- consumers -------------------------------------------------------------------------------


def test_consumer_gets_legal_rate_and_no_compensation() -> None:
    # 87 days in 2025 at the interés legal del dinero, 3.25 %:
    # 1210 x 3.25 x 87 / 36500 = 9.37336 -> 9.37; no EUR 40 for consumers
    result = late_interest(invoice("1210.00", date(2025, 5, 15)), CONSUMER, date(2025, 8, 10))
    assert result.interest == Decimal("9.37")
    assert result.compensation == Decimal("0.00")
    assert result.total == Decimal("9.37")
    assert "interés legal del dinero" in result.basis


# --- partial payments ------------------------------------------------------------------------


def test_partial_payments_reduce_the_principal_from_the_next_day() -> None:
    # 1000 due 31 Jan 2025; 400 paid 10 Feb; 600 paid 12 Mar (clears it). All at 11.15 % (2025-H1).
    # 1-10 Feb:            10 days on 1000: 1000 x 11.15 x 10 / 36500 = 3.05479
    # 11 Feb-12 Mar: 18 + 12 = 30 days on 600: 600 x 11.15 x 30 / 36500 = 5.49863
    # total 8.55342 -> 8.55; interest stops on 12 Mar, 40 days after the due date
    inv = invoice(
        "1000",
        date(2025, 1, 31),
        (date(2025, 3, 12), "600"),  # out of order on purpose
        (date(2025, 2, 10), "400"),
    )
    result = late_interest(inv, BUSINESS, date(2025, 12, 31))
    assert [(s.start, s.end, s.principal) for s in result.segments] == [
        (date(2025, 2, 1), date(2025, 2, 10), Decimal("1000")),
        (date(2025, 2, 11), date(2025, 3, 12), Decimal("600")),
    ]
    assert result.until == date(2025, 3, 12)
    assert result.days_overdue == 40
    assert result.interest == Decimal("8.55")
    assert result.compensation == Decimal("40.00")


def test_payment_before_due_date_lowers_the_principal_from_the_start() -> None:
    # 1000 due 31 Jan 2025, 250 paid on 20 Jan: 750 owed from 1 Feb.
    # 1-10 Feb: 750 x 11.15 x 10 / 36500 = 2.29110 -> 2.29
    inv = invoice("1000", date(2025, 1, 31), (date(2025, 1, 20), "250"))
    result = late_interest(inv, BUSINESS, date(2025, 2, 10))
    assert result.segments[0].principal == Decimal("750")
    assert result.interest == Decimal("2.29")


def test_payments_after_until_are_not_counted_yet() -> None:
    # Same as test_due_30_june...: a later payment changes nothing on 1 Jul: 2.78
    inv = invoice("10000", date(2025, 6, 30), (date(2025, 7, 20), "10000"))
    result = late_interest(inv, BUSINESS, date(2025, 7, 1))
    assert result.interest == Decimal("2.78")
    assert result.until == date(2025, 7, 1)


def test_case_totals() -> None:
    # 30.80 (worked example) + 2.78 (due 30 Jun) = 33.58; 40.00 + 40.00 = 80.00
    first = late_interest(invoice("1210.00", date(2025, 5, 15)), BUSINESS, date(2025, 8, 10))
    second = late_interest(invoice("10000", date(2025, 6, 30)), BUSINESS, date(2025, 7, 1))
    assert case_totals([first, second]) == (Decimal("33.58"), Decimal("80.00"))
    assert case_totals([]) == (Decimal("0.00"), Decimal("0.00"))


# --- amounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1210.00", "1210.00"),
        ("1210", "1210.00"),
        ("1210.5", "1210.50"),
        (" 0.07 ", "0.07"),
        ("0", "0.00"),
    ],
)
def test_parse_amount_accepts(text: str, expected: str) -> None:
    assert parse_amount(text) == Decimal(expected)
    assert str(parse_amount(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "not an amount"),
        ("1,210.00", "comma"),
        ("1210,50", "comma"),
        ("-5.00", "negative"),
        ("1210.005", "more than 2 decimals"),
        ("NaN", "not an amount"),
        ("Inf", "not an amount"),
        ("1e3", "not an amount"),
        ("+5", "not an amount"),
        (".5", "not an amount"),
        ("5.", "not an amount"),
        ("١٢", "not an amount"),  # Arabic-Indic digits: Decimal() would take them
    ],
)
def test_parse_amount_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_amount(text)


def test_cents_rounds_half_up() -> None:
    assert cents(Decimal("0.005")) == Decimal("0.01")
    assert cents(Decimal("2.345")) == Decimal("2.35")
    assert cents(Decimal("2.3449")) == Decimal("2.34")
    assert cents(Decimal("7")) == Decimal("7.00")


# --- rate tables -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "kind", "rate"),
    [
        (date(2025, 6, 30), BUSINESS, "11.15"),
        (date(2025, 7, 1), BUSINESS, "10.15"),
        (date(2013, 2, 23), BUSINESS, "7.75"),  # before Real Decreto-ley 4/2013
        (date(2013, 2, 24), BUSINESS, "8.75"),
        (date(2023, 1, 1), CONSUMER, "3.25"),
        (date(2025, 12, 31), CONSUMER, "3.25"),
        (date(2015, 6, 1), CONSUMER, "3.50"),
    ],
)
def test_rate_on(day: date, kind: DebtorKind, rate: str) -> None:
    assert rate_on(day, kind).rate == Decimal(rate)


@pytest.mark.parametrize("kind", [BUSINESS, CONSUMER])
def test_rate_on_before_the_table_raises(kind: DebtorKind) -> None:
    with pytest.raises(LookupError, match="2012-12-31"):
        rate_on(date(2012, 12, 31), kind)


@pytest.mark.parametrize("kind", [BUSINESS, CONSUMER])
def test_rate_after_the_table_is_the_last_one_marked_provisional(kind: DebtorKind) -> None:
    table = LATE_PAYMENT_RATES if kind is BUSINESS else LEGAL_INTEREST_RATES
    period = rate_on(date(2100, 1, 1), kind)
    assert period.provisional
    assert period.rate == table[-1].rate
    assert "provisional" in period.reference
    # An invoice late past the table's end says so, so a template can flag the figure.
    late = late_interest(
        invoice("1000.00", table[-1].end), kind, table[-1].end + timedelta(days=30)
    )
    assert late.provisional and late.interest > 0
    assert not late_interest(
        invoice("1000.00", date(2025, 5, 15)), kind, date(2025, 8, 10)
    ).provisional


def test_late_interest_outside_the_table_raises() -> None:
    with pytest.raises(LookupError):
        late_interest(invoice("100", date(2012, 12, 1)), BUSINESS, date(2013, 1, 5))


@pytest.mark.parametrize("table", [LATE_PAYMENT_RATES, LEGAL_INTEREST_RATES])
def test_tables_are_contiguous_and_referenced(table: tuple[RatePeriod, ...]) -> None:
    assert table[0].start == date(2013, 1, 1)
    for before, after in pairwise(table):
        assert after.start == before.end + timedelta(days=1)
    for period in table:
        assert period.start <= period.end
        assert period.reference.strip()
        assert Decimal("0") < period.rate < Decimal("20")
        assert period.rate == cents(period.rate)  # published with two decimals


def test_half_year_periods_end_on_30_june_or_31_december() -> None:
    # Only 2013-H1 is split (Real Decreto-ley 4/2013 took effect on 24 Feb 2013).
    ends = {(p.end.month, p.end.day) for p in LATE_PAYMENT_RATES if p.end != date(2013, 2, 23)}
    assert ends == {(6, 30), (12, 31)}


# --- properties ------------------------------------------------------------------------------

# Inside the tables: both cover 2013-01-01..2026-06-30.
_FIRST_DUE = date(2013, 1, 1)
_LAST_DAY = LATE_PAYMENT_RATES[-1].end

dues = st.dates(min_value=_FIRST_DUE, max_value=_LAST_DAY - timedelta(days=1))
amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000000"), places=2)
kinds = st.sampled_from([BUSINESS, CONSUMER])


def _until(due: date, offset: int) -> date:
    return min(due + timedelta(days=offset), _LAST_DAY)


@settings(max_examples=150, deadline=None)
@given(amounts, dues, kinds, st.integers(0, 2000), st.integers(0, 2000))
def test_interest_is_monotone_and_never_negative(
    amount: Decimal, due: date, kind: DebtorKind, a: int, b: int
) -> None:
    inv = invoice(str(amount), due)
    early = late_interest(inv, kind, _until(due, min(a, b)))
    late = late_interest(inv, kind, _until(due, max(a, b)))
    assert Decimal("0") <= early.interest <= late.interest
    assert early.compensation <= late.compensation


@settings(max_examples=100, deadline=None)
@given(amounts, dues, kinds, st.integers(1, 1500))
def test_segments_match_a_day_by_day_sum(
    amount: Decimal, due: date, kind: DebtorKind, offset: int
) -> None:
    until = _until(due, offset)
    result = late_interest(invoice(str(amount), due), kind, until)
    # Independent oracle: one day at a time at the rate of that day.
    daily = Decimal("0")
    day = due + timedelta(days=1)
    while day <= until:
        daily += amount * rate_on(day, kind).rate / Decimal(36500)
        day += timedelta(days=1)
    assert result.interest == cents(daily)
    assert sum(s.days for s in result.segments) == result.days_overdue == (until - due).days
    assert cents(sum((s.interest for s in result.segments), Decimal("0"))) == result.interest


@settings(max_examples=100, deadline=None)
@given(amounts, amounts, dues, kinds, st.integers(1, 1500))
def test_splitting_an_invoice_changes_totals_by_rounding_only(
    first: Decimal, second: Decimal, due: date, kind: DebtorKind, offset: int
) -> None:
    until = _until(due, offset)
    whole = late_interest(invoice(str(first + second), due), kind, until)
    parts: list[InterestComputation] = [
        late_interest(invoice(str(first), due), kind, until),
        late_interest(invoice(str(second), due), kind, until),
    ]
    interest, _ = case_totals(parts)
    assert abs(interest - whole.interest) <= Decimal("0.01")
