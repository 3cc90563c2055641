"""Campaign files (campaigns/*.toml, staff-edited) → validated Campaign values, or every problem."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

from mailer.domain.models import Campaign, Channel, ComplianceProfile, Policy, Step
from mailer.errors import ConfigError

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

_TOML_LINE_RE = re.compile(r"\(at line (\d+), column \d+\)")
_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?")
_KEY_RE = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*[.=]")
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


# --- where things are in the source --------------------------------------------------------


@dataclass
class _Locator:
    """Line numbers of tables and keys, found by scanning the text (tomllib gives none)."""

    tables: dict[tuple[str, int], int] = field(default_factory=dict)  # ("steps", n) -> line
    keys: dict[tuple[str, int, str], int] = field(default_factory=dict)

    @classmethod
    def scan(cls, text: str) -> _Locator:
        loc = cls()
        table: tuple[str, int] = ("", 0)
        counts: dict[str, int] = {}
        in_multiline: str | None = None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                # Inside a multi-line string: nothing here is a key or a header.
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER_RE.match(line)
            if header and not line.lstrip().startswith("#"):
                name = header.group(2).strip().strip("\"'")
                index = counts.get(name, 0)
                counts[name] = index + 1
                table = (name, index if header.group(1) == "[[" else 0)
                loc.tables.setdefault(table, lineno)
                continue
            key = _KEY_RE.match(line)
            if key:
                loc.keys.setdefault((*table, key.group(1).strip("\"'")), lineno)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_multiline = quote
                    break
        return loc

    def table(self, name: str, index: int = 0) -> int:
        return self.tables.get((name, index), 1)

    def key(self, table: str, index: int, key: str) -> int:
        found = self.keys.get((table, index, key))
        if found is not None:
            return found
        if table == "":
            # A root key may be a table header: `[polcy]` is the unknown key "polcy".
            return self.tables.get((key, 0), 1)
        return self.table(table, index)


def step_line(path: Path, index: int) -> int:
    """The line of the ``index``-th ``[[steps]]`` header in ``path`` (1 if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 1
    return _Locator.scan(text).table("steps", index)


# --- value checks ----------------------------------------------------------------------------


class _Problems:
    def __init__(self, path: Path, locator: _Locator) -> None:
        self.path = path
        self.locator = locator
        self.items: list[str] = []

    def at(self, line: int, message: str) -> None:
        self.items.append(f"{self.path}:{line}: {message}")

    def key(self, table: str, index: int, key: str, message: str) -> None:
        self.at(self.locator.key(table, index, key), message)


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
    problems: _Problems, table: str, index: int, data: dict[str, Any], known: frozenset[str]
) -> None:
    for key in data:
        if key not in known:
            hint = ", ".join(sorted(known))
            problems.key(table, index, key, f"unknown key {key!r} (known: {hint})")


def _policy(problems: _Problems, raw: object) -> Policy:
    default = Policy()
    if raw is None:
        return default
    if not isinstance(raw, dict):
        problems.key("", 0, "policy", "'policy' must be a table: [policy]")
        return default
    _unknown_keys(problems, "policy", 0, raw, POLICY_KEYS)

    def bad(key: str, message: str) -> None:
        problems.key("policy", 0, key, f"policy.{key}: {message}")

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


def _step(problems: _Problems, index: int, raw: dict[str, Any]) -> Step | None:
    _unknown_keys(problems, "steps", index, raw, STEP_KEYS)
    before = len(problems.items)
    label = f"step {index + 1}"

    def bad(key: str, message: str) -> None:
        problems.key("steps", index, key, f"{label}: {message}")

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
    if len(problems.items) > before:
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


def _steps(problems: _Problems, raw: object) -> tuple[Step, ...]:
    if raw is None or raw == []:
        problems.at(1, "a campaign needs at least one [[steps]] table")
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        problems.key("", 0, "steps", "'steps' must be a list of [[steps]] tables")
        return ()
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        step = _step(problems, index, item)
        if step is None:
            continue
        if step.name in seen:
            problems.key(
                "steps",
                index,
                "name",
                f"step name {step.name!r} is used twice (first in step {seen[step.name] + 1})",
            )
        seen.setdefault(step.name, index)
        if steps and step.offset_days <= steps[-1].offset_days:
            problems.key(
                "steps",
                index,
                "offset_days",
                f"step {step.name!r}: offset_days {step.offset_days} must be greater than "
                f"{steps[-1].offset_days} of the step before ({steps[-1].name!r})",
            )
        steps.append(step)
    return tuple(steps)


# --- entry points ----------------------------------------------------------------------------


def _parse(path: Path) -> tuple[Campaign | None, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}:1: cannot read: {exc}"]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE_RE.search(str(exc))
        line = match.group(1) if match else "1"
        return None, [f"{path}:{line}: TOML syntax: {_TOML_LINE_RE.sub('', str(exc)).strip()}"]

    problems = _Problems(path, _Locator.scan(text))
    if not NAME_RE.match(path.stem):
        problems.at(1, f"file name {path.stem!r}: use lower-case letters, digits, '-' or '_'")
    _unknown_keys(problems, "", 0, data, ROOT_KEYS)
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.key("", 0, "description", "'description' must be a string")
        description = ""
    policy = _policy(problems, data.get("policy"))
    steps = _steps(problems, data.get("steps"))
    if problems.items:
        return None, problems.items
    campaign = Campaign(
        name=path.stem, description=description, steps=steps, policy=policy, source=str(path)
    )
    return campaign, []


def profile_problems(campaign: Campaign, profile: ComplianceProfile) -> list[str]:
    """Where ``campaign``'s policy is looser than ``profile`` allows, as file:line messages.

    The planner clamps to the profile anyway; this tells staff before their setting is ignored.
    """
    path = Path(campaign.source) if campaign.source else Path(f"{campaign.name}.toml")
    try:
        locator = _Locator.scan(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        locator = _Locator()
    problems = _Problems(path, locator)
    policy, who = campaign.policy, f"the {profile.name} profile"
    if policy.window_start < profile.earliest or policy.window_end > profile.latest:
        window = f"{profile.earliest:%H:%M}-{profile.latest:%H:%M}"
        problems.key("policy", 0, "window", f"policy.window: {who} allows only {window}")
    if policy.max_per_30_days > profile.max_per_30_days:
        problems.key(
            "policy",
            0,
            "max_per_30_days",
            f"policy.max_per_30_days: {who} allows at most {profile.max_per_30_days}",
        )
    if policy.min_gap_days < profile.min_gap_days:
        problems.key(
            "policy",
            0,
            "min_gap_days",
            f"policy.min_gap_days: {who} needs at least {profile.min_gap_days}",
        )
    return problems.items


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
