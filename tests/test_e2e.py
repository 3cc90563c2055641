"""End to end on real mail servers: whole escalations by the real daemon against Postfix and Dovecot.

One mail environment and one creditor (``world``, tests/e2e_harness.py) for the module; each
scenario adds its own debtor with its own mailboxes at the world's current simulated moment and
moves the shared clock, so earlier cases keep running (and must keep quiet) while later
scenarios play out. The last test exports and verifies the evidence of every case and checks
each debtor's mailbox against it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta

import pytest
from babel.dates import format_date
from e2e_harness import MADRID, World, header_message_id, open_world, wait_for
from mailenv import ACCOUNTS, BILLING, UNKNOWN_DEBTOR
from mailenv.fixtures import require_mailenv

BLOCK = "550 5.7.1 Sender blocked by recipient"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_mailenv()
    with open_world() as opened:
        yield opened


def test_1_a_debtor_who_forgot_pays_after_the_second_reminder(world: World) -> None:
    debtor = world.add_debtor("forgot", ("forgot@debtor.test",))
    address = debtor.addresses[0]
    world.advance_until(lambda: len(world.mailbox(address)) == 2, days=14, what="two reminders")
    assert world.senders(address) == [BILLING, BILLING]
    assert "1 cases fully paid" in world.pay(debtor)
    world.advance(days=30)
    assert len(world.mailbox(address)) == 2  # no more mail
    case = world.case(debtor)
    assert case["status"] == "resolved" and case["closed_at"] is not None
    assert [m["state"] for m in world.outbox(debtor)] == ["sent", "sent"]


def _next_day_of_month(day: date, wanted: int) -> date:
    while day.day != wanted:
        day += timedelta(days=1)
    return day


def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), MADRID).astimezone(UTC)


def test_2_a_promise_to_pay_on_the_15th_pauses_the_case_until_then_and_it_resumes(
    world: World,
) -> None:
    # Start early in a month, so the 15th the debtor promises is days away, not weeks.
    world.advance_until(lambda: 1 <= world.local().day <= 7, days=31, what="early in a month")
    debtor = world.add_debtor("promise", ("promise@debtor.test",))
    address = debtor.addresses[0]
    world.advance_until(lambda: len(world.mailbox(address)) == 1, days=7, what="first reminder")
    world.reply(address, "Buenos días. Pagaré el día 15, disculpen el retraso.\nUn saludo, Ana")
    promised = _next_day_of_month(world.local().date(), 15)
    world.tick()
    until = _local_midnight(promised + timedelta(days=world.settings.inbound.promise_grace_days))
    case = world.case(debtor)
    assert (case["status"], case["paused_until"]) == ("paused", until.isoformat())
    assert [(r["intent"], r["reason"]) for r in world.reviews(debtor)] == [
        ("promise_to_pay", "promises to pay")
    ]
    world.advance_to(until - world.step)
    assert len(world.mailbox(address)) == 1  # nothing while the promise stands
    world.advance_until(lambda: len(world.mailbox(address)) == 2, days=7, what="resumed")
    assert world.case(debtor)["status"] == "active"  # still unpaid: the sequence goes on
    first, second = world.sent(debtor)
    assert datetime.fromisoformat(second["sent_at"]) >= until
    assert second["step"] > first["step"]
    assert world.mailbox(address)[1]["In-Reply-To"] == first["message_id"]  # same thread


def test_3_an_address_that_does_not_exist_bounces_and_the_second_address_is_used(
    world: World,
) -> None:
    debtor = world.add_debtor("second", (UNKNOWN_DEBTOR, "second@debtor.test"))
    second = debtor.addresses[1]
    world.advance_until(lambda: len(world.mailbox(second)) == 1, days=7, what="the resend")
    bounced, resent = world.sent(debtor)
    assert json.loads(bounced["recipients"]) == [UNKNOWN_DEBTOR]
    assert json.loads(resent["recipients"]) == [second]
    assert (resent["step"], resent["subject"]) == (bounced["step"], bounced["subject"])
    # Postfix's own DSN, in the creditor's INBOX, is what mailer acted on
    (dsn,) = [
        m
        for m in world.mailbox(BILLING)
        if m.get_content_type() == "multipart/report" and bounced["message_id"] in m.as_string()
    ]
    assert "MAILER-DAEMON" in str(dsn["From"])
    (received,) = world.inbound(debtor)
    assert (received["kind"], received["message_id"]) == ("bounce", str(dsn["Message-ID"]))
    assert world.contacts(debtor) == {UNKNOWN_DEBTOR: "undeliverable", second: "active"}
    assert world.mailbox(second)[0]["Subject"] == bounced["subject"]
    world.advance_until(lambda: len(world.mailbox(second)) == 2, days=10, what="the next step")
    assert [json.loads(m["recipients"]) for m in world.sent(debtor)[2:]] == [[second]]


def test_4_a_server_that_refuses_identity_a_gets_the_step_from_identity_b(world: World) -> None:
    debtor = world.add_debtor("refuses", ("refuses@debtor.test",))
    address = debtor.addresses[0]
    world.env.set_sender_blocks({BILLING: BLOCK}, recipients=[address])  # Postfix, at RCPT
    world.advance_until(lambda: len(world.mailbox(address)) == 1, days=7, what="a step arrives")
    refused, resent = world.outbox(debtor)
    assert (refused["identity"], refused["state"]) == ("billing", "failed")
    assert "550" in refused["last_error"] and "5.7.1" in refused["last_error"]
    assert (resent["identity"], resent["state"], resent["step"]) == (
        "accounts", "sent", refused["step"],
    )  # fmt: skip
    assert world.senders(address) == [ACCOUNTS]
    assert [(s["from"], s["to"]) for s in world.events(debtor, "identity_switched")] == [
        ("billing", "accounts")
    ]
    (verdict,) = world.events(debtor, "blocking_verdict")
    assert verdict["verdict"] == "likely_blocked" and "5.7.1" in str(verdict["evidence"])
    world.advance_until(lambda: len(world.mailbox(address)) == 2, days=10, what="the next step")
    assert world.senders(address) == [ACCOUNTS, ACCOUNTS]  # the case stays with B
    assert len(world.events(debtor, "identity_switched")) == 1


def test_5_a_mailbox_that_discards_identity_a_gets_the_step_from_b_after_k_silent_messages(
    world: World,
) -> None:
    debtor = world.add_debtor("discards", ("discards@debtor.test",))
    address = debtor.addresses[0]
    world.advance_until(lambda: len(world.mailbox(address)) == 1, days=7, what="first reminder")
    world.reply(address, "Recibido, lo revisamos esta semana y les decimos algo.")
    world.tick()
    case_id = world.case(debtor)["id"]
    assert world.case(debtor)["status"] == "paused"  # a reply: a person reads it first
    world.cli("resolve", str(case_id), "--resume")
    # From now on the debtor's mailbox accepts A's mail and silently drops it.
    world.env.set_sieve(address, f'if address :is "from" "{BILLING}" {{ discard; stop; }}\n')

    def from_b() -> list[sqlite3.Row]:
        return [m for m in world.outbox(debtor) if m["identity"] == "accounts"]

    world.advance_until(lambda: bool(from_b()), days=60, what="a step from identity B")
    silent = world.sent(debtor)[1:]
    k = world.settings.blocking.silence_after
    assert [m["identity"] for m in silent] == ["billing"] * k  # accepted, never seen
    assert world.env.sieve_discarded(address) == {m["message_id"] for m in silent}
    (switch,) = world.events(debtor, "identity_switched")
    assert (switch["from"], switch["to"]) == ("billing", "accounts")
    assert f"{k} accepted messages in a row went unanswered" in str(switch["why"])
    (step,) = from_b()
    if step["state"] == "awaiting_approval":  # the final notice: a person lets it go
        world.cli("approve", str(step["id"]))
    world.advance_until(lambda: len(world.mailbox(address)) == 2, days=7, what="B's step")
    assert world.senders(address) == [BILLING, ACCOUNTS]


def test_6_a_debtor_who_asks_to_stop_gets_no_more_mail_and_goes_to_review(world: World) -> None:
    debtor = world.add_debtor(
        "stop", ("stop@debtor.test", "stop-home@debtor.test"), kind="consumer"
    )
    address, other = debtor.addresses
    world.advance_until(lambda: len(world.mailbox(address)) == 1, days=7, what="first reminder")
    world.reply(address, "Por favor, dejen de escribirme. No quiero recibir más correos suyos.")
    world.tick()
    case = world.case(debtor)
    assert case["status"] == "review"
    assert world.contacts(debtor) == {address: "opted_out", other: "active"}
    assert [r["intent"] for r in world.reviews(debtor)] == ["stop_contact"]
    world.advance(days=45)
    assert world.senders(address) == [BILLING]  # nothing more, and no other identity tried
    assert world.mailbox(other) == []  # never routed around the refusal
    assert [(m["state"], m["identity"]) for m in world.outbox(debtor)] == [("sent", "billing")]
    assert world.case(debtor)["status"] == "review"


def test_7_a_debtor_on_holiday_gets_the_next_step_after_the_return_date(world: World) -> None:
    debtor = world.add_debtor("holiday", ("holiday@debtor.test",))
    address = debtor.addresses[0]
    back = world.local().date() + timedelta(days=12)
    spelled = format_date(back, "d 'de' MMMM 'de' y", locale="es")  # "23 de marzo de 2027"
    world.env.set_sieve(
        address,
        'require ["vacation"];\n'
        'vacation :days 1 :subject "Fuera de la oficina"\n'
        f'  "Estoy de vacaciones hasta el {spelled}, sin acceso al correo.'
        ' Para asuntos urgentes, llamen a la oficina.";\n',
    )
    world.advance_until(lambda: len(world.mailbox(address)) == 1, days=7, what="first reminder")
    world.tick()  # reads the auto-reply Dovecot's Sieve sent
    (auto,) = world.inbound(debtor)
    assert auto["kind"] == "autoreply"
    assert json.loads(auto["classification"])["return_date"] == back.isoformat()
    until = _local_midnight(back)
    case = world.case(debtor)
    assert (case["status"], case["paused_until"]) == ("paused", until.isoformat())
    world.advance_to(until - world.step)
    assert len(world.mailbox(address)) == 1  # nothing while away
    world.env.set_sieve(address, None)  # back at work
    world.advance_until(lambda: len(world.mailbox(address)) == 2, days=7, what="after return")
    assert datetime.fromisoformat(world.sent(debtor)[1]["sent_at"]) >= until
    assert world.reviews(debtor) == []  # an out-of-office is no reply for a person to read


def test_8_the_imap_server_restarts_in_the_middle_of_idle_and_nothing_is_missed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    debtor = world.add_debtor("idle", ("idle@debtor.test",))
    address = debtor.addresses[0]
    env = world.env
    world.advance_until(lambda: len(world.mailbox(address)) == 1, days=7, what="first reminder")
    answers = [
        world.answer(address, text)
        for text in (
            "¿Podrían reenviarme la factura en PDF? No la encuentro.",
            "Ya la he encontrado, gracias. Pagaré el día 30.",
            "Perdonen, una pregunta más: ¿el importe incluye el IVA?",
        )
    ]
    ids = [header_message_id(a) for a in answers]
    watcher = world.watcher("billing")  # the daemon's own watcher, run by its own loop

    def stored() -> list[str]:
        return [r["message_id"] for r in world.inbound(debtor)]

    def stored_first(n: int) -> Callable[[], bool]:
        return lambda: stored() == ids[:n]

    async def scenario() -> None:
        stopping = False
        task = asyncio.create_task(watcher.run(lambda: stopping))
        try:
            await wait_for(lambda: env.idling(BILLING), "the watcher in IDLE")
            await asyncio.to_thread(env.submit, answers[0], address, [BILLING])
            await wait_for(stored_first(1), "the answer that arrived during IDLE")
            for n, crash in ((1, False), (2, True)):
                await wait_for(lambda: env.idling(BILLING), "the watcher back in IDLE")
                # Dovecot goes away mid-IDLE (a restart: BYE; a crash: the socket just ends).
                await asyncio.to_thread(env.stop_dovecot, crash)
                await asyncio.to_thread(env.relay, answers[n], address, [BILLING])
                assert BILLING in env.queue()  # Postfix holds it: LMTP is down
                await asyncio.to_thread(env.start_dovecot)
                await asyncio.to_thread(env.flush_queue)
                await wait_for(stored_first(n + 1), "the answer that arrived while it was down")
        finally:
            stopping = True
            await task

    world.run(scenario())
    world.connect()  # the per-tick sessions died with the old Dovecot
    assert stored() == ids  # each answer once, in order
    # Both stops broke an IDLE in progress; the watcher reconnected and caught up each time.
    broken = [r.getMessage() for r in caplog.records if r.name == "mailer.mailbox.watcher"]
    assert sum("IMAP IDLE on INBOX" in line for line in broken) == 2, broken
    world.advance(days=7)
    case = world.case(debtor)
    assert (case["status"], case["paused_until"]) == ("paused", None)  # a person answers
    assert len(world.reviews(debtor)) == 3
    assert len(world.mailbox(address)) == 1


def test_the_evidence_of_every_case_verifies_and_matches_each_mailbox(world: World) -> None:
    assert world.debtors, "this test checks the scenarios above: run the whole module"
    world.advance(days=7)  # later mail would show in the mailboxes too
    for debtor in world.debtors.values():
        world.check_mailboxes(debtor)
    assert "ok:" in world.cli("evidence", "verify")
