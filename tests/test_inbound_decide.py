"""The pure inbound decisions: screening headers, matching a case, and what each message changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from mailer.domain.blocking import SignalKind
from mailer.domain.classify import Classification, FailedRecipient, Intent, Kind, Reason
from mailer.domain.inbound import (
    Blocked,
    CaseFacts,
    InboundRules,
    Note,
    Pause,
    Queue,
    Relevance,
    Resend,
    SentRef,
    SetContact,
    SoftBounce,
    ToReview,
    decide,
    match,
    read_headers,
    screen,
    stricter_pause,
)
from mailer.domain.models import CaseStatus, ContactStatus, DebtorKind

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
RULES = InboundRules(promise_grace_days=3, soft_bounce_limit=3, soft_retry=timedelta(hours=24))
SENT = SentRef(7, 1, "<m1@creditor.example>", step=1, resend=0, recipients=("a@debtor.example",))


def facts(
    kind: DebtorKind = DebtorKind.BUSINESS,
    status: CaseStatus = CaseStatus.ACTIVE,
    contacts: tuple[tuple[str, ContactStatus, int], ...] = (
        ("a@debtor.example", ContactStatus.ACTIVE, 0),
        ("b@debtor.example", ContactStatus.ACTIVE, 0),
    ),
    paused_until: datetime | None = None,
) -> CaseFacts:
    return CaseFacts(1, status, paused_until, kind, "Europe/Madrid", contacts)


def reply(intent: Intent, promised: date | None = None) -> Classification:
    return Classification(
        kind=Kind.HUMAN_REPLY,
        intent=intent,
        promised_date=promised,
        reply_text="texto",
        from_address="a@debtor.example",
        references=("<m1@creditor.example>",),
    )


def bounce(*recipients: FailedRecipient) -> Classification:
    return Classification(
        kind=Kind.BOUNCE, recipients=recipients, original_message_id="<m1@creditor.example>"
    )


def test_headers_screen_own_related_candidate_and_unrelated() -> None:
    ours = {"<m1@creditor.example>"}
    contacts = {"a@debtor.example"}
    own = read_headers(b"Message-ID: <m1@creditor.example>\r\nFrom: x@creditor.example\r\n")
    answer = read_headers(
        b"From: Someone <z@else.example>\r\nIn-Reply-To: <m1@creditor.example>\r\n"
    )
    from_debtor = read_headers(b"From: A <A@Debtor.example>\r\nSubject: hola\r\n")
    dsn = read_headers(
        b"From: MAILER-DAEMON@mx.example\r\nContent-Type: multipart/report;"
        b" report-type=delivery-status; boundary=x\r\n"
    )
    private = read_headers(b"From: friend@else.example\r\nSubject: lunch?\r\n")
    assert screen(own, ours, contacts) is Relevance.OWN
    assert screen(answer, ours, contacts) is Relevance.RELATED
    assert screen(from_debtor, ours, contacts) is Relevance.RELATED
    assert screen(dsn, ours, contacts) is Relevance.CANDIDATE
    assert screen(private, ours, contacts) is Relevance.UNRELATED
    with pytest.raises(ValueError):
        read_headers(b"")


def test_match_prefers_the_message_answered_then_the_address() -> None:
    c = reply(Intent.OTHER)
    assert match(c, {SENT.message_id: SENT}, {}) is not None
    by_ref = match(c, {SENT.message_id: SENT}, {"a@debtor.example": 9})
    assert by_ref is not None and by_ref.case_id == 1 and by_ref.message == SENT
    by_address = match(
        Classification(kind=Kind.HUMAN_REPLY, from_address="A@debtor.example"),
        {},
        {"a@debtor.example": 9},
    )
    assert by_address is not None and by_address.case_id == 9 and by_address.message is None
    assert match(Classification(kind=Kind.HUMAN_REPLY, from_address="x@y.example"), {}, {}) is None


def test_promise_with_a_date_pauses_until_it_plus_grace_and_queues() -> None:
    effects = decide(reply(Intent.PROMISE_TO_PAY, date(2026, 3, 15)), facts(), SENT, RULES, NOW)
    pause, queue = effects
    assert isinstance(pause, Pause) and isinstance(queue, Queue)
    # Midnight of the 18th in Madrid (UTC+1 in March).
    assert pause.until == datetime(2026, 3, 17, 23, 0, tzinfo=UTC)
    assert queue.intent is Intent.PROMISE_TO_PAY and queue.text == "texto"


@pytest.mark.parametrize("intent", [Intent.PAID_ALREADY, Intent.HARDSHIP, Intent.OTHER])
def test_other_replies_pause_until_a_person_acts(intent: Intent) -> None:
    pause, queue = decide(reply(intent), facts(), SENT, RULES, NOW)
    assert pause == Pause(None, pause.reason) and isinstance(queue, Queue)


def test_dispute_stops_the_sequence() -> None:
    effects = decide(reply(Intent.DISPUTE), facts(), SENT, RULES, NOW)
    assert isinstance(effects[0], ToReview) and effects[0].reason == "dispute"


def test_stop_contact_by_profile() -> None:
    consumer = decide(reply(Intent.STOP_CONTACT), facts(DebtorKind.CONSUMER), SENT, RULES, NOW)
    assert (
        SetContact("a@debtor.example", ContactStatus.OPTED_OUT, "asked not to be written to")
        in consumer
    )
    assert any(isinstance(e, ToReview) for e in consumer)  # never routed to address b
    business = decide(reply(Intent.STOP_CONTACT), facts(DebtorKind.BUSINESS), SENT, RULES, NOW)
    assert isinstance(business[0], Pause) and business[0].until is None
    assert not any(isinstance(e, SetContact) for e in business)


def test_hard_bounce_marks_the_address_and_resends_to_the_next() -> None:
    failed = FailedRecipient("a@debtor.example", Reason.USER_UNKNOWN, "5.1.1", True)
    effects = decide(bounce(failed), facts(), SENT, RULES, NOW)
    assert isinstance(effects[0], SetContact) and effects[0].status is ContactStatus.UNDELIVERABLE
    assert Resend(SENT, "b@debtor.example", NOW, "the address bounced: the next one") in effects


def test_hard_bounce_of_the_last_address_goes_to_review() -> None:
    failed = FailedRecipient("a@debtor.example", Reason.USER_UNKNOWN, "5.1.1", True)
    only = facts(contacts=(("a@debtor.example", ContactStatus.ACTIVE, 0),))
    effects = decide(bounce(failed), only, SENT, RULES, NOW)
    assert ToReview("no deliverable address left") in effects
    assert not any(isinstance(e, Resend) for e in effects)


def test_soft_bounces_retry_then_give_up_after_the_limit() -> None:
    full = FailedRecipient("a@debtor.example", Reason.MAILBOX_FULL, "5.2.2", True)
    first = decide(bounce(full), facts(), SENT, RULES, NOW)
    assert SoftBounce("a@debtor.example") in first
    assert any(
        isinstance(e, Resend) and e.to == "a@debtor.example" and e.at == NOW + timedelta(hours=24)
        for e in first
    )
    worn = facts(
        contacts=(
            ("a@debtor.example", ContactStatus.ACTIVE, 2),
            ("b@debtor.example", ContactStatus.ACTIVE, 0),
        )
    )
    last = decide(bounce(full), worn, SENT, RULES, NOW)
    assert isinstance(last[0], SetContact) and last[0].status is ContactStatus.UNDELIVERABLE
    delayed = FailedRecipient("a@debtor.example", Reason.EXPIRED, "4.4.7", False)
    assert all(isinstance(e, Note) for e in decide(bounce(delayed), facts(), SENT, RULES, NOW))


def test_blocking_bounces_are_left_to_the_failover() -> None:
    blocked = FailedRecipient("a@debtor.example", Reason.BLOCKED, "5.7.1", True)
    effects = decide(bounce(blocked), facts(), SENT, RULES, NOW)
    # Not a dead address: the contact stays active and the failover judges the sender.
    assert effects == (Blocked(SENT, "a@debtor.example", SignalKind.REFUSED, "blocked 5.7.1"),)
    spam = FailedRecipient("a@debtor.example", Reason.SPAM_DETECTED, "5.7.1", True)
    (effect,) = decide(bounce(spam), facts(), SENT, RULES, NOW)
    assert isinstance(effect, Blocked) and effect.kind is SignalKind.FILTERED


def test_autoreply_with_return_date_shifts_the_next_step() -> None:
    away = Classification(
        kind=Kind.AUTOREPLY, return_date=date(2026, 3, 10), from_address="a@debtor.example"
    )
    (pause,) = decide(away, facts(), SENT, RULES, NOW)
    assert isinstance(pause, Pause) and pause.until == datetime(2026, 3, 9, 23, 0, tzinfo=UTC)
    past = Classification(kind=Kind.AUTOREPLY, return_date=date(2026, 3, 1))
    assert isinstance(decide(past, facts(), SENT, RULES, NOW)[0], Note)


def test_spam_complaint_suppresses_the_address() -> None:
    arf = Classification(
        kind=Kind.FEEDBACK,
        recipients=(FailedRecipient("a@debtor.example", Reason.FEEDBACK, "", True),),
    )
    effects = decide(arf, facts(), SENT, RULES, NOW)
    assert SetContact("a@debtor.example", ContactStatus.OPTED_OUT, "spam complaint") in effects
    assert any(isinstance(e, ToReview) for e in effects)


def test_a_pause_never_loosens_a_stricter_state() -> None:
    later = NOW + timedelta(days=5)
    assert stricter_pause(CaseStatus.ACTIVE, None, Pause(later, "x")) == (CaseStatus.PAUSED, later)
    assert stricter_pause(CaseStatus.PAUSED, None, Pause(later, "x")) is None
    assert stricter_pause(CaseStatus.REVIEW, None, Pause(later, "x")) is None
    assert stricter_pause(CaseStatus.PAUSED, later, Pause(NOW, "x")) is None
    assert stricter_pause(CaseStatus.PAUSED, NOW, Pause(later, "x")) == (CaseStatus.PAUSED, later)
    assert stricter_pause(CaseStatus.PAUSED, later, Pause(None, "x")) == (CaseStatus.PAUSED, None)
