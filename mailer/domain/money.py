"""Amounts in Decimal, statutory late-payment interest and the EUR 40 recovery compensation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from mailer.domain.models import ZERO, DebtorKind, Invoice, Payment
from mailer.domain.rates import LATE_PAYMENT_RATES, LEGAL_INTEREST_RATES, RatePeriod

__all__ = [
    "BUSINESS_BASIS",
    "COMPENSATION",
    "CONSUMER_BASIS",
    "InterestComputation",
    "InterestSegment",
    "RatePeriod",
    "case_totals",
    "cents",
    "late_interest",
    "parse_amount",
    "rate_on",
]

CENT = Decimal("0.01")

# Ley 3/2004, art. 8 (as amended by Ley 15/2010; Directive 2011/7/EU, art. 6): a fixed sum per
# late invoice owed by a business, on top of the interest, without any reminder being needed.
COMPENSATION = Decimal("40.00")

BUSINESS_BASIS = "Ley 3/2004, art. 7 (tipo legal de interés de demora) y art. 8 (40 EUR)"
CONSUMER_BASIS = "Código Civil, art. 1108 (interés legal del dinero)"

# Always 365, leap years included: the BOE publishes annual rates and Spanish courts usually
# compute late interest as rate x days / 365; a 366 basis in leap years would give the debtor a
# slightly lower figure than the one a court would award.
DAYS_IN_YEAR = 365

_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_amount(text: str) -> Decimal:
    """Read a CSV amount such as "1210.00", "1210" or "1210.5" into Decimal cents.

    Strict on purpose: a thousands separator, a comma decimal, a sign, more than two decimals
    or anything but plain digits is refused, so a misread ledger never becomes a wrong claim.
    """
    candidate = text.strip()
    if not candidate:
        raise ValueError("empty amount")
    if candidate.startswith("-"):
        raise ValueError(f"negative amount {text!r}: amounts owed are never negative")
    if "," in candidate:
        raise ValueError(
            f"amount {text!r} has a comma: write it without thousands separators and with a "
            "'.' for the decimals, e.g. 1210.00"
        )
    if not _AMOUNT.fullmatch(candidate):
        raise ValueError(f"not an amount: {text!r} (expected digits with an optional '.' part)")
    decimals = candidate.partition(".")[2]
    if len(decimals) > 2:
        raise ValueError(f"amount {text!r} has more than 2 decimals")
    return Decimal(candidate).quantize(CENT)


def cents(value: Decimal) -> Decimal:
    """Round to the cent, half up (0.005 -> 0.01), the usual rounding for invoices in euros."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class InterestSegment:
    """Days ``start``..``end`` (inclusive) of delay with one principal and one rate."""

    start: date
    end: date
    days: int
    principal: Decimal
    rate: Decimal  # annual percent
    interest: Decimal  # unrounded: the total is rounded once, not each segment
    provisional: bool = False  # rate carried forward past the published table


@dataclass(frozen=True, slots=True)
class InterestComputation:
    """Interest and compensation owed on one invoice as of ``until``: what templates show."""

    invoice_number: str
    kind: DebtorKind
    until: date  # last day counted: the requested day, or the payment that cleared the invoice
    days_overdue: int
    segments: tuple[InterestSegment, ...]
    interest: Decimal  # total, rounded to cents once at the end
    compensation: Decimal  # 40.00 for a late business invoice, 0.00 otherwise
    basis: str  # legal basis, human-readable

    @property
    def provisional(self) -> bool:
        """True if a rate was carried forward past the end of the published table."""
        return any(s.provisional for s in self.segments)

    @property
    def total(self) -> Decimal:
        return self.interest + self.compensation


def _table(kind: DebtorKind) -> tuple[RatePeriod, ...]:
    return LATE_PAYMENT_RATES if kind is DebtorKind.BUSINESS else LEGAL_INTEREST_RATES


def rate_on(day: date, kind: DebtorKind) -> RatePeriod:
    """The statutory rate period in force on ``day`` for this kind of debtor.

    After the table's last period the last rate is carried forward, marked ``provisional``.
    Raises ``LookupError`` for a day before the table or in a gap: better no figure than a guess.
    """
    table = _table(kind)
    for period in table:
        if period.covers(day):
            return period
    if table and day > table[-1].end:
        # The BOE publishes each half-year's rate a few days before it starts, and an operator
        # may not have added it yet. Stopping all reminders would be worse than a figure marked
        # provisional; `mailer check` warns until the official value is in the table.
        last = table[-1]
        return replace(
            last,
            start=last.end + timedelta(days=1),
            end=date.max,
            reference=f"provisional: {last.reference} carried forward",
            provisional=True,
        )
    name = (
        "Ley 3/2004 late-payment rate"
        if kind is DebtorKind.BUSINESS
        else "interés legal del dinero"
    )
    covered = f"{table[0].start}..{table[-1].end}" if table else "nothing"
    raise LookupError(
        f"no {name} for {day.isoformat()} in mailer/domain/rates.py (it covers {covered}, "
        "possibly with gaps); add the officially published rate for that period"
    )


def _principal_after_due(invoice: Invoice) -> tuple[Decimal, list[Payment]]:
    """Balance owed on the first day of delay, and the payments made after the due date."""
    principal = invoice.amount
    later: list[Payment] = []
    for payment in sorted(invoice.payments, key=lambda p: p.paid_on):
        if payment.paid_on <= invoice.due_date:
            principal -= payment.amount
        else:
            later.append(payment)
    return max(principal, ZERO), later


def _segments(
    first: date, last: date, principal: Decimal, payments: Sequence[Payment], kind: DebtorKind
) -> tuple[list[InterestSegment], date]:
    """Split ``first``..``last`` at rate-period ends and payment days; returns the last day counted.

    A payment reduces the principal from the day after it: the payment day itself is still a day
    of delay on the old balance. When the balance reaches zero, counting stops that day.
    """
    segments: list[InterestSegment] = []
    pending = [p for p in payments if p.paid_on <= last]
    day = first
    end = last
    while day <= end:
        period = rate_on(day, kind)
        stop = min(period.end, end)
        if pending and pending[0].paid_on < stop:
            stop = pending[0].paid_on
        days = (stop - day).days + 1
        interest = principal * period.rate * days / (100 * DAYS_IN_YEAR)
        segments.append(
            InterestSegment(day, stop, days, principal, period.rate, interest, period.provisional)
        )
        while pending and pending[0].paid_on == stop:
            principal -= pending.pop(0).amount
        if principal <= ZERO:
            end = stop
            break
        day = stop + timedelta(days=1)
    return segments, end


def late_interest(invoice: Invoice, kind: DebtorKind, until: date) -> InterestComputation:
    """Statutory interest and compensation owed on ``invoice`` for the delay up to ``until``.

    Simple interest on the amount including VAT, less payments, for each day from the day after
    the due date to ``until`` (or to the payment that cleared the invoice), both included.
    Business debtors: Ley 3/2004 half-yearly rate and EUR 40. Consumers: the interés legal del
    dinero and no compensation. Raises ``LookupError`` if a day has no rate in the tables.
    """
    basis = BUSINESS_BASIS if kind is DebtorKind.BUSINESS else CONSUMER_BASIS
    principal, payments = _principal_after_due(invoice)
    if until <= invoice.due_date or principal == ZERO:
        return InterestComputation(
            invoice.number, kind, until, 0, (), cents(ZERO), cents(ZERO), basis
        )
    first = invoice.due_date + timedelta(days=1)
    segments, last = _segments(first, until, principal, payments, kind)
    interest = sum((s.interest for s in segments), ZERO)
    compensation = COMPENSATION if kind is DebtorKind.BUSINESS else ZERO
    return InterestComputation(
        invoice_number=invoice.number,
        kind=kind,
        until=last,
        days_overdue=(last - invoice.due_date).days,
        segments=tuple(segments),
        interest=cents(interest),
        compensation=cents(compensation),
        basis=basis,
    )


def case_totals(computations: Sequence[InterestComputation]) -> tuple[Decimal, Decimal]:
    """(interest, compensation) over several invoices, each already rounded to cents."""
    interest = sum((c.interest for c in computations), cents(ZERO))
    compensation = sum((c.compensation for c in computations), cents(ZERO))
    return interest, compensation
