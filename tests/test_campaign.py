"""Campaign files: the shipped ones load, and every mistake is reported at its file:line."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from mailer.domain.campaign import load_campaign, load_campaigns, profile_problems, step_line
from mailer.domain.models import DEFAULT_PROFILES, Channel, DebtorKind
from mailer.errors import ConfigError

CAMPAIGNS = Path(__file__).resolve().parent.parent / "campaigns"
STEP_NAMES = ["courtesy", "friendly", "checkin", "firm", "final", "handover"]

GOOD = """\
# a comment
description = "Test campaign"

[policy]
weekdays = ["mon", "Tue", 3, "jue", "friday"]
window = "08:30-20:00"
min_gap_days = 4
max_per_30_days = 3
skip_holidays = false

[[steps]]
name = "courtesy"
offset_days = -3

[[steps]]
name = "friendly"
offset_days = 3
template = "friendly-v2"
channel = "mailchimp"
fallback_smtp = true

[[steps]]
name = "final"
offset_days = 35
approval = true
"""


def write(tmp_path: Path, text: str, name: str = "test.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    return info.value.problems


def test_happy_path(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    campaign = load_campaign(path)
    assert campaign.name == "test"
    assert campaign.source == str(path)
    assert campaign.description == "Test campaign"
    assert campaign.policy.weekdays == frozenset({0, 1, 2, 3, 4})
    assert (campaign.policy.window_start, campaign.policy.window_end) == (time(8, 30), time(20))
    assert campaign.policy.min_gap_days == 4
    assert campaign.policy.max_per_30_days == 3
    assert campaign.policy.skip_holidays is False
    courtesy, friendly, final = campaign.steps
    assert [s.index for s in campaign.steps] == [0, 1, 2]
    assert courtesy.template == "courtesy"
    assert courtesy.channel is Channel.SMTP
    assert not courtesy.approval
    assert friendly.template == "friendly-v2"
    assert friendly.channel is Channel.MAILCHIMP
    assert friendly.fallback_smtp
    assert final.approval
    assert step_line(path, 2) == line_of(GOOD, "[[steps]]", 3)


def test_policy_defaults_when_omitted(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, '[[steps]]\nname = "a"\noffset_days = 1\n'))
    assert campaign.policy.weekdays == frozenset(range(5))
    assert campaign.description == ""


def test_shipped_campaigns() -> None:
    campaigns = load_campaigns(CAMPAIGNS)
    assert set(campaigns) == {"business", "consumer"}
    for campaign in campaigns.values():
        assert [s.name for s in campaign.steps] == STEP_NAMES
        offsets = {s.name: s.offset_days for s in campaign.steps}
        assert offsets["courtesy"] < 0 < offsets["friendly"]
        approved = {s.name for s in campaign.steps if s.approval}
        assert {"final", "handover"} <= approved
    for profile in DEFAULT_PROFILES.values():
        assert profile_problems(campaigns[profile.campaign], profile) == []
    consumer, business = campaigns["consumer"].policy, campaigns["business"].policy
    assert consumer.max_per_30_days < business.max_per_30_days
    assert time(8) <= consumer.window_start and consumer.window_end <= time(21)


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        (GOOD.replace("offset_days = 3\n", "offest_days = 3\n"), "offest_days", "unknown key"),
        (GOOD.replace('"mailchimp"', '"fax"'), '"fax"', "channel"),
        (GOOD.replace("offset_days = 35", "offset_days = 2"), "offset_days = 2", "greater"),
        (GOOD.replace("offset_days = 35", "offset_days = 3"), ("offset_days = 3", 2), "greater"),
        (GOOD.replace('name = "final"', 'name = "courtesy"'), ('name = "courtesy"', 2), "twice"),
        (GOOD.replace('"friday"', '"funday"'), "weekdays", "funday"),
        (GOOD.replace("3, ", "0, "), "weekdays", "unknown day"),
        (GOOD.replace('"08:30-20:00"', '"9-18"'), "window", "09:00-18:00"),
        (GOOD.replace('"08:30-20:00"', '"20:00-08:30"'), "window", "before end"),
        (GOOD.replace('"08:30-20:00"', '"08:30-25:00"'), "window", "09:00-18:00"),
        (GOOD.replace("min_gap_days = 4", "min_gap_days = 0"), "min_gap_days", "at least 1"),
        (GOOD.replace("= 3\nskip", "= -1\nskip"), "max_per_30_days", "at least 1"),
        (GOOD.replace("skip_holidays = false", 'skip_holidays = "no"'), "skip_hol", "true or"),
        (GOOD.replace("approval = true", 'approval = "yes"'), "approval", "true or false"),
        (GOOD.replace("offset_days = 35", "offset_days = true"), "offset_days = true", "whole"),
        (GOOD.replace("offset_days = 35", "offset_days = 3.5"), "offset_days = 3.5", "whole"),
        (GOOD.replace('"friendly-v2"', '"../../etc/passwd"'), "template =", "lower-case"),
        (GOOD.replace('name = "final"', 'name = "Final Notice"'), "Final Notice", "lower-case"),
        (GOOD.replace("[policy]", "[polcy]"), "[polcy]", "unknown key 'polcy'"),
        (GOOD.replace("description =", "descripton ="), "descripton", "unknown key"),
        (GOOD.replace("description = ", "description = 3 #"), "description", "string"),
    ],
)
def test_each_problem_at_its_line(
    tmp_path: Path, text: str, needle: str | tuple[str, int], message: str
) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    where = line_of(text, *needle) if isinstance(needle, tuple) else line_of(text, needle)
    expected = f"{path}:{where}: "
    assert any(p.startswith(expected) and message in p for p in problems), problems


def test_missing_required_key_points_at_its_step(tmp_path: Path) -> None:
    text = GOOD.replace("offset_days = 3\n", "")
    path = write(tmp_path, text)
    assert problems_of(path) == [
        f"{path}:{line_of(text, '[[steps]]', 2)}: step 'friendly': missing 'offset_days' "
        "(a whole number of business days (negative = before due))"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        GOOD.replace("offset_days = 3\n", "offest_days = 3\n")
        .replace('"mailchimp"', '"fax"')
        .replace("min_gap_days = 4", "min_gap_days = 0")
    )
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 4  # the typo, the then-missing offset_days, the channel, the gap


def test_toml_syntax_error_keeps_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("min_gap_days = 4", "min_gap_days = = 4")
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(text, 'min_gap_days')}: TOML syntax")


def test_at_least_one_step(tmp_path: Path) -> None:
    path = write(tmp_path, 'description = "empty"\n')
    assert problems_of(path) == [f"{path}:1: a campaign needs at least one [[steps]] table"]


def test_multiline_string_does_not_confuse_line_numbers(tmp_path: Path) -> None:
    text = 'description = """\n[[steps]]\nname = "x"\n"""\n' + GOOD.split("\n", 2)[2]
    text = text.replace('"mailchimp"', '"fax"')
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(text, 'fax')}: ")


def test_load_campaigns_reports_all_files(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "good.toml")
    bad1 = write(tmp_path, GOOD.replace('"mailchimp"', '"fax"'), "bad1.toml")
    bad2 = write(tmp_path, "x = [", "bad2.toml")
    with pytest.raises(ConfigError) as info:
        load_campaigns(tmp_path)
    assert [p.split(":")[0] for p in info.value.problems] == [str(bad1), str(bad2)]


def test_load_campaigns_by_stem_and_empty_directory(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "alpha.toml")
    write(tmp_path, GOOD, "beta.toml")
    assert sorted(load_campaigns(tmp_path)) == ["alpha", "beta"]
    with pytest.raises(ConfigError):
        load_campaigns(tmp_path / "nothing-here")


def test_profile_problems_point_at_policy_lines(tmp_path: Path) -> None:
    text = GOOD.replace('"08:30-20:00"', '"07:00-22:00"').replace("= 3\nskip", "= 9\nskip")
    path = write(tmp_path, text)
    problems = profile_problems(load_campaign(path), DEFAULT_PROFILES[DebtorKind.CONSUMER])
    assert problems == [
        f"{path}:{line_of(text, 'window')}: policy.window: the consumer profile allows only "
        "08:00-21:00",
        f"{path}:{line_of(text, 'max_per_30')}: policy.max_per_30_days: the consumer profile "
        "allows at most 3",
        f"{path}:{line_of(text, 'min_gap')}: policy.min_gap_days: the consumer profile needs "
        "at least 5",
    ]
