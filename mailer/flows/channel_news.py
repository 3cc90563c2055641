"""A sending channel's news (Mailchimp, Mandrill) acted on as the same news by mail would be."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from mailer.app import App
from mailer.compose import new_message_id
from mailer.domain.classify.model import Classification, FailedRecipient, Kind, Reason
from mailer.domain.inbound import (
    CaseFacts,
    Effect,
    InboundRules,
    Note,
    Queue,
    SentRef,
    SetContact,
    ToReview,
    bounce,
)
from mailer.domain.inbound import decide as decide_inbound
from mailer.domain.models import ContactStatus, MessageState
from mailer.flows.effects import CaseEffects, readdress
from mailer.store import inbound as store_inbound
from mailer.store import outbox
from mailer.store.ledger import load_cases

Decider = Callable[[CaseFacts, SentRef | None, datetime, InboundRules], Sequence[Effect]]


def observe(app: App, message: outbox.OutboxMessage, now: datetime, decide: Decider,
            source: str) -> None:  # fmt: skip
    """Decide on fresh facts and act through the effects mail acts through (in the caller's
    transaction): a channel's news changes a case as the same news by mail would."""
    facts = store_inbound.case_facts(app.store, message.case_id)
    if facts is None:
        return
    about = store_inbound.sent_refs(app.store, [message.message_id]).get(message.message_id)
    effects = CaseEffects(app)
    for effect in decide(facts, about, now, effects.rules):
        effects.apply(effect, facts, now, identity=message.identity, source=source)


def falls_back(app: App, message: outbox.OutboxMessage) -> bool:
    """Does the message's step (still the same step) say ``fallback_smtp = true``?"""
    case = next(iter(load_cases(app.store, [message.case_id])), None)
    if case is None:
        return False
    steps = app.campaign_for(case).steps
    step = steps[message.step] if message.step < len(steps) else None
    return step is not None and step.name == message.step_name and step.fallback_smtp


def fallback_smtp(app: App, message: outbox.OutboxMessage, address: str, why: str, now: datetime,
                  source: str) -> int:  # fmt: skip
    """The same message by SMTP, from the same identity: a new Message-ID, same words."""
    store = app.store
    settings = app.settings
    number = int(store.conn.execute(
        "SELECT coalesce(max(resend), 0) + 1 FROM messages WHERE case_id = ? AND step = ?",
        (message.case_id, message.step),
    ).fetchone()[0])  # fmt: skip
    message_id = new_message_id(settings.identity(message.identity), message.case_id, message.step)
    raw = readdress(outbox.raw(store, message), address, message_id, now)
    new = outbox.enqueue(
        store, case_id=message.case_id, step=message.step, step_name=message.step_name,
        channel="smtp", identity=message.identity, message_id=message_id, recipients=[address],
        subject=message.subject, raw=raw,
        in_reply_to=message.in_reply_to, state=MessageState.QUEUED, now=now,
        deadline=now + timedelta(hours=settings.retry_deadline_hours), resend=number,
    )  # fmt: skip
    assert new is not None
    store.append_event(now, f"{source}_fallback",
                       {"of": message.message_id, "message_id": message_id, "channel": "smtp",
                        "why": why},
                       case_id=message.case_id, message_id=message.id)  # fmt: skip
    return new


def hard_bounce(address: str, why: str, source: str) -> Decider:
    """A dead address: undeliverable, as with an SMTP 5.1.1; the next address gets the step."""
    failed = FailedRecipient(address, Reason.USER_UNKNOWN, "5.0.0", True, f"{source}: {why}")
    return lambda facts, about, now, rules: bounce((failed,), facts, about, rules, now)


def soft_bounce(address: str, why: str, source: str) -> Decider:
    """A soft bounce: counted; the same step goes to the same address again later."""
    failed = FailedRecipient(address, Reason.UNDEFINED, "", True, f"{source}: {why}")
    return lambda facts, about, now, rules: bounce((failed,), facts, about, rules, now)


def complaint(address: str, via: str) -> Decider:
    """A spam complaint: the address is suppressed, a person reviews."""
    report = Classification(Kind.FEEDBACK, (FailedRecipient(address, Reason.FEEDBACK, "", False),))

    def decide(facts: CaseFacts, about: SentRef | None, now: datetime,
               rules: InboundRules) -> Sequence[Effect]:  # fmt: skip
        if not _active(facts, address):
            return (Note(f"spam complaint through {via} for {address}, already suppressed"),)
        return decide_inbound(report, facts, about, rules, now)

    return decide


def unsubscribed(address: str, via: str) -> Decider:
    """An unsubscribe is a refusal: no more email to the address by any channel."""

    def decide(facts: CaseFacts, about: SentRef | None, now: datetime,
               rules: InboundRules) -> Sequence[Effect]:  # fmt: skip
        if not _active(facts, address):
            return (Note(f"{address} unsubscribed through {via}, already suppressed"),)
        return (
            SetContact(address, ContactStatus.OPTED_OUT, f"unsubscribed through {via}"),
            ToReview(f"unsubscribed through {via}: no more email to that address"),
            Queue(f"{address} unsubscribed through {via}"),
        )

    return decide


def _active(facts: CaseFacts, address: str) -> bool:
    known = facts.contact(address)
    return known is not None and known[1] is ContactStatus.ACTIVE
