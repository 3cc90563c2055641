"""Mandrill read-back: crash leftovers, refusals, and what messages/info says of each message."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from mailer.app import App
from mailer.config import MandrillSettings, read_mandrill_key
from mailer.domain.blocking import Signal, SignalKind
from mailer.domain.inbound import (
    Queue,
    ToReview,
)
from mailer.domain.models import MessageState
from mailer.flows.channel_news import (
    Decider,
    complaint,
    fallback_smtp,
    falls_back,
    hard_bounce,
    observe,
    soft_bounce,
    unsubscribed,
)
from mailer.flows.mandrill import CHANNEL, MandrillChannel, call, every, reconcile
from mailer.flows.outbound import TickReport
from mailer.store import blocking as store_blocking
from mailer.store import mailchimp as sends
from mailer.store import outbox
from mailer.store.db import iso
from mailer.transports.base import Transport
from mailer.transports.mandrill import MandrillApi, MandrillApiError, from_ts

log = logging.getLogger(__name__)
# reject_reason (or status "invalid") saying the address is dead, as an SMTP 5.1.1 would.
DEAD = frozenset({"hard-bounce", "invalid"})
# messages/info states after which nothing more can happen to the message.
OVER = frozenset({"bounced", "soft-bounced", "rejected", "spam", "unsub"})
VIA = "Mandrill"  # how the event log and the review queue name the channel


def build_mandrill(
    app: App, clock: Callable[[], datetime]
) -> tuple[dict[str, Transport], list[MandrillFlow]]:
    """The channel and its pass (none without [mandrill]); the key is read now, kept in memory."""
    settings = app.settings.mandrill
    if settings is None:
        return {}, []
    api = MandrillApi(settings, read_mandrill_key(settings))
    return {CHANNEL: MandrillChannel(app, api, clock)}, [MandrillFlow(app, api)]


class MandrillFlow:
    """One bounded pass: crash leftovers, refusals, and the read-back of sent messages."""

    def __init__(self, app: App, api: MandrillApi) -> None:
        assert app.settings.mandrill is not None
        self.app = app
        self.api = api
        self.settings: MandrillSettings = app.settings.mandrill

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
            await self._each(report, f"refusal {row.message}", self._settle(row, now))
        for row in sends.due_polls(store, CHANNEL, now):
            if not await self._each(report, f"read-back {row.message}", self._poll(row, now)):
                # Mandrill down or the answer odd: look again later, not at every tick.
                sends.update(store, row.message, now, next_poll_at=now + every(self.settings))

    async def _each(self, report: TickReport, what: str, work: Coroutine[Any, Any, None]) -> bool:
        try:
            await work
        except Exception as exc:  # a bad item never stops the pass
            log.warning("mandrill %s: %s", what, exc)
            report.errors.append(f"mandrill {what}: {exc}")
            return False
        return True

    async def _settle(self, row: sends.SendRow, now: datetime) -> None:
        """What a rejection leads to, once: a dead address → undeliverable, the next address
        (the bounce logic); a soft bounce → as one; spam/unsub → suppressed and reviewed, never
        routed around; anything else (custom, rule, test-mode-limit) → the step's SMTP fallback,
        or a person."""
        app = self.app
        message = outbox.get(app.store, row.message)
        if message is None or message.state is not MessageState.FAILED:
            return  # the outbox has not recorded the refusal yet
        reason = row.refusal or ""
        with app.store.transaction():
            if reason in DEAD:
                observe(
                    app,
                    message,
                    now,
                    hard_bounce(row.address, f"rejected ({reason})", CHANNEL),
                    CHANNEL,
                )
                outcome = "undeliverable"
            elif reason == "soft-bounce":
                observe(
                    app,
                    message,
                    now,
                    soft_bounce(row.address, "rejected (soft-bounce)", CHANNEL),
                    CHANNEL,
                )
                outcome = "soft-bounce"
            elif reason in ("spam", "unsub"):
                decide = complaint if reason == "spam" else unsubscribed
                observe(app, message, now, decide(row.address, VIA), CHANNEL)
                outcome = "suppressed"
            elif falls_back(app, message):
                outcome = f"smtp:{fallback_smtp(app, message, row.address, reason, now, CHANNEL)}"
            else:
                why = f"Mailchimp Transactional will not send to {row.address} ({reason})"
                observe(app, message, now, lambda facts, about, now, rules: (
                    ToReview(f"{why}; the step has no SMTP fallback"),
                    Queue(f"{why}: send it another way, or set fallback_smtp"),
                ), CHANNEL)  # fmt: skip
                outcome = "review"
            sends.update(app.store, row.message, now, outcome=outcome)

    async def _poll(self, row: sends.SendRow, now: datetime) -> None:
        """messages/info: new opens and clicks, and the state once it changes."""
        store = self.app.store
        message = outbox.get(store, row.message)
        assert message is not None and row.remote_id is not None
        over = row.launched_at is None or now >= row.launched_at + timedelta(
            days=self.settings.poll_days
        )
        try:
            got = await call(self.app, message, now, self.api.info, row.remote_id)
        except MandrillApiError as exc:
            # Not (yet, or no longer) known: a scheduled message before its time, a fresh one
            # not yet indexed, or one past Mandrill's retention.
            if exc.name != "Unknown_Message":
                raise
            sends.update(store, row.message, now, state="settled" if over else row.state,
                         next_poll_at=None if over else now + every(self.settings))  # fmt: skip
            return
        info = got.body
        state = str(info.get("state", ""))
        with store.transaction():
            seen = set(row.seen)
            for kind, items in (("open", info.get("opens_detail")),
                                ("click", info.get("clicks_detail"))):  # fmt: skip
                for item in items or []:
                    where = item.get("url") if kind == "click" else item.get("ip")
                    key = f"{kind}|{item.get('ts', '')}|{where or ''}"
                    if key not in seen:
                        seen.add(key)
                        self._engaged(message, row, kind, item, now)
            if state != row.member_status:
                self._state(message, row, state, info, now)
            final = over or state in OVER
            sends.update(store, row.message, now, state="settled" if final else "sent",
                         seen=frozenset(seen), member_status=state,
                         next_poll_at=None if final else now + every(self.settings))  # fmt: skip

    def _engaged(self, message: outbox.OutboxMessage, row: sends.SendRow, kind: str,
                 item: dict[str, Any], now: datetime) -> None:  # fmt: skip
        """An open or a click: engagement, as an answer would be (it clears a silence verdict)."""
        at = from_ts(item.get("ts")) or now
        self.app.store.append_event(
            now, "engagement",
            {"address": row.address, "channel": CHANNEL, "source": f"mandrill_{kind}",
             "mandrill_id": row.remote_id, "at": iso(at), "message_id": message.message_id,
             **({"url": item.get("url")} if kind == "click" else {})},
            case_id=message.case_id, message_id=message.id,
        )  # fmt: skip
        signal = Signal(at, SignalKind.ENGAGED, None, row.address, CHANNEL, kind)
        store_blocking.record(self.app.store, signal, message.case_id, message.id)

    def _state(self, message: outbox.OutboxMessage, row: sends.SendRow, state: str,
               info: dict[str, Any], now: datetime) -> None:  # fmt: skip
        """A new state: recorded; bounces, complaints and unsubscribes acted on."""
        events = info.get("smtp_events") or []
        diag = str(events[-1].get("diag", "")) if events else ""
        self.app.store.append_event(
            now, "mandrill_state",
            {"address": row.address, "state": state, "previous": row.member_status,
             "mandrill_id": row.remote_id, "diag": diag[:300]},
            case_id=message.case_id, message_id=message.id,
        )  # fmt: skip
        decide: Decider | None = None
        if state == "bounced":
            decide = hard_bounce(row.address, f"hard bounce: {diag}", CHANNEL)
        elif state == "soft-bounced":
            decide = soft_bounce(row.address, f"soft bounce: {diag}", CHANNEL)
        elif state in ("spam", "unsub"):
            decide = (complaint if state == "spam" else unsubscribed)(row.address, VIA)
        elif state == "rejected":
            why = f"Mailchimp Transactional did not send the message to {row.address} (rejected)"
            decide = lambda facts, about, now, rules: (ToReview(why), Queue(why))  # noqa: E731
        if decide is not None:
            observe(self.app, message, now, decide, CHANNEL)
