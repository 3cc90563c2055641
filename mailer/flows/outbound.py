"""One bounded outbound pass: plan due cases, send due messages, reconcile, file Sent copies."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from itertools import islice
from typing import Any, Protocol

from mailer.app import App
from mailer.domain.blocking import smtp_reason
from mailer.domain.calendar import next_slot
from mailer.domain.classify.model import FailedRecipient, Reason
from mailer.domain.inbound import bounce
from mailer.domain.models import (
    Action,
    Case,
    CaseStatus,
    HistoryEntry,
    Identity,
    LookAgain,
    MessageState,
    SendStep,
)
from mailer.domain.outbox import retry_at
from mailer.domain.planner import PlanFacts
from mailer.errors import (
    AmbiguousDeliveryError,
    IdentityUnavailableError,
    MailerError,
    NeedsReviewError,
    PermanentError,
    TemporaryError,
)
from mailer.flows.blocking import Failover
from mailer.flows.effects import CaseEffects
from mailer.flows.staff import to_review
from mailer.flows.stage import stage
from mailer.store import blocking as store_blocking
from mailer.store import inbound as store_inbound
from mailer.store import outbox
from mailer.store.cases import load_cases, load_history, load_plan_facts
from mailer.store.db import canonical, iso
from mailer.transports.base import DeliveryRefusedError, RecipientRefusal, Transport

log = logging.getLogger(__name__)
IDENTITY_WAIT = timedelta(minutes=15)
PLAN_CHUNK = 50  # cases planned per transaction: the write lock is held for ~0.1 s at most
CLAIM_BATCH = 8  # messages a worker claims in one commit when its queue is long


class MailboxPort(Protocol):
    """What the outbox needs of the identity's IMAP mailbox."""

    def find_message_id(self, message_id: str, folders: list[str] | None = None) -> list[str]: ...

    def append_sent(self, data: bytes, when: datetime) -> None: ...

    def sent_folder(self) -> str: ...

    def message_ids(self, folder: str, since: date | None = None) -> set[str]: ...


MailboxOpener = Callable[[Identity], AbstractContextManager[MailboxPort]]


@dataclass
class TickReport:
    planned: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    reconciled: int = 0
    copied: int = 0
    judged: int = 0  # cases whose refusals the failover judged
    errors: list[str] = field(default_factory=list)


@dataclass
class Outbound:
    app: App
    transports: Mapping[str, Transport]
    open_mailbox: MailboxOpener | None = None
    batch: int = 500
    # Transports by channel for messages not sent by SMTP ("mailchimp", "mandrill"); such a
    # channel settles its own crash leftovers (asking its API), so reconcile leaves them alone.
    channels: Mapping[str, Transport] = field(default_factory=dict)
    # where the next planning pass starts: after the last case the previous one took (see plan_due)
    _plan_after: int = field(default=0, init=False, repr=False)

    # --- planning ---------------------------------------------------------------------------

    def plan_due(self, now: datetime, report: TickReport) -> None:
        """Plan every open case whose next look is due; enqueue what is due now."""
        for _staged in self._plan_pass(now, report):
            pass

    def _plan_pass(self, now: datetime, report: TickReport) -> Iterator[list[tuple[int, Case]]]:
        """``plan_due`` step by step: yields (row id, case) of each message it stores, once
        committed, so that the tick can start sending it while the rest is planned.

        Planning reads each case's facts (``load_plan_facts``: one narrow row, SQLite doing the
        sums); the whole Case, which rendering and the failover need, is loaded only for the
        cases with a step due now. A pass takes at most ``batch * 10`` cases, in id order from
        where the last pass stopped, so that cases waiting with low ids (idle ones are looked
        at again at every pass) never keep the others from their turn.
        """
        store = self.app.store
        sql = (
            "SELECT id, identity, next_action_at FROM cases WHERE closed_at IS NULL"
            " AND (next_action_at IS NULL OR next_action_at <= ?) AND id > ? ORDER BY id LIMIT ?"
        )
        limit, after = self.batch * 10, self._plan_after
        rows = store.conn.execute(sql, (iso(now), after, limit)).fetchall()
        if len(rows) < limit and after:
            # Past the last due case: on from the first one, up to where this pass began.
            more = store.conn.execute(sql, (iso(now), 0, limit - len(rows))).fetchall()
            rows += [r for r in more if r[0] <= after]
        self._plan_after = rows[-1][0] if len(rows) == limit else 0
        if not rows:
            return
        identities = {r[0]: r[1] for r in rows}
        looks = {r[0]: r[2] for r in rows}
        ids = list(identities)
        history = load_history(store, ids)
        facts = load_plan_facts(store, ids)
        engaged = store_blocking.engaged_cases(store, ids)
        # Cases that change nothing share a transaction, up to PLAN_CHUNK of them; one that
        # stores a message ends it, so that the message can go while the rest is planned. A
        # savepoint keeps each case's writes all-or-nothing. The commits need not wait for the
        # disk: a plan lost to a power cut is made again by the next pass, and its message is
        # claimed durably before a byte of it is sent.
        while chunk := list(islice(facts, PLAN_CHUNK)):
            decided = deque((f, self._decide(f, history.get(f.id, []), now)) for f in chunk)
            due = [
                f.id for f, action in decided if isinstance(action, SendStep) and action.at <= now
            ]
            cases = {c.id: c for c in load_cases(store, due)} if due else {}
            while decided:
                staged: list[tuple[int, Case]] = []
                with store.transaction(durable=False) as conn:
                    while decided and not staged:
                        f, action = decided.popleft()
                        try:
                            with _savepoint(conn):
                                row = self._plan_case(
                                    f,
                                    action,
                                    cases.get(f.id),
                                    identities[f.id],
                                    looks[f.id],
                                    now,
                                    report,
                                    f.id in engaged,
                                )
                            if row is not None:
                                staged.append((row, cases[f.id]))
                        except NeedsReviewError as exc:
                            self._to_review(f.id, now, str(exc))
                        except Exception as exc:
                            log.exception("planning failed", extra={"case_id": f.id})
                            report.errors.append(f"case {f.id}: {exc}")
                            store.append_event(
                                now, "case_error", {"error": repr(exc)}, case_id=f.id
                            )
                            self._next_look(f.id, now + timedelta(hours=1))
                if staged:
                    yield staged

    def _decide(
        self, facts: PlanFacts, history: list[HistoryEntry], now: datetime
    ) -> Action | Exception:
        """The planner's answer, or what it raised: raised again where the case is handled."""
        try:
            return self.app.plan_facts(facts, history, now)
        except Exception as exc:
            return exc

    def _next_look(self, case_id: int, at: datetime | None) -> None:
        with self.app.store.transaction() as conn:
            conn.execute(
                "UPDATE cases SET next_action_at = ? WHERE id = ?",
                (iso(at) if at else None, case_id),
            )

    def _plan_case(
        self,
        facts: PlanFacts,
        action: Action | Exception,
        case: Case | None,
        identity_name: str | None,
        look: str | None,
        now: datetime,
        report: TickReport,
        engaged: bool = False,
    ) -> int | None:
        """Act on the plan for one case; the row id of the message it stored, if any. ``case``
        is loaded when a step is due now; ``look`` is its ``next_action_at`` as stored."""
        if isinstance(action, Exception):
            raise action
        store = self.app.store
        if facts.status is CaseStatus.PAUSED and facts.paused_until and facts.paused_until <= now:
            with store.transaction() as conn:
                conn.execute(
                    "UPDATE cases SET status = 'active', paused_until = NULL, status_reason = NULL"
                    " WHERE id = ?",
                    (facts.id,),
                )
                store.append_event(now, "case_resumed", {"reason": "pause ended"}, case_id=facts.id)
        if isinstance(action, SendStep) and action.at <= now:
            if case is None:
                raise MailerError(f"case {facts.id} could not be loaded to send its step")
            if engaged:
                # A debtor who answered before and now hears nothing may no longer be
                # receiving this identity's mail: the failover looks before the next step.
                current = identity_name or self.app.settings.failover_pool()[0]
                chosen = Failover(self.app).before_send(case, current, now)
                if chosen is None:
                    return None  # the case went to a person
                identity_name = chosen
            row = self.enqueue(case, action, identity_name, now)
            if row is not None:
                report.planned += 1
            self._next_look(facts.id, now)  # look again: the next step's time depends on this one
            return row
        # A later step or the end of a pause: look again then. Idle: None, until an import, a
        # reply or a person acts. Most passes change nothing, and then write nothing.
        at = action.at if isinstance(action, SendStep | LookAgain) else None
        if (iso(at) if at else None) != look:
            self._next_look(facts.id, at)
        return None

    def enqueue(
        self,
        case: Case,
        action: SendStep,
        identity_name: str | None,
        now: datetime,
        *,
        instalment: Mapping[str, Any] | None = None,
    ) -> int | None:
        """Render, compose and store ``action``'s message: its row id, or None if the step is
        already stored.

        Also the instalment flow's way out: its reminders add ``instalment`` to the context.
        """
        settings = self.app.settings
        identity = settings.identity(identity_name or settings.failover_pool()[0])
        if not case.debtor.active_addresses:
            self._to_review(case.id, now, "no deliverable address left")
            return None
        staged = stage(self.app, case, action.step, identity, now, instalment=instalment)
        if staged is None:
            return None
        log.info(
            "planned %s for case %s", action.step.name, case.id,
            extra={"case_id": case.id, "message_id": staged[1]},
        )  # fmt: skip
        return staged[0]

    def _to_review(self, case_id: int, now: datetime, reason: str) -> None:
        """Planning met what only a person can settle (no address left, invoices in several
        currencies, a day without a published interest rate): the case waits in the review
        queue, where `mailer review` and the review page show it, with nothing left to send."""
        store = self.app.store
        with store.transaction():
            facts = store_inbound.case_facts(store, case_id)
            if facts is None:
                return  # closed meanwhile: nothing to review
            to_review(store, case_id, facts.status, now, reason)
            store_inbound.open_review(store, case_id, None, reason[:500], None, "", now)

    # --- sending ------------------------------------------------------------------------------

    async def send_due(
        self, now: datetime, report: TickReport, stop: Callable[[], bool]
    ) -> frozenset[int]:
        """Send what is due; returns the ids accepted in this pass."""
        feed = self._feed(now)
        feed.close()
        return await self._send_feed(feed, now, report, stop)

    async def plan_and_send(
        self, now: datetime, report: TickReport, stop: Callable[[], bool]
    ) -> frozenset[int]:
        """``plan_due`` and ``send_due`` at once: each message planned goes to the send workers
        as soon as it is stored, so the server has work while the rest is rendered. Returns
        the ids accepted in this pass."""
        feed = self._feed(now)

        async def plan() -> None:
            try:
                for staged in self._plan_pass(now, report):
                    ids = [row for row, _case in staged]
                    fresh = outbox.select(
                        self.app.store,
                        f"id IN ({', '.join('?' * len(ids))}) AND state = 'queued'",
                        tuple(ids),
                    )
                    feed.add(fresh, {case.id: case for _row, case in staged})
                    await asyncio.sleep(0)  # the workers send it while the next is planned
                    if stop():
                        return
            finally:
                feed.close()

        planning = asyncio.ensure_future(plan())
        try:
            sent = await self._send_feed(feed, now, report, stop)
        finally:
            await planning
        return sent

    def _feed(self, now: datetime) -> _Feed:
        """A pass's feed, holding what is already due (retries, messages left by a stop)."""
        due = outbox.due(self.app.store, now, self.batch)
        feed = _Feed({name: self._concurrency(name) for name in self._identities(due)})
        if due:
            # The quiet-hours check needs each message's case; a closed case is absent.
            feed.add(due, {c.id: c for c in load_cases(self.app.store, {m.case_id for m in due})})
        return feed

    def _identities(self, due: list[outbox.OutboxMessage]) -> set[str]:
        return {i.name for i in self.app.settings.identities} | {m.identity for m in due}

    async def _send_feed(
        self, feed: _Feed, now: datetime, report: TickReport, stop: Callable[[], bool]
    ) -> frozenset[int]:
        """Send what ``feed`` brings, each identity up to its ``concurrency`` at once.

        Sends overlap so that one message's network round trips wait while others go. Every
        message still moves queued → sending (committed, durably, before its first byte goes
        to the server) → sent on its own; a worker with a long queue before it claims up to
        CLAIM_BATCH messages in one commit (one fsync). Messages of one case go in order, by
        one worker. A worker checks ``stop`` before it starts a message: a shutdown finishes
        the messages in hand, starts none, and gives back those claimed but not started.
        """
        sent: set[int] = set()

        async def worker(name: str) -> None:
            while not stop() and (chains := await feed.take(name)):
                await self._send_chains(chains, feed, now, report, stop, sent)

        async with asyncio.TaskGroup() as group:
            for name, workers in feed.workers.items():
                for _ in range(workers):
                    group.create_task(worker(name))
        return frozenset(sent)

    def _concurrency(self, identity_name: str) -> int:
        identity = next((i for i in self.app.settings.identities if i.name == identity_name), None)
        return max(1, identity.concurrency) if identity else 1

    async def _send_chains(
        self,
        chains: list[list[outbox.OutboxMessage]],
        feed: _Feed,
        now: datetime,
        report: TickReport,
        stop: Callable[[], bool],
        sent: set[int],
    ) -> None:
        """Quiet-hours check, one claim for all, then one send each.

        A bad message is logged and left for the next pass: it never stops the others.
        """
        ready = []
        for message in (m for chain in chains for m in chain):
            try:
                if not self._held_for_window(message, now, feed.cases.get(message.case_id)):
                    ready.append(message)
            except Exception as exc:
                self._failed(message, exc, report)
        try:
            claimed = self._claim(ready, now)
        except Exception as exc:  # the database refused: these stay queued for the next pass
            for message in ready:
                self._failed(message, exc, report)
            return
        for n, message in enumerate(claimed):
            if stop():
                self._release(claimed[n:], now)  # claimed, never started: queued again
                return
            try:
                if await self._send(message, now, report):
                    sent.add(message.id)
            except Exception as exc:
                self._failed(message, exc, report)

    def _failed(self, message: outbox.OutboxMessage, exc: Exception, report: TickReport) -> None:
        log.error(
            "sending failed", exc_info=exc,
            extra={"case_id": message.case_id, "message_id": message.message_id},
        )  # fmt: skip
        report.errors.append(f"message {message.id}: {exc}")

    def _held_for_window(
        self, message: outbox.OutboxMessage, now: datetime, case: Case | None
    ) -> bool:
        """Quiet hours hold for every send: an approval at night or a retry waits for the window.

        ``case`` is the message's open case, None when the case is closed.
        """
        if case is None:
            outbox.move(
                self.app.store,
                message,
                MessageState.CANCELLED,
                now,
                "message_cancelled",
                {"reason": "case closed"},
            )
            return True
        campaign = self.app.campaign_for(case)
        calendar = self.app.calendar(case.debtor.country, case.debtor.region)
        slot = next_slot(now, case.debtor.timezone, campaign.policy, calendar)
        if slot <= now:
            return False
        outbox.record(
            self.app.store,
            message,
            now,
            "held_for_window",
            {"until": iso(slot)},
            next_attempt_at=slot,
        )
        return True

    async def _send(self, message: outbox.OutboxMessage, now: datetime, report: TickReport) -> bool:
        """One attempt of a claimed message; True when the server accepted it."""
        store = self.app.store
        if message.channel == "smtp":
            transport = self.transports.get(message.identity)
        else:
            transport = self.channels.get(message.channel)
        if transport is None:
            raise MailerError(f"no transport for identity {message.identity!r}"
                              f" on channel {message.channel!r}")  # fmt: skip
        identity = self.app.settings.identity(message.identity)
        data = outbox.raw(store, message)
        context = {"case_id": message.case_id, "message_id": message.message_id}
        try:
            receipt = await transport.send(
                identity.address, message.recipients, data, copy_to=_copy_address(identity)
            )
        except AmbiguousDeliveryError as exc:
            # Stays in SENDING: reconciliation decides, from the mailbox, whether it went.
            outbox.record(
                store, message, now, "send_ambiguous", {"error": str(exc)}, last_error=str(exc)
            )
            log.warning("delivery of %s is uncertain: %s", message.message_id, exc, extra=context)
            return False
        except DeliveryRefusedError as exc:
            refusals = [
                {"address": r.address, "code": r.code, "text": r.text} for r in exc.refusals
            ]
            outbox.move(
                store,
                message,
                MessageState.FAILED,
                now,
                "send_refused",
                {"stage": exc.stage, "code": exc.code, "detail": exc.detail, "refusals": refusals},
                last_error=str(exc),
            )
            report.failed += 1
            log.warning("refused: %s", exc, extra=context)
            self._refused(message, exc, now)
            return False
        except PermanentError as exc:
            outbox.move(
                store,
                message,
                MessageState.FAILED,
                now,
                "send_failed",
                {"error": str(exc)},
                last_error=str(exc),
            )
            report.failed += 1
            return False
        except TemporaryError as exc:
            self._defer(message, now, exc, report)
            return False

        # Committed without waiting for the disk: a power cut before the next durable commit
        # leaves the message in "sending", reconciled from the mailbox as after a crash.
        with store.transaction(durable=False):
            evidence = receipt.to_json()
            outbox.move(
                store,
                message,
                MessageState.SENT,
                now,
                "message_sent",
                {"receipt": evidence},
                sent_at=now,
                receipt=canonical(evidence),
                last_error=None,
            )
            for refusal in receipt.refused:
                store.append_event(
                    now,
                    "recipient_refused",
                    {
                        "message_id": message.message_id,
                        "address": refusal.address,
                        "code": refusal.code,
                        "text": refusal.text,
                    },
                    case_id=message.case_id,
                    message_id=message.id,
                )
        report.sent += 1
        log.info(
            "sent %s to %s: %s %s",
            message.step_name,
            ",".join(receipt.accepted),
            receipt.code,
            receipt.text,
            extra=context,
        )
        return True

    def _refused(
        self, message: outbox.OutboxMessage, exc: DeliveryRefusedError, now: datetime
    ) -> None:
        """A refusal met while sending decides as a bounce report would: an address that does
        not exist gives way to the debtor's next one, a refusal of the sender goes to the
        failover. One bad case never stops the pass."""
        store = self.app.store
        try:
            facts = store_inbound.case_facts(store, message.case_id)
            about = store_inbound.sent_refs(store, [message.message_id]).get(message.message_id)
            if facts is None or about is None:
                return
            refusals = exc.refusals or tuple(
                RecipientRefusal(a, exc.code or 550, exc.detail or str(exc))
                for a in message.recipients
            )
            failed = []
            for r in refusals:
                reason, status = smtp_reason(r.code, r.text, exc.stage)
                failed.append(
                    FailedRecipient(
                        r.address, reason or Reason.ON_HOLD, status, r.code >= 500, r.text
                    )
                )
            acting = CaseEffects(self.app)
            effects = bounce(failed, facts, about, acting.rules, now)
            with store.transaction():
                for effect in effects:
                    acting.apply(effect, facts, now, identity=message.identity, source="smtp")
        except Exception as exc2:
            log.exception("acting on a refusal failed", extra={"case_id": message.case_id})
            store.append_event(
                now, "case_error", {"error": repr(exc2)[:500]}, case_id=message.case_id
            )

    def _claim(
        self, messages: list[outbox.OutboxMessage], now: datetime
    ) -> list[outbox.OutboxMessage]:
        """queued → sending for each of ``messages``, in one durable commit made before the
        first byte of any goes to the server; the ones moved (another process may have taken
        one first). A crash after it leaves them in "sending", reconciled from the mailbox."""
        if not messages:
            return []
        with self.app.store.transaction():
            return [
                replace(message, state=MessageState.SENDING)
                for message in messages
                if outbox.move(
                    self.app.store,
                    message,
                    MessageState.SENDING,
                    now,
                    "send_attempt",
                    {"attempt": message.attempts + 1},
                    attempts=message.attempts + 1,
                )
            ]

    def _release(self, messages: list[outbox.OutboxMessage], now: datetime) -> None:
        """Claimed messages a shutdown kept from starting: queued again, as they were."""
        with self.app.store.transaction():
            for message in messages:
                outbox.move(
                    self.app.store, message, MessageState.QUEUED, now, "send_released",
                    {"reason": "shutting down before it started"}, next_attempt_at=now,
                )  # fmt: skip

    def _defer(
        self, message: outbox.OutboxMessage, now: datetime, exc: TemporaryError, report: TickReport
    ) -> None:
        store = self.app.store
        attempts = message.attempts + 1
        if isinstance(exc, IdentityUnavailableError):
            at: datetime | None = now + IDENTITY_WAIT
            log.error("identity %s cannot send: %s", message.identity, exc)
        else:
            at = retry_at(attempts, now, message.deadline_at)
        if at is None:
            outbox.move(
                store,
                message,
                MessageState.FAILED,
                now,
                "send_expired",
                {"error": str(exc)},
                last_error=str(exc),
            )
            report.failed += 1
            return
        outbox.move(
            store,
            message,
            MessageState.DEFERRED,
            now,
            "send_deferred",
            {"error": str(exc), "retry_at": iso(at)},
            next_attempt_at=at,
            last_error=str(exc),
        )
        report.deferred += 1

    # --- after a crash or an uncertain send -------------------------------------------------------

    async def reconcile(self, now: datetime, report: TickReport) -> None:
        """Settle messages left in SENDING: found in the mailbox → sent; not found → queued again.

        The receipt copy (our own address, envelope only) lands in the identity's INBOX only if
        the server accepted the message, so its presence is the server's word after a crash.
        """
        grace = timedelta(seconds=self.app.settings.reconcile_grace_seconds)
        stuck = [
            m
            for m in outbox.select(self.app.store, "state = 'sending'")
            if m.updated_at <= now - grace and m.channel not in self.channels
        ]
        by_identity: dict[str, list[outbox.OutboxMessage]] = {}
        for message in stuck:
            by_identity.setdefault(message.identity, []).append(message)
        for name, messages in by_identity.items():
            identity = self.app.settings.identity(name)
            if self.open_mailbox is None or _copy_address(identity) is None:
                for message in messages:
                    outbox.move(
                        self.app.store, message, MessageState.FAILED, now, "send_unknown",
                        {"error": "unknown whether the server accepted it; check the Sent folder and resend by hand"},
                    )  # fmt: skip
                    report.failed += 1
                continue
            since = min(m.updated_at for m in messages).date() - timedelta(days=2)
            try:
                found = await asyncio.to_thread(self._ids_in_mailbox, identity, since)
            except TemporaryError as exc:
                log.warning("cannot reconcile identity %s yet: %s", name, exc)
                continue
            for message in messages:
                folders = sorted(f for f, ids in found.items() if message.message_id in ids)
                if folders:
                    outbox.move(
                        self.app.store, message, MessageState.SENT, now, "message_sent",
                        {"reconciled": True, "found_in": folders},
                        sent_at=message.updated_at, receipt=canonical({"reconciled_from": folders}),
                    )  # fmt: skip
                else:
                    outbox.move(
                        self.app.store, message, MessageState.QUEUED, now,
                        "send_retry_after_reconcile", {"found_in": []}, next_attempt_at=now,
                    )  # fmt: skip
                report.reconciled += 1

    def _ids_in_mailbox(self, identity: Identity, since: date) -> dict[str, set[str]]:
        assert self.open_mailbox is not None
        with self.open_mailbox(identity) as box:
            return {
                folder: box.message_ids(folder, since) for folder in ("INBOX", box.sent_folder())
            }

    async def file_copies(
        self, now: datetime, report: TickReport, fresh: frozenset[int] = frozenset()
    ) -> None:
        """APPEND each sent message's exact bytes to its identity's Sent folder, once.

        One IMAP session per identity per pass. A message sent in this very pass is appended
        directly; any other (a failed earlier try, or a crash after APPEND) is looked up first.
        """
        pending = outbox.select(
            self.app.store,
            "state = 'sent' AND copied_at IS NULL AND copy_attempts < 10",
            limit=self.batch,
        )
        by_identity: dict[str, list[outbox.OutboxMessage]] = {}
        for message in pending:
            by_identity.setdefault(message.identity, []).append(message)
        for name, messages in by_identity.items():
            identity = self.app.settings.identity(name)
            if self.open_mailbox is None or not identity.imap_host:
                continue
            items = [(m, outbox.raw(self.app.store, m)) for m in messages]
            opener = self.open_mailbox

            def file(
                items: list[tuple[outbox.OutboxMessage, bytes]] = items,
                opener: MailboxOpener = opener,
                identity: Identity = identity,
            ) -> list[str]:
                results = []
                with opener(identity) as box:
                    folder = box.sent_folder()
                    known: set[str] = set()
                    older = [m.sent_at or now for m, _ in items if m.id not in fresh]
                    if older:
                        known = box.message_ids(folder, min(older).date() - timedelta(days=2))
                    for message, data in items:
                        if message.id not in fresh and message.message_id in known:
                            results.append(folder)  # filed before a crash: not twice
                            continue
                        box.append_sent(data, message.sent_at or now)
                        results.append("appended")
                return results

            try:
                results = await asyncio.to_thread(file)
            except MailerError as exc:
                for message in messages:
                    outbox.record(
                        self.app.store,
                        message,
                        now,
                        "sent_copy_failed",
                        {"error": str(exc)},
                        copy_attempts=message.copy_attempts + 1,
                    )
                continue
            for message, where in zip(messages, results, strict=True):
                outbox.record(
                    self.app.store,
                    message,
                    now,
                    "sent_copy_filed",
                    {"result": where},
                    copied_at=now,
                )
                report.copied += 1

    async def tick(self, now: datetime, stop: Callable[[], bool] = lambda: False) -> TickReport:
        """One bounded pass; safe to interrupt between any two steps."""
        report = TickReport()
        await self.reconcile(now, report)
        # Refusals met since the last pass, judged together before anything is planned.
        report.judged = Failover(self.app).judge_pending(now)
        fresh = await self.plan_and_send(now, report, stop)
        if not stop():
            await self.file_copies(now, report, fresh)
        return report


class _Feed:
    """The messages of one sending pass, by identity, for that identity's workers.

    Messages of one case form a chain that one worker sends in order. A case already in the
    pass gets no second chain: a message planned while its case's earlier one is still in a
    worker's hands waits for the next pass, so that the two never go out of order.
    """

    def __init__(self, workers: Mapping[str, int]) -> None:
        self.workers = dict(workers)
        self.cases: dict[int, Case] = {}
        self._chains: dict[str, deque[list[outbox.OutboxMessage]]] = {n: deque() for n in workers}
        self._wake = {name: asyncio.Event() for name in workers}
        self._seen: set[int] = set()
        self._closed = False

    def add(self, messages: list[outbox.OutboxMessage], cases: Mapping[int, Case]) -> None:
        chains: dict[tuple[str, int], list[outbox.OutboxMessage]] = {}
        for message in messages:
            if message.case_id in self._seen or message.identity not in self._chains:
                continue
            chains.setdefault((message.identity, message.case_id), []).append(message)
        for (name, case_id), chain in chains.items():
            self._seen.add(case_id)
            self._chains[name].append(chain)
            self._wake[name].set()
        self.cases.update(cases)

    def close(self) -> None:
        """Nothing more will come: workers finish what is queued, then stop."""
        self._closed = True
        for wake in self._wake.values():
            wake.set()

    async def take(self, name: str) -> list[list[outbox.OutboxMessage]]:
        """The next chains for a worker of ``name``; empty when the pass is over.

        A worker takes its share of a long queue, up to CLAIM_BATCH chains, to claim them in
        one commit; from a short one (the planner feeding it) one chain, so that every
        connection has work.
        """
        chains = self._chains[name]
        while not chains:
            if self._closed:
                return []
            self._wake[name].clear()
            await self._wake[name].wait()
        share = max(1, min(CLAIM_BATCH, len(chains) // self.workers[name]))
        return [chains.popleft() for _ in range(share)]


@contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    """Inside a transaction: undo this block's writes if it raises, keep the rest."""
    conn.execute("SAVEPOINT plan_case")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO plan_case")
        conn.execute("RELEASE plan_case")
        raise
    conn.execute("RELEASE plan_case")


def _copy_address(identity: Identity) -> str | None:
    """Where the receipt copy goes: the identity's own mailbox, if we can read it back."""
    return identity.address if identity.receipt_copy and identity.imap_host else None
