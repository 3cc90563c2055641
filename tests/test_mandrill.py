"""The Mandrill channel end to end: the real SDK over HTTP against a local stand-in of the API."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mailchimp_setup
import pytest
from click.testing import CliRunner
from fakemandrill import FakeMandrill
from mailchimp_setup import HEADER, NOW, ROW, Clock, clock

from mailer.app import App
from mailer.cli import main
from mailer.config import load_settings
from mailer.daemon import make_daemon
from mailer.demo import write_config
from mailer.domain.models import MessageState
from mailer.errors import ConfigError, TemporaryError
from mailer.flows.mandrill import MandrillChannel
from mailer.flows.mandrill_readback import MandrillFlow, build_mandrill
from mailer.flows.outbound import Outbound, TickReport
from mailer.ledger import parse_invoices
from mailer.store import outbox
from mailer.store.ledger import import_invoices

__all__ = ["clock"]  # fixtures

KEY = "md-Xq7vR2kP9sL4tW8yZ1aB3c"
KEY_ENV = "MAILER_TEST_MANDRILL_KEY"
FROM = "cobros@taller-demo.example"


@pytest.fixture
def fake(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMandrill]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeMandrill(KEY, clock).running() as running:
        yield running


def write_campaigns(directory: Path, *, fallback: bool) -> Path:
    """The shipped campaigns with every step on the Mandrill channel."""
    mailchimp_setup.write_campaigns(directory, fallback=fallback)
    for path in directory.glob("*.toml"):
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace('channel = "mailchimp"', 'channel = "mandrill"'))
    return directory


def write_mandrill_config(tmp_path: Path, fake: FakeMandrill, *, fallback: bool = False,
                          section: bool = True) -> Path:  # fmt: skip
    servers = SimpleNamespace(smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1",
                              imap_port=9)  # fmt: skip
    path = write_config(tmp_path, servers, grace_seconds=0)  # type: ignore[arg-type]
    campaigns = write_campaigns(tmp_path / "campaigns", fallback=fallback)
    text = re.sub(r'(?m)^campaigns = ".*"$', f'campaigns = "{campaigns}"', path.read_text())
    if section:
        text += (f'\n[mandrill]\napi_key_env = "{KEY_ENV}"\nbase_url = "{fake.base_url}"\n'
                 "poll_minutes = 30\n")  # fmt: skip
    path.write_text(text, encoding="utf-8")
    return path


def make_app(tmp_path: Path, fake: FakeMandrill, *, cases: int = 1, fallback: bool = False) -> App:
    app = App.open(load_settings(write_mandrill_config(tmp_path, fake, fallback=fallback)))
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(HEADER + "".join(ROW.format(n=n) for n in range(1, cases + 1)))
    import_invoices(app.store, parse_invoices(ledger), NOW, "invoices.csv", app.settings.profiles)
    return app


class Office(mailchimp_setup.Office):
    """The outbound pass and the Mandrill pass, as the daemon runs them, one tick at a time."""

    def __init__(self, app: App, clock: Clock) -> None:  # not super(): that builds Mailchimp
        channels, flows = build_mandrill(app, clock)
        self.app = app
        self.clock = clock
        self.channel = channels["mandrill"]
        assert isinstance(self.channel, MandrillChannel)
        self.outbound = Outbound(app, {}, None, channels=channels)
        self.flow: MandrillFlow = flows[0]  # type: ignore[assignment]

    def run(self, ticks: int = 1, **advance: float) -> TickReport:
        report = TickReport()
        for _ in range(ticks):
            if advance:
                self.clock.advance(**advance)
            report = asyncio.run(self.tick())
        return report

    def reviews(self) -> list[str]:
        return [r[0] for r in self.app.store.conn.execute("SELECT reason FROM reviews")]

    def handed_over_early(self) -> tuple[outbox.OutboxMessage, bytes]:
        """The first step's message, planned now, its time set to 11:00 UTC (an hour and a
        half ahead), as the channel would get it if the outbox handed it over early."""
        self.outbound.plan_due(self.clock.now, TickReport())
        message = only(self.messages())
        later = self.clock.now.replace(hour=11, minute=0)
        outbox.record(self.app.store, message, self.clock.now, "held", {}, next_attempt_at=later)
        return only(self.messages()), outbox.raw(self.app.store, message)


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def test_a_step_goes_out_as_the_exact_stored_bytes(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    report = office.run()

    assert report.sent == 1 and report.errors == []
    message = only(office.messages())
    assert message.state is MessageState.SENT and message.channel == "mandrill"
    request = only(fake.calls(r"^/api/1\.\d+/messages/send-raw\.json$"))
    # Byte for byte what the evidence log holds, to the envelope recipient, from the identity.
    assert request.body["raw_message"].encode("utf-8") == outbox.raw(app.store, message)
    assert request.body["to"] == ["d1@debtor.example"]
    assert request.body["from_email"] == FROM
    assert request.body["from_name"] == "Departamento de cobros — Taller Demo S.L."
    assert request.body["async"] is False and "send_at" not in request.body
    sent = only(fake.sent())
    assert (sent.email, sent.state, sent.subject) == ("d1@debtor.example", "sent", message.subject)
    receipt = only(office.events("message_sent"))["data"]["receipt"]
    assert receipt["queue_id"] == sent.id and receipt["server"] == "mandrill"
    assert receipt["extra"] == {"channel": "mandrill", "status": "sent", "scheduled_for": None}
    answer = only(office.events("mandrill_api"))["data"]
    assert answer["call"] == "send_raw" and answer["body"][0]["_id"] == sent.id
    assert app.store.verify_chain() is None

    office.run(minutes=1)  # nothing is sent twice
    assert len(fake.calls("send-raw")) == 1


def test_the_daemon_wires_the_channel(
    tmp_path: Path, fake: FakeMandrill, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILER_DEMO_PASSWORD", "unused: no SMTP step")
    app = make_app(tmp_path, fake)
    app.store.close()
    daemon = make_daemon(app.settings, clock)

    async def run() -> TickReport:
        report = await daemon.tick()
        await daemon.close()
        return report

    assert asyncio.run(run()).sent == 1
    assert only(fake.sent()).email == "d1@debtor.example"


def test_a_message_handed_over_before_its_time_is_scheduled(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    """send_at is the message's own time when that is still ahead (the daemon's outbox hands a
    message over when due: then Mandrill sends at once)."""
    office = Office(make_app(tmp_path, fake), clock)
    message, raw = office.handed_over_early()

    receipt = asyncio.run(office.channel.send(FROM, message.recipients, raw))
    assert only(fake.calls("send-raw")).body["send_at"] == "2026-01-07 11:00:00"
    scheduled = only(list(fake.messages.values()))
    assert scheduled.state == "scheduled" and receipt.queue_id == scheduled.id
    assert receipt.extra["scheduled_for"] == "2026-01-07T11:00:00+00:00"
    # Read back from its time on: Mandrill knows it once it has gone.
    clock.advance(hours=2)
    fake.deliver_scheduled()
    asyncio.run(office.flow.tick(clock.now, TickReport()))
    assert only(office.events("mandrill_state"))["data"]["state"] == "sent"


def test_scheduling_without_a_paid_balance_waits_instead_of_sending_early(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    fake.positive_balance = False
    office = Office(make_app(tmp_path, fake), clock)
    message, raw = office.handed_over_early()

    for _ in range(2):  # the second time Mandrill is not asked again
        with pytest.raises(TemporaryError, match="2026-01-07T11:00:00"):
            asyncio.run(office.channel.send(FROM, message.recipients, raw))
    assert len(fake.calls("send-raw")) == 1 and fake.messages == {}
    unavailable = only(office.events("mandrill_schedule_unavailable"))
    assert "PaymentRequired" in unavailable["data"]["error"]
    # When its time comes the outbox hands it over, and it goes at once.
    clock.now = message.next_attempt_at
    assert office.run().sent == 1
    assert "send_at" not in fake.calls("send-raw")[-1].body and len(fake.sent()) == 1


def test_a_hard_bounce_rejection_makes_the_address_undeliverable_and_tries_the_next(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    fake.denylist["d1@debtor.example"] = "hard-bounce"
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    report = office.run()

    assert report.failed == 1
    first = only(office.messages("resend = 0"))
    assert first.state is MessageState.FAILED
    assert only(office.events("send_failed"))["data"]["error"] == (
        "Mailchimp Transactional will not send to d1@debtor.example: rejected (hard-bounce)"
    )
    assert office.contact("d1@debtor.example") == "undeliverable"
    copy = only(office.messages("resend = 1"))
    assert copy.recipients == ("otra1@debtor.example",) and copy.channel == "mandrill"
    office.run(minutes=1)
    assert only(fake.sent()).email == "otra1@debtor.example"


@pytest.mark.parametrize("reason", ["spam", "unsub"])
def test_a_complaint_or_unsubscribe_rejection_suppresses_and_is_never_routed_around(
    tmp_path: Path, fake: FakeMandrill, clock: Clock, reason: str
) -> None:
    fake.denylist["d1@debtor.example"] = reason
    app = make_app(tmp_path, fake, fallback=True)
    office = Office(app, clock)
    office.run()

    assert office.contact("d1@debtor.example") == "opted_out"
    assert office.case_status() == "review" and len(office.reviews()) == 1
    assert len(office.messages()) == 1  # no SMTP copy, no next address
    office.run(days=20)
    assert len(office.messages()) == 1 and fake.sent() == []


@pytest.mark.parametrize("fallback", [True, False])
def test_a_rejection_by_the_accounts_own_rules_falls_back_or_asks_a_person(
    tmp_path: Path, fake: FakeMandrill, clock: Clock, fallback: bool
) -> None:
    fake.denylist["d1@debtor.example"] = "custom"  # put on the denylist by hand
    app = make_app(tmp_path, fake, fallback=fallback)
    office = Office(app, clock)
    office.run()

    copies = office.messages("resend = 1")
    if fallback:
        assert [(c.channel, c.recipients) for c in copies] == [("smtp", ("d1@debtor.example",))]
        assert only(office.events("mandrill_fallback"))["data"]["why"] == "custom"
    else:
        assert copies == [] and office.case_status() == "review"
        assert office.reviews() == [
            "Mailchimp Transactional will not send to d1@debtor.example (custom): send it another"
            " way, or set fallback_smtp"
        ]
    assert office.contact("d1@debtor.example") == "active"


def test_an_unverified_sending_domain_holds_the_identity_until_it_is_fixed(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    fake.verified_domains.clear()
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    report = office.run()

    assert report.deferred == 1
    message = only(office.messages())
    assert message.state is MessageState.DEFERRED
    error = only(office.events("send_deferred"))["data"]["error"]
    assert "rejects mail from cobros@taller-demo.example (unsigned)" in error
    assert office.contact("d1@debtor.example") == "active"  # not the address's fault
    fake.verified_domains.add("taller-demo.example")  # DKIM and SPF set up in Mandrill
    office.run(minutes=15)
    assert only(office.messages()).state is MessageState.SENT and len(fake.sent()) == 1


def test_429_is_retried_later_then_sent(tmp_path: Path, fake: FakeMandrill, clock: Clock) -> None:
    fake.fail("send-raw", 429)
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    first = office.run()

    assert first.deferred == 1 and first.sent == 0
    deferred = only(office.events("send_deferred"))
    assert deferred["data"]["error"] == "messages.send_raw: 429 Too Many Requests"
    assert deferred["data"]["retry_at"] == "2026-01-07T09:31:00+00:00"
    assert office.run(minutes=1).sent == 1
    assert len(fake.sent()) == 1


def test_an_invalid_key_is_recorded_and_shown_in_the_case(
    tmp_path: Path, fake: FakeMandrill, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "md-not-the-key")
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    report = office.run()

    assert report.failed == 1 and only(office.messages()).state is MessageState.FAILED
    error = only(office.events("mandrill_api"))["data"]
    assert error["body"] == {"status": "error", "code": -1, "name": "Invalid_Key",
                             "message": "Invalid API key"}  # fmt: skip
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        main, ["--config", str(app.settings.source), "--now", NOW.isoformat(), "case", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "messages.send_raw: Invalid_Key Invalid API key" in result.output


def test_a_lost_answer_is_settled_by_asking_mandrill_not_by_sending_again(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    """Mandrill took the message but the answer never came back (as a crash right after the
    request would leave it): a restarted process finds it with messages/search."""
    fake.fail("send-raw", 0, after=True)
    app = make_app(tmp_path, fake)
    asyncio.run(Office(app, clock).outbound.tick(clock.now))
    assert only(outbox.select(app.store, "1 = 1")).state is MessageState.SENDING
    assert len(fake.sent()) == 1

    office = Office(app, clock)  # a new process: nothing remembered in memory
    office.run(minutes=2)
    message = only(office.messages())
    assert message.state is MessageState.SENT
    sent = only(office.events("message_sent"))["data"]
    assert sent["reconciled"] is True and sent["mandrill_id"] == only(fake.sent()).id
    assert len(fake.calls("send-raw")) == 1 and len(fake.calls("messages/search")) == 1
    # The read-back starts from there.
    fake.open(only(fake.sent()).id)
    office.run(minutes=31)
    assert [e["data"]["source"] for e in office.events("engagement")] == ["mandrill_open"]


def test_a_request_that_never_reached_mandrill_is_sent_once(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    fake.fail("send-raw", 0)  # the line drops before Mandrill carries the request out
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.outbound.tick(clock.now))
    assert only(office.messages()).state is MessageState.SENDING and fake.messages == {}

    office.run(minutes=1)  # reconcile: not there → queued again
    office.run(minutes=1)  # sent
    assert only(office.messages()).state is MessageState.SENT
    assert len(fake.sent()) == 1
    retry = only(office.events("send_retry_after_reconcile"))
    assert retry["data"]["found"] == "Mandrill has no such message"


def test_opens_and_clicks_are_read_back_as_engagement(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    office.run()
    mandrill_id = only(fake.sent()).id
    clock.advance(minutes=10)
    fake.open(mandrill_id)
    fake.click(mandrill_id, "https://pagos.taller-demo.example/factura/F-1")
    office.run(minutes=21)  # the first read-back is poll_minutes after the send

    opened, clicked = office.events("engagement")
    assert opened["data"] == {
        "address": "d1@debtor.example", "channel": "mandrill", "source": "mandrill_open",
        "mandrill_id": mandrill_id, "at": "2026-01-07T09:40:00+00:00",
        "message_id": office.messages()[0].message_id,
    }  # fmt: skip
    assert clicked["data"]["url"] == "https://pagos.taller-demo.example/factura/F-1"
    signals = app.store.conn.execute(
        "SELECT kind, source, address, detail FROM delivery_signals ORDER BY id"
    ).fetchall()
    assert signals == [
        ("engaged", "mandrill", "d1@debtor.example", "open"),
        ("engaged", "mandrill", "d1@debtor.example", "click"),
    ]
    assert only(office.events("mandrill_state"))["data"]["state"] == "sent"
    office.run(minutes=31)  # read again: nothing recorded twice
    assert len(office.events("engagement")) == 2 and len(fake.calls("messages/info")) == 2


def test_a_hard_bounce_read_back_tries_the_next_address(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    office.run()
    fake.bounce(only(fake.sent()).id, hard=True, diag="550 5.1.1 <d1@debtor.example>: no such user")
    office.run(minutes=31)

    state = only(office.events("mandrill_state"))["data"]
    assert state["state"] == "bounced" and "5.1.1" in state["diag"]
    assert office.contact("d1@debtor.example") == "undeliverable"
    assert only(office.events("message_resend_planned"))["data"]["to"] == "otra1@debtor.example"
    office.run(minutes=31)  # settled: not read again; the copy goes to the next address
    assert len(fake.calls("messages/info")) == 1
    assert [m.email for m in fake.sent()] == ["d1@debtor.example", "otra1@debtor.example"]


@pytest.mark.parametrize(
    ("act", "reason"),
    [("complain", "spam complaint"), ("unsubscribe", "unsubscribed through Mandrill")],
)
def test_a_complaint_or_unsubscribe_read_back_suppresses_the_address(
    tmp_path: Path, fake: FakeMandrill, clock: Clock, act: str, reason: str
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    office.run()
    getattr(fake, act)(only(fake.sent()).id)
    office.run(minutes=31)

    assert office.contact("d1@debtor.example") == "opted_out"
    assert office.case_status() == "review"
    assert only(office.events("contact_status"))["data"]["reason"] == reason
    office.run(days=20)
    assert len(fake.calls("send-raw")) == 1


def test_the_api_key_never_reaches_the_logs_or_the_evidence(
    tmp_path: Path, fake: FakeMandrill, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 and requests log every request at DEBUG
    fake.fail("send-raw", 503, f'a proxy quoting the request: {{"key": "{KEY}"}}')
    fake.fail("messages/search", 500, "ServiceUnavailable")
    app = make_app(tmp_path, fake, cases=2)
    office = Office(app, clock)
    office.run()
    office.run(3, minutes=2)

    assert all(m.state is MessageState.SENT for m in office.messages())
    assert len(fake.sent()) == 2
    assert all(r.body["key"] == KEY for r in fake.requests)  # the key did travel, in the body
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "HTTP/1.1" in logged  # the requests were logged, at DEBUG…
    assert KEY not in logged  # …and never the key
    bodies = [json.dumps(e) for e in app.store.events()]
    assert any("[api key]" in b for b in bodies) and not any(KEY in b for b in bodies)


def test_check_accepts_mandrill_steps_only_with_the_section(
    tmp_path: Path, fake: FakeMandrill
) -> None:
    with pytest.raises(ConfigError, match="uses channel 'mandrill', which is not configured"):
        App.open(load_settings(write_mandrill_config(tmp_path, fake, section=False)))
    settings = load_settings(write_mandrill_config(tmp_path, fake))
    assert settings.mandrill is not None and settings.mandrill.poll_minutes == 30.0


def test_every_bad_value_is_reported_at_its_line(tmp_path: Path, fake: FakeMandrill) -> None:
    path = write_mandrill_config(tmp_path, fake, section=False)
    path.write_text(path.read_text() + '\n[mandrill]\napi_key = "md-abc"\n'
                    'base_url = "ftp://x"\npoll_minutes = 0\ncolour = "blue"\n')  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    lines = path.read_text().splitlines()
    found = {p.split(": ", 1)[1]: int(p.split(":")[1]) for p in raised.value.problems}
    assert set(found) == {
        "API keys never go in the file: use api_key_env or api_key_file",
        "[mandrill] needs api_key_env or api_key_file",
        "base_url must be an http:// or https:// address",
        "poll_minutes must be a number > 0",
        "unknown key 'colour' in [mandrill]",
        "unknown key 'api_key' in [mandrill]",
    }
    assert lines[found["base_url must be an http:// or https:// address"] - 1].startswith(
        "base_url"
    )
    assert lines[found["poll_minutes must be a number > 0"] - 1].startswith("poll_minutes")


def test_a_soft_bounce_rejection_tries_the_same_address_again_later(
    tmp_path: Path, fake: FakeMandrill, clock: Clock
) -> None:
    fake.denylist["d1@debtor.example"] = "soft-bounce"  # Mandrill holds it for a while
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    office.run()

    assert office.contact("d1@debtor.example") == "active"
    planned = only(office.events("message_resend_planned"))["data"]
    assert planned["to"] == "d1@debtor.example" and planned["at"] == "2026-01-08T09:30:00+00:00"
    del fake.denylist["d1@debtor.example"]
    office.run(hours=24)
    assert only(fake.sent()).email == "d1@debtor.example"
