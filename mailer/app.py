"""Wiring: settings, store, campaigns, templates and calendars; what `mailer check` loads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from mailer.config import Settings
from mailer.domain.calendar import HolidayCalendar
from mailer.domain.campaign import channel_problems, load_campaigns, profile_problems
from mailer.domain.instalments import TEMPLATES, Instalment, split, steps_for, template_values
from mailer.domain.models import (
    ZERO,
    Action,
    Campaign,
    Case,
    Channel,
    ComplianceProfile,
    DebtorKind,
    HistoryEntry,
    Identity,
    Step,
)
from mailer.domain.money import rate_on
from mailer.domain.planner import PlanFacts, plan, plan_facts
from mailer.domain.policy import effective_policy, profile_for
from mailer.errors import ConfigError
from mailer.ledger import parse_invoices, parse_payments
from mailer.render import RenderedEmail, TemplateSet, check_templates, opt_out_line, render
from mailer.render_context import PreviousMessage, build_context
from mailer.sample import SAMPLE_DIR
from mailer.store.db import Store


@dataclass
class Rules:
    """What staff edit (campaigns and templates), loaded and checked together; swapped on reload."""

    campaigns: dict[str, Campaign]
    templates: TemplateSet

    @classmethod
    def load(cls, settings: Settings) -> Rules:
        campaigns = load_campaigns(settings.campaigns_dir)
        problems: list[str] = []
        for kind, profile in settings.profiles.items():
            campaign = campaigns.get(profile.campaign)
            if campaign is None:
                problems.append(
                    f"{settings.source}:1: the {kind.value} profile uses campaign "
                    f"{profile.campaign!r}, not found in {settings.campaigns_dir}"
                )
                continue
            problems.extend(profile_problems(campaign, profile))
        # A step on a channel with no settings would fail at every tick: refuse it here.
        configured = {Channel.SMTP} | ({Channel.MAILCHIMP} if settings.mailchimp else set())
        configured |= {Channel.MANDRILL} if settings.mandrill else set()
        problems.extend(channel_problems(campaigns, configured))
        templates = TemplateSet(settings.templates_dir)
        cases = _representative(sample_cases(settings))
        problems.extend(
            check_templates(
                templates,
                campaigns,
                sample_contexts(settings, campaigns, cases),
                instalment_contexts(settings, cases),
            )
        )
        if problems:
            raise ConfigError(problems)
        return cls(campaigns, templates)


@dataclass
class App:
    """One configured mailer: everything a flow or a command needs, passed in, never global."""

    settings: Settings
    store: Store
    rules: Rules
    _calendars: dict[tuple[str, str | None], HolidayCalendar] = field(default_factory=dict)
    _campaigns: dict[str, tuple[Rules, ComplianceProfile, Campaign]] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, *, database: Path | None = None) -> App:
        rules = Rules.load(settings)
        store = Store.open(database or settings.database)
        return cls(settings, store, rules)

    def calendar(self, country: str, region: str | None) -> HolidayCalendar:
        key = (country, region)
        if key not in self._calendars:
            self._calendars[key] = HolidayCalendar(country, region)
        return self._calendars[key]

    def campaign_for(self, case: Case) -> Campaign:
        """The debtor's campaign, its policy clamped to the debtor's compliance profile."""
        return self.campaign_for_kind(case.debtor.kind)

    def campaign_for_kind(self, kind: DebtorKind) -> Campaign:
        """The campaign of debtors of ``kind``, clamped to their compliance profile."""
        profiles = self.settings.profiles
        profile = profiles.get(kind) or profiles[DebtorKind.BUSINESS]  # as policy.profile_for
        # Clamped once per profile, not once per case (~10 µs, as much as planning the case),
        # and again only when a reload has swapped the rules or the settings.
        cached = self._campaigns.get(profile.name)
        if cached is None or cached[0] is not self.rules or cached[1] is not profile:
            campaign = self.rules.campaigns[profile.campaign]
            clamped = replace(campaign, policy=effective_policy(campaign.policy, profile))
            cached = self._campaigns[profile.name] = (self.rules, profile, clamped)
        return cached[2]

    def plan(self, case: Case, history: list[HistoryEntry], now: datetime) -> Action:
        calendar = self.calendar(case.debtor.country, case.debtor.region)
        return plan(case, self.campaign_for(case), history, calendar, now)

    def plan_facts(self, facts: PlanFacts, history: list[HistoryEntry], now: datetime) -> Action:
        """``plan`` from what a planning pass reads of a case (``store.cases.load_plan_facts``)."""
        calendar = self.calendar(facts.country, facts.region)
        return plan_facts(facts, self.campaign_for_kind(facts.kind), history, calendar, now)

    def render(
        self,
        case: Case,
        step: Step,
        identity: Identity,
        now: datetime,
        previous: list[PreviousMessage] | None = None,
        instalment: Mapping[str, Any] | None = None,
    ) -> RenderedEmail:
        profile = profile_for(case.debtor, self.settings.profiles)
        line = opt_out_line(case.debtor.lang) if profile.opt_out_line else None
        today = now.astimezone(UTC).date()
        context = build_context(
            case, step, self.settings.creditor, identity, today, previous or [], opt_out=line,
            instalment=instalment,
        )  # fmt: skip
        return render(
            self.rules.templates, case.debtor.lang, step.template, context, opt_out_line=line
        )


def sample_cases(settings: Settings) -> Iterator[Case]:
    """The shipped sample ledger as cases, in memory: what `mailer check` renders templates with."""
    from mailer.store.ledger import import_invoices, import_payments, load_cases

    store = Store.open(None)
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    import_invoices(
        store, parse_invoices(SAMPLE_DIR / "invoices.csv"), now, "sample", settings.profiles
    )
    import_payments(
        store, parse_payments(SAMPLE_DIR / "payments.csv"), now, "sample", settings.profiles
    )
    yield from load_cases(store)
    store.close()


def _representative(cases: Iterable[Case]) -> list[Case]:
    """Per language and debtor kind: the case with most invoices and one with a single invoice."""
    chosen: dict[tuple[str, str, bool], Case] = {}
    for case in cases:
        key = (case.debtor.lang, case.debtor.kind.value, len(case.open_invoices) > 1)
        best = chosen.get(key)
        if best is None or len(case.open_invoices) > len(best.open_invoices):
            chosen[key] = case
    return list(chosen.values())


def sample_contexts(
    settings: Settings, campaigns: dict[str, Campaign], cases: Iterable[Case] | None = None
) -> Iterator[dict[str, Any]]:
    """One context per representative sample case: every template meets real data shapes.

    Contexts differ by step only in the step's own values, so one step per case suffices;
    the check renders every template against every context anyway.
    """
    identity = settings.identities[0]
    for case in _representative(sample_cases(settings)) if cases is None else cases:
        profile = profile_for(case.debtor, settings.profiles)
        campaign = campaigns.get(profile.campaign)
        if campaign is None or not campaign.steps:
            continue
        line = opt_out_line(case.debtor.lang) if profile.opt_out_line else None
        step = campaign.steps[-1]
        yield build_context(case, step, settings.creditor, identity, date(2026, 6, 1), opt_out=line)


def instalment_contexts(
    settings: Settings, cases: Iterable[Case]
) -> dict[str, list[dict[str, Any]]]:
    """Contexts for the instalment templates: each case's balance in 3 monthly instalments.

    Each template meets the first instalment with nothing paid, and the third with arrears.
    """
    identity = settings.identities[0]
    today = date(2026, 6, 1)
    contexts: dict[str, list[dict[str, Any]]] = {name: [] for name in TEMPLATES}
    for case in cases:
        try:
            schedule = split(case.balance, 3, today, 30)
        except ValueError:
            continue  # a sample case too small to split says nothing about the templates
        plan = [Instalment(n, due, amount, today) for n, due, amount in schedule]
        profile = profile_for(case.debtor, settings.profiles)
        line = opt_out_line(case.debtor.lang) if profile.opt_out_line else None
        for seq, paid in ((1, ZERO), (3, plan[0].amount)):
            values = template_values(plan, seq, paid)
            for step in steps_for(seq):
                context = build_context(
                    case, step, settings.creditor, identity, today, opt_out=line, instalment=values
                )
                contexts[step.template].append(context)
    return contexts


def rate_warnings(today: date) -> list[str]:
    """Warn when today's statutory rate is not yet in the table (it is carried forward)."""
    warnings = []
    for kind in DebtorKind:
        period = rate_on(today, kind)
        if period.provisional:
            warnings.append(
                f"mailer/domain/rates.py:1: warning: no published {kind.value} interest rate for "
                f"{today}; the last one is carried forward and marked provisional"
            )
    return warnings
