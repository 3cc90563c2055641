"""Campaign files (campaigns/*.toml, staff-edited) → validated Campaign values, or every problem."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import time
from pathlib import Path
from typing import Any

from mailer.domain.models import Campaign, Channel, ComplianceProfile, Policy, Step
from mailer.errors import ConfigError
from mailer.tomlsource import TomlSource

# Step and template names become file names under templates/<lang>/: keep them plain so a
# campaign can never point outside the template directory.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

ROOT_KEYS = frozenset({"description", "policy", "steps"})
POLICY_KEYS = frozenset({"weekdays", "window", "min_gap_days", "max_per_30_days", "skip_holidays"})
STEP_KEYS = frozenset({"name", "offset_days", "template", "channel", "approval", "fallback_smtp"})

# Names (English and Spanish, any case) or ISO 8601 numbers 1 = Monday … 7 = Sunday; the
# Policy value itself counts from Monday = 0 like Python's date.weekday().
WEEKDAY_NAMES = {
    **{n: i for i, n in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))},
    **{
        n: i
        for i, n in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
    **{n: i for i, n in enumerate(("lun", "mar", "mie", "jue", "vie", "sab", "dom"))},
    "mié": 2,
    "sáb": 5,
}

_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def step_line(path: Path, index: int) -> int:
    """The line of the ``index``-th ``[[steps]]`` header in ``path`` (1 if unreadable)."""
    return _source_text(path).line_of("steps", occurrence=index)


def _source_text(path: Path) -> TomlSource:
    """The file's text, for line numbers only: not parsed (it was, when it was loaded)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    return TomlSource(path=path, text=text, data={})


# --- value checks ----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python; `approval = 1` and `offset_days = true` are both typos.
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_time(text: str) -> time | None:
    match = _TIME_RE.match(text.strip())
    if not match:
        return None
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour == 24 and minute == 0:
        return time(23, 59, 59)  # "24:00" as an end of window: up to the end of the day
    if hour > 23 or minute > 59:
        return None
    return time(hour, minute)


def _weekday(value: object) -> int | None:
    if _is_int(value):
        assert isinstance(value, int)
        return value - 1 if 1 <= value <= 7 else None
    if isinstance(value, str):
        return WEEKDAY_NAMES.get(value.strip().lower())
    return None


def _unknown_keys(
    src: TomlSource, table: str, index: int, data: dict[str, Any], known: frozenset[str]
) -> None:
    for key in data:
        if key not in known:
            hint = ", ".join(sorted(known))
            src.problem(f"unknown key {key!r} (known: {hint})", table, key, index)


def _policy(src: TomlSource, raw: object) -> Policy:
    default = Policy()
    if raw is None:
        return default
    if not isinstance(raw, dict):
        src.problem("'policy' must be a table: [policy]", "", "policy")
        return default
    _unknown_keys(src, "policy", 0, raw, POLICY_KEYS)

    def bad(key: str, message: str) -> None:
        src.problem(f"policy.{key}: {message}", "policy", key)

    weekdays = default.weekdays
    if "weekdays" in raw:
        value = raw["weekdays"]
        if not isinstance(value, list) or not value:
            bad("weekdays", 'must be a non-empty list, e.g. ["mon", "tue", "wed", "thu", "fri"]')
        else:
            days = [_weekday(v) for v in value]
            wrong = [v for v, d in zip(value, days, strict=True) if d is None]
            if wrong:
                bad(
                    "weekdays",
                    f"unknown day(s) {', '.join(repr(w) for w in wrong)}: use mon…sun "
                    "or 1 (Monday) … 7 (Sunday)",
                )
            else:
                weekdays = frozenset(d for d in days if d is not None)

    start, end = default.window_start, default.window_end
    if "window" in raw:
        value = raw["window"]
        parts = value.split("-") if isinstance(value, str) else []
        times = [_parse_time(p) for p in parts] if len(parts) == 2 else []
        if len(times) != 2 or times[0] is None or times[1] is None:
            bad("window", f'must look like "09:00-18:00" (debtor-local), not {value!r}')
        elif times[0] >= times[1]:
            bad("window", f"start must be before end, got {value!r}")
        else:
            start, end = times[0], times[1]

    def positive(key: str, fallback: int) -> int:
        if key not in raw:
            return fallback
        value = raw[key]
        if not _is_int(value) or value < 1:
            bad(key, f"must be a whole number of at least 1, not {value!r}")
            return fallback
        return int(value)

    skip = default.skip_holidays
    if "skip_holidays" in raw:
        if isinstance(raw["skip_holidays"], bool):
            skip = raw["skip_holidays"]
        else:
            bad("skip_holidays", f"must be true or false, not {raw['skip_holidays']!r}")

    return Policy(
        weekdays=weekdays,
        window_start=start,
        window_end=end,
        min_gap_days=positive("min_gap_days", default.min_gap_days),
        max_per_30_days=positive("max_per_30_days", default.max_per_30_days),
        skip_holidays=skip,
    )


def _step(src: TomlSource, index: int, raw: dict[str, Any]) -> Step | None:
    _unknown_keys(src, "steps", index, raw, STEP_KEYS)
    before = len(src.problems)
    label = f"step {index + 1}"

    def bad(key: str, message: str) -> None:
        src.problem(f"{label}: {message}", "steps", key, index)

    def need(key: str, check: Callable[[object], bool], what: str) -> None:
        if key not in raw:
            bad(key, f"missing {key!r} ({what})")
        elif not check(raw[key]):
            bad(key, f"{key!r} must be {what}, not {raw[key]!r}")

    def may(key: str, check: Callable[[object], bool], what: str) -> None:
        if key in raw and not check(raw[key]):
            bad(key, f"{key!r} must be {what}, not {raw[key]!r}")

    def plain_name(v: object) -> bool:
        return isinstance(v, str) and bool(NAME_RE.match(v))

    name_what = "a lower-case name of letters, digits, '-' or '_'"
    need("name", plain_name, name_what)
    if isinstance(raw.get("name"), str):
        label = f"step {raw['name']!r}"
    need("offset_days", _is_int, "a whole number of business days (negative = before due)")
    may("template", plain_name, name_what)
    channels = ", ".join(c.value for c in Channel)
    may("channel", lambda v: v in {c.value for c in Channel}, f"one of {channels}")
    may("approval", lambda v: isinstance(v, bool), "true or false")
    may("fallback_smtp", lambda v: isinstance(v, bool), "true or false")
    if raw.get("fallback_smtp") is True and raw.get("channel", Channel.SMTP.value) == "smtp":
        bad("fallback_smtp", 'fallback_smtp = true needs channel = "mailchimp" or "mandrill"')
    if len(src.problems) > before:
        return None
    return Step(
        index=index,
        name=raw["name"],
        offset_days=raw["offset_days"],
        template=raw.get("template", raw["name"]),
        channel=Channel(raw.get("channel", Channel.SMTP.value)),
        approval=raw.get("approval", False),
        fallback_smtp=raw.get("fallback_smtp", False),
    )


def _steps(src: TomlSource, raw: object) -> tuple[Step, ...]:
    if raw is None or raw == []:
        src.problem("a campaign needs at least one [[steps]] table")
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        src.problem("'steps' must be a list of [[steps]] tables", "", "steps")
        return ()
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        step = _step(src, index, item)
        if step is None:
            continue
        if step.name in seen:
            first = seen[step.name] + 1
            src.problem(
                f"step name {step.name!r} is used twice (first in step {first})",
                "steps",
                "name",
                index,
            )
        seen.setdefault(step.name, index)
        if steps and step.offset_days <= steps[-1].offset_days:
            src.problem(
                f"step {step.name!r}: offset_days {step.offset_days} must be greater than "
                f"{steps[-1].offset_days} of the step before ({steps[-1].name!r})",
                "steps",
                "offset_days",
                index,
            )
        steps.append(step)
    return tuple(steps)


# --- entry points ----------------------------------------------------------------------------


def _parse(path: Path) -> tuple[Campaign | None, list[str]]:
    try:
        src = TomlSource.read(path)
    except ConfigError as exc:  # unreadable, or not TOML: its line and nothing more to check
        return None, exc.problems
    data = src.data
    if not NAME_RE.match(path.stem):
        src.problem(f"file name {path.stem!r}: use lower-case letters, digits, '-' or '_'")
    _unknown_keys(src, "", 0, data, ROOT_KEYS)
    description = data.get("description", "")
    if not isinstance(description, str):
        src.problem("'description' must be a string", "", "description")
        description = ""
    policy = _policy(src, data.get("policy"))
    steps = _steps(src, data.get("steps"))
    if src.problems:
        return None, src.problems
    campaign = Campaign(
        name=path.stem, description=description, steps=steps, policy=policy, source=str(path)
    )
    return campaign, []


def profile_problems(campaign: Campaign, profile: ComplianceProfile) -> list[str]:
    """Where ``campaign``'s policy is looser than ``profile`` allows, as file:line messages.

    The planner clamps to the profile anyway; this tells staff before their setting is ignored.
    """
    path = Path(campaign.source) if campaign.source else Path(f"{campaign.name}.toml")
    src = _source_text(path)
    policy, who = campaign.policy, f"the {profile.name} profile"
    if policy.window_start < profile.earliest or policy.window_end > profile.latest:
        window = f"{profile.earliest:%H:%M}-{profile.latest:%H:%M}"
        src.problem(f"policy.window: {who} allows only {window}", "policy", "window")
    if policy.max_per_30_days > profile.max_per_30_days:
        src.problem(
            f"policy.max_per_30_days: {who} allows at most {profile.max_per_30_days}",
            "policy",
            "max_per_30_days",
        )
    if policy.min_gap_days < profile.min_gap_days:
        src.problem(
            f"policy.min_gap_days: {who} needs at least {profile.min_gap_days}",
            "policy",
            "min_gap_days",
        )
    return src.problems


_CHANNEL_HINTS = {
    Channel.MAILCHIMP: ": add a [mailchimp] section to the configuration",
    Channel.MANDRILL: ": add a [mandrill] section to the configuration",
}


def channel_problems(
    campaigns: Mapping[str, Campaign], configured: Collection[Channel]
) -> list[str]:
    """Steps whose channel is not configured (e.g. "mailchimp" without [mailchimp]), file:line."""
    problems: list[str] = []
    for campaign in campaigns.values():
        path = Path(campaign.source) if campaign.source else Path(f"{campaign.name}.toml")
        for step in campaign.steps:
            if step.channel is not Channel.SMTP and step.channel not in configured:
                line = step_line(path, step.index)
                hint = _CHANNEL_HINTS.get(step.channel, "")
                problems.append(
                    f"{path}:{line}: step {step.name!r} uses channel {step.channel.value!r},"
                    f" which is not configured{hint}"
                )
    return problems


def load_campaign(path: Path) -> Campaign:
    """Read and validate one campaign file; ConfigError lists every problem as file:line."""
    campaign, problems = _parse(path)
    if campaign is None:
        raise ConfigError(problems)
    return campaign


def load_campaigns(directory: Path) -> dict[str, Campaign]:
    """Every ``*.toml`` in ``directory`` by name (the file stem); all problems of all files."""
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ConfigError([f"{directory}:0: no campaign files (*.toml)"])
    campaigns: dict[str, Campaign] = {}
    problems: list[str] = []
    for path in files:
        campaign, found = _parse(path)
        problems.extend(found)
        if campaign is not None:
            campaigns[campaign.name] = campaign
    if problems:
        raise ConfigError(problems)
    return campaigns
