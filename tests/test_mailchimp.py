"""The Mailchimp channel end to end: the real SDK over HTTP against a local stand-in of the API."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import json
import logging
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakemailchimp import FakeMailchimp, md5
from loopback import PASSWORD
from mailchimp_setup import KEY, NOW, Clock, Office, add_case, clock, fake, make_app

from mailer.cli import main
from mailer.daemon import make_daemon
from mailer.domain.models import MessageState
from mailer.localservers import LocalMailServers
from mailer.store import outbox

__all__ = ["clock", "fake"]  # fixtures


def sent_parts(raw: bytes) -> tuple[str, str]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html = msg.get_body(("html",))
    text = msg.get_body(("plain",))
    assert html is not None and text is not None
    return str(html.get_content()), str(text.get_content())


def only_campaign(fake: FakeMailchimp) -> dict[str, Any]:
    assert len(fake.campaigns) == 1, fake.campaigns
    return next(iter(fake.campaigns.values()))


def test_a_step_becomes_a_scheduled_campaign_to_one_member(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    report = asyncio.run(office.tick())

    assert report.sent == 1 and report.errors == []
    [message] = office.messages()
    assert message.state is MessageState.SENT and message.channel == "mailchimp"
    # The member: added once, merge fields for the case (tags of at most 10 characters), tagged.
    member = fake.members[md5("d1@debtor.example")]
    assert member.status == "subscribed" and member.tags == {"mailer"}
    assert member.merge_fields == {
        "AMOUNTDUE": "1210.00 EUR",
        "INVOICES": "F-1",
        "DUEDATE": "2025-12-01",
        "PAYLINK": "https://pagos.taller-demo.example/factura/F-1",
    }
    assert all(len(tag) <= 10 for tag in fake.merge_fields)
    [put] = fake.calls("PUT", "/members/")
    assert put.body["status_if_new"] == "subscribed" and "status" not in put.body
    # The campaign: addressed to a static segment holding that one member.
    campaign = only_campaign(fake)
    segment = fake.segments[campaign["recipients"]["segment_opts"]["saved_segment_id"]]
    assert segment["emails"] == ["d1@debtor.example"] and segment["type"] == "static"
    assert campaign["type"] == "regular"
    assert campaign["settings"] == {
        "title": f"mailer {message.message_id}",
        "subject_line": message.subject,
        "from_name": "Departamento de cobros — Taller Demo S.L.",
        "reply_to": "cobros@taller-demo.example",
    }
    # What Mailchimp sends is mailer's own stored message, word for word.
    html, text = sent_parts(outbox.raw(app.store, message))
    assert fake.content[str(campaign["id"])]["html"] == html
    assert fake.content[str(campaign["id"])]["plain_text"] == text
    # Scheduled on the next quarter hour (UTC), inside the debtor's window; never sent twice.
    assert campaign["status"] == "schedule" and campaign["send_time"] == "2026-01-07T09:45:00+00:00"
    assert fake.launches == [(campaign["id"], "schedule")]
    # Every answer is evidence; the content answer holds the hash of exactly what was stored.
    calls = [e["data"]["call"] for e in office.events("mailchimp_api")]
    assert calls == [
        "merge_fields", "add_merge_field", "add_merge_field", "add_merge_field",
        "add_merge_field", "upsert_member", "tag_member", "create_segment", "create_campaign",
        "set_content", "schedule",
    ]  # fmt: skip
    content = next(e for e in office.events("mailchimp_api") if e["data"]["call"] == "set_content")
    digest = hashlib.sha256(html.encode()).hexdigest()
    assert content["data"]["body"]["html"]["sha256"] == digest
    [sent] = office.events("message_sent")
    assert sent["data"]["receipt"]["queue_id"] == campaign["id"]
    assert sent["data"]["receipt"]["extra"]["scheduled_for"] == "2026-01-07T09:45:00+00:00"
    assert app.store.verify_chain() is None

    # A second pass sends nothing more.
    asyncio.run(office.tick())
    assert len(fake.campaigns) == 1 and len(fake.launches) == 1


def test_a_plan_that_cannot_schedule_sends_at_once(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    fake.schedule_allowed = False  # the Free plan: the schedule action answers 403
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    report = asyncio.run(office.tick())

    assert report.sent == 1 and report.errors == []
    [campaign] = fake.campaigns.values()
    assert campaign["status"] == "sent" and fake.launches == [(campaign["id"], "send")]
    [unavailable] = office.events("mailchimp_schedule_unavailable")
    assert "403 Forbidden" in unavailable["data"]["error"]
    [sent] = office.events("message_sent")
    assert sent["data"]["receipt"]["extra"]["scheduled_for"] is None
    # Learnt once: the next campaign goes straight to "send".
    add_case(app, 2, tmp_path)
    clock.advance(minutes=1)
    assert asyncio.run(office.tick()).sent == 1
    assert [kind for _c, kind in fake.launches] == ["send", "send"]
    assert len(fake.calls("POST", "/actions/schedule$")) == 1


def test_reports_record_opens_and_clicks_as_engagement(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.tick())
    campaign_id = str(only_campaign(fake)["id"])

    clock.advance(minutes=20)  # past 09:45: Mailchimp sends it
    fake.deliver_scheduled()
    fake.open(campaign_id, "d1@debtor.example")
    fake.click(campaign_id, "d1@debtor.example", "https://pagos.taller-demo.example/factura/F-1")
    asyncio.run(office.tick())

    [went] = office.events("mailchimp_campaign_sent")
    assert went["data"]["emails_sent"] == 1
    opened, clicked = office.events("engagement")
    assert opened["case_id"] == 1
    assert opened["data"] == {
        "address": "d1@debtor.example", "channel": "mailchimp", "source": "mailchimp_open",
        "campaign_id": campaign_id, "at": "2026-01-07T09:50:00+00:00",
        "message_id": office.messages()[0].message_id,
    }  # fmt: skip
    assert clicked["data"]["source"] == "mailchimp_click"
    signals = app.store.conn.execute(
        "SELECT kind, source, address, detail FROM delivery_signals ORDER BY id"
    ).fetchall()
    assert signals == [
        ("engaged", "mailchimp", "d1@debtor.example", "open"),
        ("engaged", "mailchimp", "d1@debtor.example", "click"),
    ]
    # The next read-back (30 minutes on) records nothing twice.
    clock.advance(minutes=31)
    asyncio.run(office.tick())
    assert len(office.events("engagement")) == 2
    assert office.contact("d1@debtor.example") == "active" and office.case_status() == "active"


def test_a_hard_bounce_makes_the_address_undeliverable_and_tries_the_next(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.tick())
    campaign_id = str(only_campaign(fake)["id"])
    clock.advance(minutes=20)
    fake.deliver_scheduled()
    fake.bounce(campaign_id, "d1@debtor.example", "hard")  # Mailchimp cleans the member too
    asyncio.run(office.tick())

    [bounced] = office.events("mailchimp_bounce")
    assert bounced["data"]["type"] == "hard"
    [member] = office.events("mailchimp_member")
    assert member["data"]["status"] == "cleaned" and member["data"]["previous"] == "subscribed"
    assert office.contact("d1@debtor.example") == "undeliverable"
    # As with an SMTP hard bounce: the same reminder goes to the debtor's next address, once.
    [resend] = office.events("message_resend_planned")
    assert resend["data"]["to"] == "otra1@debtor.example"
    [copy] = office.messages("resend = 1")
    assert copy.recipients == ("otra1@debtor.example",) and copy.channel == "mailchimp"
    asyncio.run(office.tick())
    assert fake.members[md5("otra1@debtor.example")].status == "subscribed"
    assert len(fake.campaigns) == 2


def test_an_unsubscribe_suppresses_the_address_for_good(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    app = make_app(tmp_path, fake, fallback=True)
    office = Office(app, clock)
    asyncio.run(office.tick())
    clock.advance(minutes=20)
    fake.deliver_scheduled()
    fake.set_status("d1@debtor.example", "unsubscribed")
    asyncio.run(office.tick())

    assert office.contact("d1@debtor.example") == "opted_out"
    assert office.case_status() == "review"
    reviews = app.store.conn.execute("SELECT reason FROM reviews").fetchall()
    assert reviews == [("d1@debtor.example unsubscribed through Mailchimp",)]
    # Nothing is sent any more, by any channel, and mailer never tries to re-subscribe anyone.
    clock.advance(days=20)
    asyncio.run(office.tick())
    assert len(office.messages()) == 1
    assert all("status" not in r.body for r in fake.calls("PUT", "/members/"))
    assert fake.members[md5("d1@debtor.example")].status == "unsubscribed"


def test_an_abuse_report_is_a_refusal(tmp_path: Path, fake: FakeMailchimp, clock: Clock) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.tick())
    campaign_id = str(only_campaign(fake)["id"])
    clock.advance(minutes=20)
    fake.deliver_scheduled()
    fake.abuse(campaign_id, "d1@debtor.example")
    asyncio.run(office.tick())

    [abuse] = office.events("mailchimp_abuse")
    assert abuse["data"]["address"] == "d1@debtor.example"
    assert office.contact("d1@debtor.example") == "opted_out"
    assert office.case_status() == "review"
    [contact] = office.events("contact_status")
    assert contact["data"]["reason"] == "spam complaint"
    # The member was unsubscribed by the complaint: no second review for the same news.
    assert app.store.conn.execute("SELECT count(*) FROM reviews").fetchone() == (1,)


@pytest.mark.parametrize("status", ["cleaned", "unsubscribed", "pending"])
def test_a_member_mailchimp_will_not_send_to_is_refused(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock, status: str
) -> None:
    fake.add_member("d1@debtor.example", status)
    app = make_app(tmp_path, fake, fallback=True)
    office = Office(app, clock)
    asyncio.run(office.tick())

    [message] = office.messages("resend = 0")
    assert message.state is MessageState.FAILED
    [failed] = office.events("send_failed")
    assert failed["data"]["error"] == (
        f"Mailchimp will not send to d1@debtor.example: the audience member is {status}"
    )
    assert fake.campaigns == {} and fake.launches == []
    assert fake.members[md5("d1@debtor.example")].status == status  # never forced
    copies = office.messages("resend = 1")
    if status == "cleaned":  # a hard bounce: the next address, on the same channel
        assert office.contact("d1@debtor.example") == "undeliverable"
        assert [(c.channel, c.recipients) for c in copies] == [
            ("mailchimp", ("otra1@debtor.example",))
        ]
    elif status == "unsubscribed":  # a refusal: never routed around, even with fallback_smtp
        assert office.contact("d1@debtor.example") == "opted_out"
        assert copies == [] and office.case_status() == "review"
    else:  # not a refusal by the person: the step's SMTP fallback, same words
        assert [(c.channel, c.recipients) for c in copies] == [("smtp", ("d1@debtor.example",))]
        [fallback] = office.events("mailchimp_fallback")
        assert fallback["data"]["of"] == message.message_id
        assert sent_parts(outbox.raw(app.store, copies[0])) == sent_parts(
            outbox.raw(app.store, message)
        )


def test_a_compliance_state_without_fallback_goes_to_a_person(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    fake.forgotten.add("d1@debtor.example")  # permanently deleted: cannot be re-imported
    app = make_app(tmp_path, fake, fallback=False)
    office = Office(app, clock)
    asyncio.run(office.tick())

    [message] = office.messages()
    assert message.state is MessageState.FAILED
    [error] = [e for e in office.events("mailchimp_api") if "error" in e["data"]]
    assert error["data"]["problem"]["title"] == "Forgotten Email Not Subscribed"
    assert office.case_status() == "review"
    [reason] = app.store.conn.execute("SELECT reason FROM reviews").fetchone()
    assert reason == (
        "Mailchimp will not send to d1@debtor.example (compliance): send it another way,"
        " or set fallback_smtp"
    )


def test_429_is_retried_later_then_sent(tmp_path: Path, fake: FakeMailchimp, clock: Clock) -> None:
    fake.fail("PUT", r"/members/\w+$", 429)
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    first = asyncio.run(office.tick())

    assert first.deferred == 1 and first.sent == 0
    [deferred] = office.events("send_deferred")
    assert deferred["data"]["error"] == (
        "lists.set_list_member: 429 Too Many Requests"
        " You have exceeded the limit of 10 simultaneous connections."
    )
    assert deferred["data"]["retry_at"] == "2026-01-07T09:31:00+00:00"
    clock.advance(minutes=1)
    second = asyncio.run(office.tick())
    assert second.sent == 1
    assert len(fake.campaigns) == 1 and len(fake.launches) == 1


def test_400_is_recorded_with_its_body_and_shown_in_the_case(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    fake.fail("POST", r"/campaigns$", 400, "Invalid Resource", "The campaign could not be made.")
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    report = asyncio.run(office.tick())

    assert report.failed == 1
    [message] = office.messages()
    assert message.state is MessageState.FAILED
    [error] = [e for e in office.events("mailchimp_api") if "error" in e["data"]]
    problem = error["data"]["problem"]
    assert set(problem) == {"type", "title", "status", "detail", "instance"}
    assert (problem["status"], problem["title"]) == (400, "Invalid Resource")
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        main, ["--config", str(app.settings.source), "--now", NOW.isoformat(), "case", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "campaigns.create: 400 Invalid Resource The campaign could not be made." in result.output


def test_a_schedule_that_never_answered_is_not_repeated_blindly(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    """The line drops before Mailchimp takes the schedule: asked, then scheduled once."""
    fake.fail("POST", r"/actions/schedule$", 0)
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.outbound.tick(clock.now))
    [message] = office.messages()
    assert message.state is MessageState.SENDING  # uncertain: left for reconciliation
    assert fake.launches == []

    clock.advance(minutes=1)
    asyncio.run(office.tick())  # reconcile: the campaign is still a draft → queued again
    asyncio.run(office.tick())  # the same campaign is scheduled
    [message] = office.messages()
    assert message.state is MessageState.SENT
    assert len(fake.campaigns) == 1 and len(fake.launches) == 1
    [retry] = office.events("send_retry_after_reconcile")
    assert "is save, not launched" in retry["data"]["found"]


def test_a_lost_answer_to_schedule_is_reconciled_without_a_second_send(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    """Mailchimp took the schedule but the answer was lost (as a crash right after would)."""
    fake.fail("POST", r"/actions/schedule$", 0, after=True)
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.outbound.tick(clock.now))
    assert office.messages()[0].state is MessageState.SENDING

    clock.advance(minutes=1)
    asyncio.run(office.tick())
    [message] = office.messages()
    assert message.state is MessageState.SENT
    [sent] = office.events("message_sent")
    assert sent["data"]["reconciled"] is True and sent["data"]["status"] == "schedule"
    assert len(fake.launches) == 1 and len(fake.calls("POST", "/actions/")) == 1


def test_a_crash_between_create_and_send_finds_the_campaign_again(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    """The campaign was made but its id never recorded: found by its unique title, reused."""
    fake.fail("POST", r"/campaigns$", 0, after=True)
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.tick())
    [message] = office.messages()
    assert message.state is MessageState.DEFERRED and len(fake.campaigns) == 1

    clock.advance(minutes=2)
    asyncio.run(office.tick())
    [message] = office.messages()
    assert message.state is MessageState.SENT
    assert len(fake.campaigns) == 1 and len(fake.launches) == 1
    found = [e for e in office.events("mailchimp_api") if e["data"]["call"] == "find_campaign"]
    assert found[0]["data"]["body"]["id"] == next(iter(fake.campaigns))


def test_a_crash_after_create_is_reconciled_from_mailchimp(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    """A process killed with the message in "sending" and the campaign made: the next start asks
    Mailchimp (the campaign is a draft), queues the message again, and launches that campaign."""
    fake.fail("PUT", r"/content$", 0)  # stands in for the kill: the attempt stops there
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.tick())
    [message] = office.messages()
    assert message.state is MessageState.DEFERRED
    # What a SIGKILL right after the create would have left: the claim committed, no outcome.
    outbox.move(app.store, message, MessageState.SENDING, clock.now, "send_attempt", {})
    restarted = Office(app, clock)  # a new process: nothing remembered in memory
    clock.advance(minutes=1)
    asyncio.run(restarted.tick())
    asyncio.run(restarted.tick())

    [message] = restarted.messages()
    assert message.state is MessageState.SENT
    assert len(fake.campaigns) == 1 and len(fake.launches) == 1


def test_the_api_key_never_reaches_the_logs_or_the_evidence(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 and requests log every request at DEBUG
    fake.fail("PUT", r"/members/", 500, detail=f"a proxy quoting the request: apikey={KEY}")
    fake.fail("POST", r"/segments$", 0)
    app = make_app(tmp_path, fake, cases=2)
    office = Office(app, clock)
    asyncio.run(office.tick())
    clock.advance(minutes=5)
    asyncio.run(office.tick())

    assert all(m.state is MessageState.SENT for m in office.messages())
    assert fake.requests and all(r.authorization.startswith("Basic ") for r in fake.requests)
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "HTTP/1.1" in logged  # the requests were logged, at DEBUG…
    secret = KEY.split("-")[0]
    assert secret not in logged  # …and never the key
    bodies = [json.dumps(e) for e in app.store.events()]
    assert not any(secret in b for b in bodies)
    errors = [m.message_id for m in office.messages()]
    assert errors and not any(secret in str(r.body) for r in fake.requests)


def test_the_daemon_sends_a_mailchimp_step_and_falls_back_to_smtp(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock, servers: LocalMailServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """make_daemon wires the channel: one debtor by Mailchimp, one (not yet confirmed in the
    audience) by the step's SMTP fallback through the real submission server."""
    monkeypatch.setenv("MAILER_DEMO_PASSWORD", PASSWORD)
    fake.add_member("d2@debtor.example", "pending")
    app = make_app(tmp_path, fake, cases=2, fallback=True, servers=servers)
    app.store.close()
    daemon = make_daemon(app.settings, clock)

    async def run() -> None:
        await daemon.tick()  # d1: campaign scheduled; d2: refused, SMTP copy queued
        clock.advance(minutes=1)
        await daemon.tick()  # the SMTP copy goes
        await daemon.close()

    asyncio.run(run())
    [campaign] = fake.campaigns.values()
    segment = campaign["recipients"]["segment_opts"]["saved_segment_id"]
    assert fake.segments[segment]["emails"] == ["d1@debtor.example"]
    assert fake.launches == [(campaign["id"], "schedule")]
    copies = [m for m in servers.sink_messages() if "d2@debtor.example" in m.rcpt_tos]
    assert len(copies) == 1
    assert not [m for m in servers.sink_messages() if "d1@debtor.example" in m.rcpt_tos]
    html, _text = sent_parts(copies[0].data)
    assert fake.members[md5("d2@debtor.example")].status == "pending"
    assert "F-2" in html


def test_a_failing_read_back_waits_for_its_next_turn(
    tmp_path: Path, fake: FakeMailchimp, clock: Clock
) -> None:
    app = make_app(tmp_path, fake)
    office = Office(app, clock)
    asyncio.run(office.tick())
    campaign_id = str(only_campaign(fake)["id"])
    clock.advance(minutes=20)
    fake.deliver_scheduled()
    fake.open(campaign_id, "d1@debtor.example")
    fake.fail("GET", r"/email-activity/", 503)
    report = asyncio.run(office.tick())

    assert report.errors == [
        "mailchimp read-back 1: reports.get_email_activity_for_subscriber:"
        " 503 Service Unavailable An error occurred."
    ]
    asked = len(fake.calls("GET", r"/email-activity/"))
    clock.advance(minutes=1)
    asyncio.run(office.tick())  # not yet: the next look is poll_minutes on
    assert len(fake.calls("GET", r"/email-activity/")) == asked
    clock.advance(minutes=30)
    asyncio.run(office.tick())
    assert [e["data"]["source"] for e in office.events("engagement")] == ["mailchimp_open"]
