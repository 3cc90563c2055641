"""Mailchimp read-back: crash leftovers, refusals, and what reports say of launched campaigns."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from mailer.app import App
from mailer.config import MailchimpSettings, read_mailchimp_key
from mailer.domain.blocking import Signal, SignalKind
from mailer.domain.inbound import (
    Queue,
    ToReview,
)
from mailer.domain.models import MessageState
from mailer.flows.channel_news import (
    complaint,
    fallback_smtp,
    falls_back,
    hard_bounce,
    observe,
    soft_bounce,
    unsubscribed,
)
from mailer.flows.mailchimp import CHANNEL, MailchimpChannel, call, parse_time, reconcile
from mailer.flows.outbound import TickReport
from mailer.store import blocking as store_blocking
from mailer.store import mailchimp as sends
from mailer.store import outbox
from mailer.store.db import iso
from mailer.transports.base import Transport
from mailer.transports.mailchimp import MailchimpApi

log = logging.getLogger(__name__)
VIA = "Mailchimp"  # how the event log and the review queue name the channel


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
                observe(
                    self.app,
                    message,
                    now,
                    hard_bounce(row.address, "cleaned in Mailchimp", CHANNEL),
                    CHANNEL,
                )
                outcome = "undeliverable"
            elif row.refusal == "unsubscribed":
                observe(self.app, message, now, unsubscribed(row.address, VIA), CHANNEL)
                outcome = "suppressed"
            elif falls_back(self.app, message):
                new = fallback_smtp(self.app, message, row.address, row.refusal or "", now, CHANNEL)
                outcome = f"smtp:{new}"
            else:
                why = f"Mailchimp will not send to {row.address} ({row.refusal})"
                observe(self.app, message, now, lambda facts, about, now, rules: (
                    ToReview(f"{why}; the step has no SMTP fallback"),
                    Queue(f"{why}: send it another way, or set fallback_smtp"),
                ), CHANNEL)  # fmt: skip
                outcome = "review"
            sends.update(store, row.message, now, outcome=outcome)

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
                    observe(
                        self.app, message, now,
                        lambda facts, about, now, rules: (ToReview(why), Queue(why)), CHANNEL,
                    )  # fmt: skip
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
                observe(self.app, message, now, complaint(row.address, VIA), CHANNEL)
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
                observe(
                    self.app,
                    message,
                    now,
                    hard_bounce(row.address, "hard bounce in Mailchimp", CHANNEL),
                    CHANNEL,
                )
            else:
                observe(
                    self.app,
                    message,
                    now,
                    soft_bounce(row.address, "soft bounce", CHANNEL),
                    CHANNEL,
                )

    def _member(self, message: outbox.OutboxMessage, row: sends.SendRow, status: str,
                now: datetime) -> None:  # fmt: skip
        self.app.store.append_event(
            now, "mailchimp_member",
            {"address": row.address, "status": status, "previous": row.member_status,
             "campaign_id": row.remote_id},
            case_id=message.case_id, message_id=message.id,
        )  # fmt: skip
        if status == "cleaned":
            observe(
                self.app,
                message,
                now,
                hard_bounce(row.address, "cleaned in Mailchimp", CHANNEL),
                CHANNEL,
            )
        elif status == "unsubscribed":
            observe(self.app, message, now, unsubscribed(row.address, VIA), CHANNEL)
