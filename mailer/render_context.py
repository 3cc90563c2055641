"""The template context for one email: a case, a step and who writes, as plain values only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

from mailer.domain.models import ZERO, Case, Creditor, Identity, Invoice, Step
from mailer.domain.money import InterestComputation, case_totals, cents, late_interest
from mailer.errors import ConfigError, NeedsReviewError

# Calendar days a final notice gives before the announced hand-over. The handover step comes
# 10 business days (14+ calendar days) later and needs approval, so the date is always kept.
RESPOND_DAYS = 10


@dataclass(frozen=True, slots=True)
class PreviousMessage:
    """An email already sent in this case, for "as we wrote on …"."""

    sent_on: date
    subject: str
    sender: str = ""  # the address it came from: after an identity switch, not the current one


def _safe_link(link: str | None) -> str | None:
    # Links come from the ledger and config: only web links may reach an href, never
    # javascript:, data: or mailto: tricks.
    if link and link.lower().startswith(("https://", "http://")):
        return link
    return None


def _payment_link(invoice: Invoice, creditor: Creditor) -> str | None:
    if invoice.payment_link:
        return _safe_link(invoice.payment_link)
    if not creditor.payment_link_template:
        return None
    fields = {
        "invoice": quote(invoice.number, safe=""),
        "amount": f"{invoice.balance:.2f}",
        "currency": invoice.currency,
        "debtor": quote(invoice.debtor_id, safe=""),
    }
    try:
        link = creditor.payment_link_template.format_map(fields)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            [
                f"creditor.payment_link_template: {exc!r}; it may use "
                + ", ".join("{" + k + "}" for k in fields)
            ]
        ) from exc
    return _safe_link(link)


def _interest(invoice: Invoice, case: Case, today: date) -> InterestComputation:
    try:
        return late_interest(invoice, case.debtor.kind, today)
    except LookupError as exc:
        # A day before the published table (or in a gap): better no email than a made-up figure.
        # Days after its end use the last rate, marked provisional (see money.rate_on).
        raise NeedsReviewError(f"case {case.id}: invoice {invoice.number}: {exc}") from exc


def _invoice(invoice: Invoice, computed: InterestComputation, creditor: Creditor) -> dict[str, Any]:
    rate = computed.segments[-1].rate if computed.segments else None
    return {
        "number": invoice.number,
        "issue_date": invoice.issue_date,
        "due_date": invoice.due_date,
        "currency": invoice.currency,
        "amount": cents(invoice.amount),
        "paid": cents(invoice.paid),
        "balance": cents(invoice.balance),
        "days_overdue": computed.days_overdue,
        "overdue": computed.days_overdue > 0,
        "interest": computed.interest,
        "interest_rate": rate,  # annual percent in force on the last day counted
        "compensation": computed.compensation,
        "interest_basis": computed.basis,
        # The rate was carried forward past the published table: say so rather than hide it.
        "interest_provisional": computed.provisional,
        "total_due": cents(invoice.balance + computed.total),
        "payment_link": _payment_link(invoice, creditor),
    }


def build_context(
    case: Case,
    step: Step,
    creditor: Creditor,
    identity: Identity,
    today: date,
    previous: Sequence[PreviousMessage] = (),
    opt_out: str | None = None,
    *,
    respond_by: date | None = None,
    instalment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a template may use, as str/Decimal/date/int/bool/None, lists and dicts.

    ``opt_out`` is the opt-out sentence when the debtor's profile needs one (the renderer adds
    it anyway; templates may test ``opt_out`` to word things around it). ``respond_by`` is the
    date a final notice names; by default ``today`` + RESPOND_DAYS. ``instalment`` is given
    only for an instalment plan's reminders (domain.instalments.template_values): other
    templates have no ``instalment``, so using it there is an error ``mailer check`` reports.
    """
    open_invoices = sorted(case.open_invoices, key=lambda i: (i.due_date, i.number))
    overdue = [i for i in open_invoices if i.due_date < today]
    # A reminder is about what is overdue (an invoice not yet due is not chased); a courtesy
    # notice, sent before the due date, is about what falls due next.
    if overdue and step.offset_days >= 0:
        invoices = overdue
    else:
        invoices = [i for i in open_invoices if i.due_date >= today] or open_invoices
    if not invoices:
        raise ValueError(f"case {case.id} has no open invoice: nothing to write about")
    currencies = {i.currency for i in invoices}
    if len(currencies) > 1:
        raise NeedsReviewError(
            f"case {case.id}: open invoices in several currencies ({', '.join(sorted(currencies))})"
        )
    computed = [_interest(i, case, today) for i in invoices]
    rows = [_invoice(i, c, creditor) for i, c in zip(invoices, computed, strict=True)]
    interest, compensation = case_totals(computed)
    balance = sum((r["balance"] for r in rows), ZERO)
    links = {r["payment_link"] for r in rows}
    rates = [c.segments[-1].rate for c in computed if c.segments]
    debtor = case.debtor
    context = {
        "creditor": {
            "legal_name": creditor.legal_name,
            "tax_id": creditor.tax_id,
            "address": creditor.address,
            "country": creditor.country,
            "phone": creditor.phone,
            "website": creditor.website,
        },
        "debtor": {
            "id": debtor.id,
            "name": debtor.name,
            "kind": debtor.kind.value,
            "lang": debtor.lang,
            "country": debtor.country,
            "region": debtor.region,
        },
        "invoices": rows,
        "totals": {
            "as_of": today,  # the day interest is counted to
            "count": len(rows),
            "overdue_count": sum(1 for r in rows if r["overdue"]),
            "currency": invoices[0].currency,
            "balance": cents(balance),
            "interest": interest,
            "compensation": compensation,
            "total_due": cents(balance + interest + compensation),
            "interest_basis": computed[0].basis,
            # Annual percent in force on the last day counted (None while nothing is overdue).
            "interest_rate": rates[-1] if rates else None,
            "interest_provisional": any(r["interest_provisional"] for r in rows),
            "oldest_due_date": invoices[0].due_date,
            "max_days_overdue": max(c.days_overdue for c in computed),
        },
        "payment": {
            "iban": creditor.iban,
            "bic": creditor.bic,
            # One link for the whole case only when every invoice has the same one.
            "link": links.pop() if len(links) == 1 else None,
            "reference": ", ".join(r["number"] for r in rows),
        },
        "step": {"name": step.name, "index": step.index, "number": step.index + 1},
        "identity": {"display_name": identity.display_name, "address": identity.address},
        "today": today,
        "respond_by": respond_by or today + timedelta(days=RESPOND_DAYS),
        "lang": debtor.lang,
        "previous_messages": [
            {"date": p.sent_on, "subject": p.subject, "sender": p.sender}
            for p in sorted(previous, key=lambda p: p.sent_on)
        ],
        # Where earlier reminders came from when that was another of the business's addresses
        # (after an identity switch): honest mail says so, in case those never arrived.
        "earlier_senders": sorted(
            {p.sender for p in previous if p.sender and p.sender != identity.address}
        ),
        "opt_out": opt_out,
    }
    if instalment is not None:
        context["instalment"] = dict(instalment)
    return context
