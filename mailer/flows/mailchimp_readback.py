"""Mailchimp read-back: crash leftovers, refusals, and what reports say of launched campaigns."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any

from mailer.app import App
from mailer.compose import new_message_id
from mailer.config import MailchimpSettings, read_mailchimp_key
from mailer.domain.blocking import Signal, SignalKind
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
from mailer.flows.inbound import Inbound, readdress
from mailer.flows.mailchimp import CHANNEL, MailchimpChannel, call, parse_time, reconcile
from mailer.flows.outbound import TickReport
from mailer.store import blocking as store_blocking
from mailer.store import inbound as store_inbound
from mailer.store import mailchimp as sends
from mailer.store import outbox
from mailer.store.db import iso
from mailer.store.ledger import load_cases
from mailer.transports.base import Transport
from mailer.transports.mailchimp import MailchimpApi

log = logging.getLogger(__name__)


def build_channels(
    app: App, clock: Callable[[], datetime]
) -> tuple[dict[str, Transport], list[MailchimpFlow]]:
    """The configured channels besides SMTP and their read-back flows (none without [mailchimp]).

    The API key is read now and kept in memory only.
    """
    settings = app.settings.mailchimp
    if settings is None:
        return {}, []
    api = MailchimpApi(settings, read_mailchimp_key(settings))
    return {CHANNEL: MailchimpChannel(app, api, clock)}, [MailchimpFlow(app, api)]


class MailchimpFlow:
    """One bounded pass: crash leftovers, refusals, and the read-back of launched campaigns."""

    def __init__(self, app: App, api: MailchimpApi) -> None:
        assert app.settings.mailchimp is not None
        self.app = app
        self.api = api
        self.settings: MailchimpSettings = app.settings.mailchimp

    async def tick(self, now: datetime, report: TickReport) -> None:
        """Each item on its own: one that fails is logged and tried again next pass."""
        store = self.app.store
        grace = now - timedelta(seconds=self.app.settings.reconcile_grace_seconds)
        stuck = outbox.select(store, "state = 'sending' AND channel = ?", (CHANNEL,))
        for message in (m for m in stuck if m.updated_at <= grace):
            work = reconcile(self.app, self.api, message, now)
            report.reconciled += await self._each(report, f"reconcile {message.id}", work)
        for row in sends.select(store, "channel = ? AND state = 'refused' AND outcome IS NULL",
                                (CHANNEL,)):  # fmt: skip
            await self._each(report, f"refusal {row.message}", self._settle_refusal(row, now))
        for row in sends.due_polls(store, CHANNEL, now):
            if not await self._each(report, f"read-back {row.message}", self._poll(row, now)):
                # Mailchimp down or the answer odd: look again later, not at every tick.
                sends.update(store, row.message, now, next_poll_at=now + self._every)

    async def _each(self, report: TickReport, what: str, work: Coroutine[Any, Any, None]) -> bool:
        try:
            await work
        except Exception as exc:  # a bad item never stops the pass
            log.warning("mailchimp %s: %s", what, exc)
            report.errors.append(f"mailchimp {what}: {exc}")
            return False
        return True

    # --- refusals -----------------------------------------------------------------------------

    async def _settle_refusal(self, row: sends.SendRow, now: datetime) -> None:
        """What a refusal leads to, once: cleaned → undeliverable (the bounce logic);
        unsubscribed → suppressed and reviewed (never routed around); otherwise the step's SMTP
        fallback, or a person."""
        store = self.app.store
        message = outbox.get(store, row.message)
        if message is None or message.state is not MessageState.FAILED:
            return  # the outbox has not recorded the refusal yet
        with store.transaction():
            if row.refusal == "cleaned":
                self._observe(message, now, _hard_bounce(row.address, "cleaned in Mailchimp"))
                outcome = "undeliverable"
            elif row.refusal == "unsubscribed":
                self._observe(message, now, _unsubscribed(row.address))
                outcome = "suppressed"
            elif self._falls_back(message):
                outcome = f"smtp:{self._fallback(message, row, now)}"
            else:
                why = f"Mailchimp will not send to {row.address} ({row.refusal})"
                self._observe(message, now, lambda facts, about, now, rules: (
                    ToReview(f"{why}; the step has no SMTP fallback"),
                    Queue(f"{why}: send it another way, or set fallback_smtp"),
                ))  # fmt: skip
                outcome = "review"
            sends.update(store, row.message, now, outcome=outcome)

    def _falls_back(self, message: outbox.OutboxMessage) -> bool:
        case = next(iter(load_cases(self.app.store, [message.case_id])), None)
        if case is None:
            return False
        steps = self.app.campaign_for(case).steps
        step = steps[message.step] if message.step < len(steps) else None
        return step is not None and step.name == message.step_name and step.fallback_smtp

    def _fallback(self, message: outbox.OutboxMessage, row: sends.SendRow, now: datetime) -> int:
        """The same message by SMTP, from the same identity: a new Message-ID, same words."""
        store = self.app.store
        settings = self.app.settings
        number = int(store.conn.execute(
            "SELECT coalesce(max(resend), 0) + 1 FROM messages WHERE case_id = ? AND step = ?",
            (message.case_id, message.step),
        ).fetchone()[0])  # fmt: skip
        message_id = new_message_id(
            settings.identity(message.identity), message.case_id, message.step
        )
        new = outbox.enqueue(
            store, case_id=message.case_id, step=message.step, step_name=message.step_name,
            channel="smtp", identity=message.identity, message_id=message_id,
            recipients=[row.address], subject=message.subject,
            raw=readdress(outbox.raw(store, message), row.address, message_id, now),
            in_reply_to=message.in_reply_to, state=MessageState.QUEUED, now=now,
            deadline=now + timedelta(hours=settings.retry_deadline_hours), resend=number,
        )  # fmt: skip
        assert new is not None
        store.append_event(
            now, "mailchimp_fallback",
            {"of": message.message_id, "message_id": message_id, "channel": "smtp",
             "why": row.refusal},
            case_id=message.case_id, message_id=message.id,
        )  # fmt: skip
        return new

    # --- read-back ----------------------------------------------------------------------------

    async def _poll(self, row: sends.SendRow, now: datetime) -> None:
        store = self.app.store
        message = outbox.get(store, row.message)
        assert message is not None and row.remote_id is not None
        state = row.state
        if state == "launched":
            got = await call(self.app, message, now, self.api.get_campaign, row.remote_id)
            status = got.body.get("status")
            if status in ("schedule", "sending"):
                sends.update(store, row.message, now, next_poll_at=now + self._every)
                return
            if status != "sent":
                with store.transaction():
                    why = f"the Mailchimp campaign {row.remote_id} is {status}: it did not go out"
                    self._observe(
                        message, now, lambda facts, about, now, rules: (ToReview(why), Queue(why))
                    )
                    sends.update(store, row.message, now, state="settled", next_poll_at=None)
                return
            store.append_event(
                now, "mailchimp_campaign_sent",
                {"message_id": message.message_id, "campaign_id": row.remote_id,
                 "send_time": got.body.get("send_time"), "emails_sent": got.body.get("emails_sent")},
                case_id=message.case_id, message_id=message.id,
            )  # fmt: skip
            state = "sent"
            row = sends.update(store, row.message, now, state=state)
        activity = await call(self.app, message, now, self.api.activity, row.remote_id, row.address)
        member = await call(self.app, message, now, self.api.get_member, row.address)
        summary = await call(self.app, message, now, self.api.report, row.remote_id)
        abuse: list[dict[str, Any]] = []
        if int(summary.body.get("abuse_reports", 0) or 0) > row.abuse_seen:
            found = await call(self.app, message, now, self.api.abuse_reports, row.remote_id)
            abuse = [a for a in found.body.get("abuse_reports", [])
                     if str(a.get("email_address", "")).lower() == row.address.lower()]  # fmt: skip
        with store.transaction():
            seen = set(row.seen)
            for item in activity.body.get("activity", []):
                key = "|".join(str(item.get(k, "")) for k in ("action", "timestamp", "url"))
                if key not in seen:
                    seen.add(key)
                    self._activity(message, row, item, now)
            for report in abuse[row.abuse_seen :]:
                store.append_event(
                    now, "mailchimp_abuse",
                    {"address": row.address, "campaign_id": row.remote_id,
                     "report_id": report.get("id"), "date": report.get("date")},
                    case_id=message.case_id, message_id=message.id,
                )  # fmt: skip
                self._observe(message, now, _complaint(row.address))
            # After a complaint: the member it unsubscribed is the same news, not a second one.
            status = str(member.body.get("status", ""))
            if status != row.member_status:
                self._member(message, row, status, now)
            over = row.launched_at is None or now >= row.launched_at + timedelta(
                days=self.settings.poll_days
            )
            final = over or status in ("cleaned", "unsubscribed") or bool(abuse)
            sends.update(
                store, row.message, now, state="settled" if final else state, seen=frozenset(seen),
                member_status=status, abuse_seen=max(row.abuse_seen, len(abuse)),
                next_poll_at=None if final else now + self._every,
            )  # fmt: skip

    @property
    def _every(self) -> timedelta:
        return timedelta(minutes=self.settings.poll_minutes)

    def _activity(self, message: outbox.OutboxMessage, row: sends.SendRow, item: dict[str, Any],
                  now: datetime) -> None:  # fmt: skip
        """Opens and clicks are engagement; a bounce goes to the bounce logic."""
        store = self.app.store
        action = str(item.get("action", ""))
        at = parse_time(item.get("timestamp")) or now
        if action in ("open", "click"):
            store.append_event(
                now, "engagement",
                {"address": row.address, "channel": CHANNEL, "source": f"mailchimp_{action}",
                 "campaign_id": row.remote_id, "at": iso(at), "message_id": message.message_id,
                 **({"url": item.get("url")} if action == "click" else {})},
                case_id=message.case_id, message_id=message.id,
            )  # fmt: skip
            signal = Signal(at, SignalKind.ENGAGED, None, row.address, CHANNEL, action)
            store_blocking.record(store, signal, message.case_id, message.id)
        elif action == "bounce":
            kind = str(item.get("type", ""))
            store.append_event(
                now, "mailchimp_bounce",
                {"address": row.address, "type": kind, "at": iso(at), "campaign_id": row.remote_id,
                 "message_id": message.message_id},
                case_id=message.case_id, message_id=message.id,
            )  # fmt: skip
            if kind == "hard":
                self._observe(message, now, _hard_bounce(row.address, "hard bounce in Mailchimp"))
            else:
                self._observe(message, now, _soft_bounce(row.address))

    def _member(self, message: outbox.OutboxMessage, row: sends.SendRow, status: str,
                now: datetime) -> None:  # fmt: skip
        self.app.store.append_event(
            now, "mailchimp_member",
            {"address": row.address, "status": status, "previous": row.member_status,
             "campaign_id": row.remote_id},
            case_id=message.case_id, message_id=message.id,
        )  # fmt: skip
        if status == "cleaned":
            self._observe(message, now, _hard_bounce(row.address, "cleaned in Mailchimp"))
        elif status == "unsubscribed":
            self._observe(message, now, _unsubscribed(row.address))

    def _observe(self, message: outbox.OutboxMessage, now: datetime, decide: Decider) -> None:
        """Decide on fresh facts and act through the inbound flow's own effects (in the
        caller's transaction): Mailchimp's news changes a case as the same news by mail would."""
        store = self.app.store
        facts = store_inbound.case_facts(store, message.case_id)
        if facts is None:
            return
        about = store_inbound.sent_refs(store, [message.message_id]).get(message.message_id)
        inbound = Inbound(self.app)
        for effect in decide(facts, about, now, inbound.rules):
            inbound.apply_effect(effect, facts, now, identity=message.identity, source=CHANNEL)


Decider = Callable[[CaseFacts, SentRef | None, datetime, InboundRules], Sequence[Effect]]


def _hard_bounce(address: str, why: str) -> Decider:
    """A cleaned member or a hard bounce: the address is dead, as with an SMTP 5.1.1."""
    failed = FailedRecipient(address, Reason.USER_UNKNOWN, "5.0.0", True, f"mailchimp: {why}")
    return lambda facts, about, now, rules: bounce((failed,), facts, about, rules, now)


def _soft_bounce(address: str) -> Decider:
    failed = FailedRecipient(address, Reason.UNDEFINED, "", True, "mailchimp: soft bounce")
    return lambda facts, about, now, rules: bounce((failed,), facts, about, rules, now)


def _complaint(address: str) -> Decider:
    """An abuse report is a spam complaint: the address is suppressed, a person reviews."""
    report = Classification(Kind.FEEDBACK, (FailedRecipient(address, Reason.FEEDBACK, "", False),))

    def decide(facts: CaseFacts, about: SentRef | None, now: datetime,
               rules: InboundRules) -> Sequence[Effect]:  # fmt: skip
        if not _active(facts, address):
            return (Note(f"abuse report through Mailchimp for {address}, already suppressed"),)
        return decide_inbound(report, facts, about, rules, now)

    return decide


def _unsubscribed(address: str) -> Decider:
    """An unsubscribe is a refusal: no more email to the address by any channel."""

    def decide(facts: CaseFacts, about: SentRef | None, now: datetime,
               rules: InboundRules) -> Sequence[Effect]:  # fmt: skip
        if not _active(facts, address):
            return (Note(f"{address} unsubscribed through Mailchimp, already suppressed"),)
        return (
            SetContact(address, ContactStatus.OPTED_OUT, "unsubscribed through Mailchimp"),
            ToReview("unsubscribed through Mailchimp: no more email to that address"),
            Queue(f"{address} unsubscribed through Mailchimp"),
        )

    return decide


def _active(facts: CaseFacts, address: str) -> bool:
    known = facts.contact(address)
    return known is not None and known[1] is ContactStatus.ACTIVE
