"""The Mailchimp channel's pure parts, Mandrill webhook signatures, and the staff-edited settings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.config import MailchimpSettings, load_settings
from mailer.domain.campaign import channel_problems, load_campaign, load_campaigns
from mailer.domain.models import Channel
from mailer.errors import ConfigError
from mailer.transports.mailchimp import quarter_hour_after, subscriber_hash
from mailer.transports.mandrill import verify_webhook, webhook_signature

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mailer.toml"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-01-07T09:30:00+00:00", "2026-01-07T09:45:00+00:00"),
        ("2026-01-07T09:39:59+00:00", "2026-01-07T09:45:00+00:00"),  # 09:44:59 → the next :45
        ("2026-01-07T09:40:01+00:00", "2026-01-07T10:00:00+00:00"),  # 09:45:01 is past :45
        ("2026-01-07T23:56:00+00:00", "2026-01-08T00:15:00+00:00"),
        ("2026-01-07T10:30:00+01:00", "2026-01-07T09:45:00+00:00"),  # always said in UTC
    ],
)
def test_schedule_times_fall_on_the_quarter_hour(now: str, expected: str) -> None:
    when = quarter_hour_after(datetime.fromisoformat(now))
    assert when.isoformat() == expected and when.tzinfo == UTC


def test_the_subscriber_hash_is_the_md5_of_the_lower_cased_address() -> None:
    # Mailchimp's own example: https://mailchimp.com/developer/marketing/docs/methods-parameters/
    assert subscriber_hash("Urist.McVankab@freddiesjokes.com") == "62eeb292278cc15f5817cb78f7790b08"


def with_mailchimp(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text(EXAMPLE.read_text(encoding="utf-8") + "\n[mailchimp]\n" + section)
    return path


def test_a_valid_section_and_its_defaults(tmp_path: Path) -> None:
    settings = load_settings(with_mailchimp(tmp_path, 'audience_id = "a1"\napi_key_env = "K"\n'))
    assert settings.mailchimp == MailchimpSettings(audience_id="a1", api_key_env="K")
    assert load_settings(EXAMPLE).mailchimp is None  # no section: no channel


def test_every_bad_value_is_reported_at_its_line(tmp_path: Path) -> None:
    path = with_mailchimp(
        tmp_path,
        'api_key = "abc-us21"\n'
        'base_url = "http://server.local/3.0"\n'
        'server = "the moon"\n'
        "concurrency = 11\n"
        'new_member_status = "unsubscribed"\n'
        'reply_to = "not an address"\n'
        "schedule = 1\n"
        "tags = [1]\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    problems = caught.value.problems
    text = path.read_text().splitlines()

    def line_of(problem: str) -> str:
        return text[int(problem.split(":")[1]) - 1]

    expected = {
        "API keys never go in the file": "[mailchimp]",
        "needs 'audience_id'": "[mailchimp]",
        "needs api_key_env or api_key_file": "[mailchimp]",
        'may not contain the word "server"': "base_url",
        "data-center prefix": "[mailchimp]",
        "at most 10 connections": "concurrency",
        'new_member_status must be "subscribed" or "pending"': "[mailchimp]",
        "reply_to must be a plain email address": "reply_to",
        "schedule must be true or false": "schedule",
        "tags must be a list of names": "tags",
    }
    for words, where in expected.items():
        [found] = [p for p in problems if words in p]
        assert found.startswith(f"{path}:") and line_of(found).startswith(where), found
    assert "unknown key 'api_key'" in "\n".join(problems)


CAMPAIGN = """
[[steps]]
name = "friendly"
offset_days = 3
fallback_smtp = true

[[steps]]
name = "firm"
offset_days = 10
channel = "mandrill"
"""


def test_a_fallback_needs_a_channel_to_fall_back_from(tmp_path: Path) -> None:
    path = tmp_path / "odd.toml"
    path.write_text(CAMPAIGN)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path)
    [problem] = caught.value.problems
    assert problem == (
        f"{path}:5: step 'friendly': fallback_smtp = true needs channel = \"mailchimp\""
        ' or "mandrill"'
    )


def test_a_channel_without_its_configuration_is_reported(tmp_path: Path) -> None:
    (tmp_path / "odd.toml").write_text(CAMPAIGN.replace("fallback_smtp = true\n", ""))
    campaigns = load_campaigns(tmp_path)
    assert channel_problems(campaigns, {Channel.MANDRILL}) == []
    assert channel_problems(campaigns, {Channel.MAILCHIMP}) == [
        f"{tmp_path / 'odd.toml'}:6: step 'firm' uses channel 'mandrill', which is not"
        " configured: add a [mandrill] section to the configuration"
    ]
    mailchimp = {"odd": replace(campaigns["odd"], steps=(replace(campaigns["odd"].steps[1],
                                                          channel=Channel.MAILCHIMP),))}  # fmt: skip
    assert channel_problems(mailchimp, set()) == [
        f"{tmp_path / 'odd.toml'}:6: step 'firm' uses channel 'mailchimp', which is not"
        " configured: add a [mailchimp] section to the configuration"
    ]


# Signatures computed independently with `openssl dgst -sha1 -hmac KEY -binary | base64`.
EVENTS = '[{"event":"hard_bounce","_id":"abc123","msg":{"email":"d1@debtor.example"}}]'


def test_mandrill_webhook_signature_test_vectors() -> None:
    url = "https://mailer.example/hooks/mandrill?x=1"
    params = {"mandrill_events": EVENTS}
    assert webhook_signature("whk_3sWfQx9vYb2", url, params) == "UI3+UTfHob6UlBEPWsuICT1gzJo="
    # Keys are sorted before they are appended, whatever order the form came in.
    unsorted = {"b_key": "2", "a_key": "1"}
    assert (
        webhook_signature("k3y", "https://mailer.example/hooks/mandrill", unsorted)
        == "XhTNEQCWS9r7fO2g3BrpFZrvnkc="
    )


def test_mandrill_webhooks_are_refused_unless_signed_right() -> None:
    url = "https://mailer.example/hooks/mandrill?x=1"
    params = {"mandrill_events": EVENTS}
    good = "UI3+UTfHob6UlBEPWsuICT1gzJo="
    assert verify_webhook("whk_3sWfQx9vYb2", url, params, good)
    assert not verify_webhook("whk_3sWfQx9vYb2", url, params, None)
    assert not verify_webhook("another-key", url, params, good)
    assert not verify_webhook("whk_3sWfQx9vYb2", url + "/", params, good)  # not the exact URL
    tampered = {"mandrill_events": EVENTS.replace("hard_bounce", "open")}
    assert not verify_webhook("whk_3sWfQx9vYb2", url, tampered, good)
    assert not verify_webhook("whk_3sWfQx9vYb2", url, params, "ñ" + good)
