"""The [inbound] section: defaults, and every bad value reported as file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.config import InboundSettings, load_settings
from mailer.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mailer.toml"


def test_example_and_defaults() -> None:
    assert load_settings(EXAMPLE).inbound == InboundSettings()


def test_bad_values_are_reported_with_their_lines(tmp_path: Path) -> None:
    text = (
        EXAMPLE.read_text(encoding="utf-8")
        .replace('folders = ["INBOX"]', "folders = []\nidle_seconds = 3600\nshiny = 1")
        .replace("soft_bounce_limit = 3 ", "soft_bounce_limit = -1 ")
        .replace("first_read_seconds = 120 ", "first_read_seconds = 0 ")
    )
    path = tmp_path / "mailer.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    problems = "\n".join(caught.value.problems)
    for expected in (
        "folders must be",
        "under 29 minutes",
        "unknown key 'shiny'",
        "soft_bounce_limit",
        "first_read_seconds must be a number > 0",
    ):
        assert expected in problems
    assert all(
        p.startswith(f"{path}:") and p.split(":")[1].isdigit() for p in caught.value.problems
    )
