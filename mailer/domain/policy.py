"""Guardrails: a campaign's policy clamped to the compliance profile of the debtor's kind."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from mailer.domain.models import (
    DEFAULT_PROFILES,
    Campaign,
    ComplianceProfile,
    Debtor,
    DebtorKind,
    Policy,
)

_WEEKDAYS = frozenset(range(7))


def profile_for(
    debtor: Debtor, profiles: Mapping[DebtorKind, ComplianceProfile] = DEFAULT_PROFILES
) -> ComplianceProfile:
    """The compliance profile of the debtor's kind; a kind without one gets ``business``'s."""
    return profiles.get(debtor.kind) or profiles[DebtorKind.BUSINESS]


def effective_policy(policy: Policy, profile: ComplianceProfile) -> Policy:
    """``policy`` made at least as strict as ``profile``: a campaign may tighten, never loosen.

    The window is intersected with [earliest, latest], the monthly cap is the smaller of the
    two and the minimum gap the larger. Weekdays and holidays are the campaign's own choice.
    The result may have an empty window: ``policy_problems`` reports it.
    """
    return replace(
        policy,
        window_start=max(policy.window_start, profile.earliest),
        window_end=min(policy.window_end, profile.latest),
        max_per_30_days=min(policy.max_per_30_days, profile.max_per_30_days),
        min_gap_days=max(policy.min_gap_days, profile.min_gap_days),
    )


def policy_problems(policy: Policy, profile: ComplianceProfile | None = None) -> list[str]:
    """What keeps ``policy`` (clamped to ``profile`` if given) from ever sending, for ``check``."""
    if profile is not None:
        policy = effective_policy(policy, profile)
    where = f" under the {profile.name} profile" if profile is not None else ""
    problems: list[str] = []
    if not policy.weekdays:
        problems.append("no weekday is allowed: nothing can ever be sent")
    elif not policy.weekdays <= _WEEKDAYS:
        bad = sorted(policy.weekdays - _WEEKDAYS)
        problems.append(f"weekdays {bad} are not 0 (Monday) to 6 (Sunday)")
    if policy.window_start >= policy.window_end:
        problems.append(
            f"the sending window {policy.window_start:%H:%M}-{policy.window_end:%H:%M}"
            f"{where} is empty: it must start before it ends, within one day"
        )
    if policy.max_per_30_days < 1:
        problems.append(f"max_per_30_days{where} is {policy.max_per_30_days}: it must be >= 1")
    if policy.min_gap_days < 0:
        problems.append(f"min_gap_days is {policy.min_gap_days}: it must be >= 0")
    return problems


def campaign_problems(campaign: Campaign, profile: ComplianceProfile | None = None) -> list[str]:
    """``policy_problems`` plus what the planner assumes of the steps: indices 0..n-1 in order."""
    problems = policy_problems(campaign.policy, profile)
    if not campaign.steps:
        problems.append("the campaign has no steps")
    for position, step in enumerate(campaign.steps):
        if step.index != position:
            problems.append(f"step {step.name!r} has index {step.index}, expected {position}")
    offsets = [step.offset_days for step in campaign.steps]
    if offsets != sorted(offsets):
        problems.append(f"step offsets {offsets} must not decrease: steps go in order")
    return problems
