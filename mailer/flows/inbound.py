"""One bounded inbound pass per mailbox: fetch what is new, keep what concerns a case, act on it."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import email.utils
import hashlib
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol

from mailer.app import App
from mailer.compose import new_message_id
from mailer.config import is_address
from mailer.domain.blocking import Signal, SignalKind
from mailer.domain.classify import Classification, Kind
from mailer.domain.inbound import (
    Blocked,
    CaseFacts,
    Effect,
    Headers,
    InboundRules,
    Match,
    Note,
    Pause,
    Queue,
    Relevance,
    Resend,
    SentRef,
    SetContact,
    SoftBounce,
    ToReview,
    cited_ids,
    decide,
    match,
    read_headers,
    screen,
    stricter_pause,
)
from mailer.domain.models import CaseStatus, MessageState
from mailer.flows.blocking import Failover
from mailer.flows.reading import Handed, Read, Reader
from mailer.flows.reading import read as read_one
from mailer.flows.staff import REVIEWABLE, set_case_status, to_review
from mailer.store import blocking as store_blocking
from mailer.store import inbound as store_inbound
from mailer.store import outbox
from mailer.store.db import Canonical, Store, iso
from mailer.store.inbound import encode_classification

log = logging.getLogger(__name__)
CHUNK = 200  # messages fetched per round trip; the checkpoint advances after each chunk
_AHEAD = 2  # chunks a catch-up hands the reader's worker beyond the one it records
_EVENT_REPLY_TEXT = 4000  # characters of a reply kept in its mail_received event


class MailboxReader(Protocol):
    """What the inbound flow needs of an identity's IMAP mailbox (read-only)."""

    def folder_status(self, folder: str) -> tuple[int, int]: ...

    def uids_after(self, folder: str, last_uid: int) -> list[int]: ...

    def uids_since(self, folder: str, day: date) -> list[int]: ...

    def fetch_headers(self, folder: str, uids: Sequence[int]) -> dict[int, bytes]: ...

    def fetch_messages(self, folder: str, uids: Sequence[int]) -> dict[int, bytes]: ...

    def move_messages(self, folder: str, uids: Sequence[int], target: str) -> int: ...


@dataclass
class InboundReport:
    examined: int = 0  # headers looked at
    stored: int = 0  # case-related messages recorded and acted on
    quarantined: int = 0
    duplicates: int = 0
    resync: int = 0  # folders whose UIDVALIDITY changed
    moved: int = 0  # handled bounce reports moved out of the way (opt-in)
    errors: list[str] = field(default_factory=list)

    def add(self, other: InboundReport) -> None:
        self.examined += other.examined
        self.stored += other.stored
        self.quarantined += other.quarantined
        self.duplicates += other.duplicates
        self.resync += other.resync
        self.moved += other.moved
        self.errors.extend(other.errors)


@dataclass
class Chunk:
    """Mail of one folder to record together: (uid, raw, readable) each, and where the folder's
    checkpoint moves in the same commit (None: not in it)."""

    items: list[tuple[int | None, bytes, bool]]
    checkpoint: int | None = None
    last: int = 0  # the folder's last UID this chunk takes the watcher past
    bodies: dict[int, bytes] = field(default_factory=dict)  # as fetched, by UID


@dataclass
class Inbound:
    app: App
    # Classifies a catch-up's next chunk in a worker process while this one records the
    # current chunk; None: everything in-process.
    reader: Reader | None = None

    def close(self) -> None:
        """Stop the reader's worker, if one runs (the daemon's shutdown)."""
        if self.reader is not None:
            self.reader.close()

    @property
    def rules(self) -> InboundRules:
        s = self.app.settings.inbound
        return InboundRules(
            promise_grace_days=s.promise_grace_days,
            soft_bounce_limit=s.soft_bounce_limit,
            soft_retry=timedelta(hours=s.soft_retry_hours),
        )

    # --- the pass --------------------------------------------------------------------------

    async def sync(
        self,
        identity: str,
        box: MailboxReader,
        now: datetime,
        stop: Callable[[], bool] = lambda: False,
    ) -> InboundReport:
        """Everything that arrived in the identity's watched folders since the checkpoint."""
        report = InboundReport()
        for folder in self.app.settings.inbound.folders:
            if stop():
                break
            await self._sync_folder(identity, folder, box, now, report, stop)
        return report

    async def _sync_folder(
        self,
        identity: str,
        folder: str,
        box: MailboxReader,
        now: datetime,
        report: InboundReport,
        stop: Callable[[], bool],
    ) -> None:
        store = self.app.store
        validity, uidnext = await asyncio.to_thread(box.folder_status, folder)
        mark = store_inbound.checkpoint(store, identity, folder)
        if mark is not None and mark.uidvalidity == validity:
            if 0 < uidnext <= mark.last_uid + 1:
                return  # UIDNEXT has not moved: nothing arrived since the last pass
            uids = await asyncio.to_thread(box.uids_after, folder, mark.last_uid)
            last = mark.last_uid
        else:
            if mark is None:
                since = now.date() - timedelta(days=self.app.settings.inbound.lookback_days)
            else:
                # UIDs were renumbered. Everything not yet handled arrived after the last
                # checkpoint; what was handled is recognised by Message-ID and content hash.
                since = mark.updated_at.date() - timedelta(days=2)
                report.resync += 1
                store.append_event(
                    now,
                    "mailbox_resync",
                    {"identity": identity, "folder": folder, "old": mark.uidvalidity,
                     "new": validity, "since": since.isoformat()},
                )  # fmt: skip
                log.warning("%s/%s: UIDVALIDITY changed, resyncing", identity, folder)
            uids = await asyncio.to_thread(box.uids_since, folder, since)
            last = max(uidnext - 1, 0)
        target = self.app.settings.inbound.move_bounces_to
        chunks = self._fetch(folder, uids, last, box, report, stop, in_commit=not target)
        # A catch-up (more than one chunk) classifies the next chunk beside this one's recording.
        async for chunk, outcomes in self.record_chunks(
            identity, folder, validity, chunks, now, parallel=len(uids) > CHUNK,
            durable_each=bool(target),  # the move below must follow a durable commit
        ):  # fmt: skip
            for outcome in outcomes:
                if outcome == "stored":
                    report.stored += 1
                elif outcome == "quarantined":
                    report.quarantined += 1
                elif outcome == "duplicate":
                    report.duplicates += 1
            if target and chunk.bodies:
                # Opt-in tidying, after the chunk is committed: a crash before the move leaves
                # the report where it was (and recognised by its hash if read again).
                digests = {u: hashlib.sha256(raw).hexdigest() for u, raw in chunk.bodies.items()}
                handled = store_inbound.handled_bounces(store, identity, folder, validity, digests)
                if handled:
                    report.moved += await asyncio.to_thread(
                        box.move_messages, folder, handled, target
                    )
            if chunk.checkpoint is None:
                store_inbound.save_checkpoint(store, identity, folder, validity, chunk.last, now)
        if not uids:
            store_inbound.save_checkpoint(store, identity, folder, validity, last, now)

    async def _fetch(
        self,
        folder: str,
        uids: Sequence[int],
        last: int,
        box: MailboxReader,
        report: InboundReport,
        stop: Callable[[], bool],
        *,
        in_commit: bool,
    ) -> AsyncIterator[Chunk]:
        """The folder's new mail, a chunk at a time: headers first, then the bodies of what
        concerns a case (or cannot be read). ``in_commit``: each chunk's commit moves the
        folder's checkpoint past it (one fsync, not two); otherwise the caller moves it."""
        store = self.app.store
        for start in range(0, len(uids), CHUNK):
            if stop():
                return  # the checkpoint stays at the last whole chunk: nothing is skipped
            batch = uids[start : start + CHUNK]
            last = max(last, batch[-1])
            headers = await asyncio.to_thread(box.fetch_headers, folder, batch)
            report.examined += len(headers)
            parsed: dict[int, Headers | None] = {}
            for uid, block in headers.items():
                try:
                    parsed[uid] = read_headers(block)
                except Exception:
                    parsed[uid] = None  # unreadable: quarantined below, with its bytes
            known = [h for h in parsed.values() if h is not None]
            ours = store_inbound.sent_refs(
                store, [r for h in known for r in (h.message_id, *h.refs) if r]
            )
            contacts = store_inbound.contact_cases(
                store, [h.from_address for h in known if h.from_address]
            )
            wanted = [
                uid
                for uid, h in parsed.items()
                if h is None
                or screen(h, ours, contacts) in (Relevance.RELATED, Relevance.CANDIDATE)
            ]
            bodies: dict[int, bytes] = {}
            if wanted:
                bodies = await asyncio.to_thread(box.fetch_messages, folder, sorted(wanted))
            items: list[tuple[int | None, bytes, bool]] = [
                (uid, bodies[uid], parsed[uid] is not None) for uid in sorted(bodies)
            ]
            yield Chunk(items, last if in_commit else None, last, bodies)

    async def record_chunks(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        chunks: AsyncIterable[Chunk],
        now: datetime,
        *,
        parallel: bool = False,
        durable_each: bool = True,
    ) -> AsyncIterator[tuple[Chunk, list[str]]]:
        """``process_many`` over each chunk in turn, in order: each chunk with its outcomes once
        it is committed. ``parallel`` (and a reader): the next chunks (``_AHEAD``) are classified
        in the reader's worker while this process records the current one (the parts of a chunk
        the worker has not started when it is needed, the first one's above all, are read here
        meanwhile). The outcomes and the store are the same either way: classifying is pure.

        ``durable_each`` False: a chunk followed by another commits without waiting for the
        disk, and the last one durably, which makes the earlier ones durable too (see
        ``Store.transaction``). A power cut in between loses those chunks together with the
        folder checkpoint they moved, so their mail is read again from the mailbox: nothing
        is lost. Only for callers that act on nothing outside the store between chunks."""
        reader = self.reader if parallel else None
        today = now.date()
        # Chunks fetched and handed to the worker, oldest first, recorded in that order: the
        # oldest is recorded once _AHEAD more are in hand. With two in the worker's queue, a
        # chunk it reads faster than this process records the one before does not leave it
        # idle, and a slower one does not keep this process waiting: each side's pace varies
        # from chunk to chunk, and with one chunk in hand either waited for the other's.
        held: deque[tuple[Chunk, Handed | None]] = deque()
        failure: Exception | None = None
        # The share of a chunk whose other pure work (compressing, encoding) the worker does
        # too: more while its results are ready before they are needed, less while this
        # process waits for them, so that neither process waits for the other for long.
        ahead = 0.5
        try:
            source = aiter(chunks)
            while True:
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    # Fetching the next chunk failed: those in hand are recorded first.
                    failure = exc
                    break
                future = None
                if reader is not None and chunk.items:
                    future = reader.submit([raw for _uid, raw, _ok in chunk.items], today, ahead)
                held.append((chunk, future))
                if len(held) > _AHEAD:
                    oldest, pending = held.popleft()
                    if pending is not None:
                        ready = pending.done()
                        ahead = min(1.0, ahead + 0.25) if ready else max(0.0, ahead - 0.25)
                    done = await self._record_chunk(
                        identity, folder, validity, oldest, pending, now, durable=durable_each
                    )
                    yield oldest, done
            while held:
                oldest, pending = held.popleft()
                durable = durable_each or not held
                done = await self._record_chunk(
                    identity, folder, validity, oldest, pending, now, durable=durable
                )
                yield oldest, done
        finally:
            # Given up half-way (an error, the caller stopped): the worker forgets the rest.
            for _chunk, pending in held:
                if pending is not None and reader is not None:
                    reader.drop(pending)
        if failure is not None:
            raise failure

    async def _record_chunk(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        chunk: Chunk,
        future: Handed | None,
        now: datetime,
        *,
        durable: bool = True,
    ) -> list[str]:
        reads = None
        if future is not None and self.reader is not None:
            raws = [raw for _uid, raw, _ok in chunk.items]
            reads = await self.reader.result(future, raws, now.date())
        return self.process_many(
            identity, folder, validity, chunk.items, now, checkpoint=chunk.checkpoint,
            read=reads, durable=durable,
        )  # fmt: skip

    def process_many(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        items: Sequence[tuple[int | None, bytes, bool]],
        now: datetime,
        *,
        checkpoint: int | None = None,
        read: Sequence[Read] | None = None,
        durable: bool = True,
    ) -> list[str]:
        """``process`` for a chunk of (uid, raw, readable), committed together: one fsync per
        chunk, not per message. One message that fails is rolled back alone and quarantined,
        and the rest of the chunk stands. With ``checkpoint`` (and ``validity``), the folder's
        checkpoint moves there in the same commit. ``read``: each item's SHA-256 and
        classification, when already made (by the reader's worker); else they are made here.
        ``durable`` False: committed without waiting for the disk (``record_chunks``).

        The messages are classified before the write lock is taken (classifying is pure), and
        what the chunk needs from the store is read once. The chunk is recorded in one savepoint,
        its events written together at the end (same ids, hashes and order); only if a message
        fails is it all rolled back and recorded again one message at a time, each in a
        savepoint of its own, as every chunk was before: the same outcome for one savepoint a
        chunk instead of one a message.
        """
        store = self.app.store
        rules = self.rules
        if read is None:
            read = [read_one(raw, now.date()) for _uid, raw, _readable in items]
        mails = [
            _Mail(uid, raw, readable, r.digest, r.c, r.packed, r.row)
            for (uid, raw, readable), r in zip(items, read, strict=True)
        ]
        with store.transaction(durable=durable):
            try:
                with store.savepoint(), store.batched_events():
                    known = _Known.load(store, mails)
                    done = [
                        self._record(identity, folder, validity, mail, known, rules, now)
                        for mail in mails
                    ]
            except Exception:
                log.info("inbound chunk failed: recording %s/%s one by one", identity, folder)
                done = []
                known = _Known.load(store, mails)
                for mail in mails:
                    try:
                        with store.savepoint():
                            done.append(
                                self._record(identity, folder, validity, mail, known, rules, now)
                            )
                    except Exception as exc:  # one bad message never stops the pass
                        log.exception(
                            "inbound message failed: %s/%s uid %s", identity, folder, mail.uid
                        )
                        self._quarantine(
                            identity, folder, validity, mail.uid, mail.raw, None, repr(exc), now
                        )
                        known.digests.add(mail.digest)
                        # What the failed message's savepoint took back may have been cached.
                        known.forget(mail.found.case_id if mail.found else None)
                        done.append(("quarantined", None, repr(exc)))
            if checkpoint is not None and validity is not None:
                store_inbound.save_checkpoint(store, identity, folder, validity, checkpoint, now)
        # Logged once the chunk stands: a chunk recorded again logs each message once.
        for mail, (outcome, case_id, why) in zip(mails, done, strict=True):
            _log_outcome(identity, folder, mail.uid, mail.c, outcome, case_id, why)
        return [outcome for outcome, _case, _why in done]

    # --- one message -----------------------------------------------------------------------

    def process(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        uid: int | None,
        raw: bytes,
        now: datetime,
        *,
        readable: bool = True,
    ) -> str:
        """Classify, match and act on one message: 'stored', 'duplicate', 'quarantined' or
        'unrelated' (a report about someone else's mail: dropped, not even logged)."""
        r = read_one(raw, now.date())
        mail = _Mail(uid, raw, readable, r.digest, r.c, r.packed, r.row)
        known = _Known.load(self.app.store, [mail])
        outcome, case_id, why = self._record(
            identity, folder, validity, mail, known, self.rules, now
        )
        _log_outcome(identity, folder, uid, mail.c, outcome, case_id, why)
        return outcome

    def _record(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        mail: _Mail,
        known: _Known,
        rules: InboundRules,
        now: datetime,
    ) -> tuple[str, int | None, str]:
        """Match and act on one classified message; (outcome, case id, why quarantined)."""
        store = self.app.store
        uid, raw, digest, c = mail.uid, mail.raw, mail.digest, mail.c
        message_id = c.message_id
        if digest in known.digests or (message_id is not None and message_id in known.message_ids):
            return "duplicate", None, ""
        if not mail.readable or c.errors:
            case = self._case_hint(c)
            why = "; ".join(c.errors) or "unreadable header"
            self._quarantine(identity, folder, validity, uid, raw, case, why, now)
            known.digests.add(digest)
            return "quarantined", case, why
        if message_id is not None and message_id in mail.cited and message_id in known.sent:
            return "unrelated", None, ""  # our own receipt copy, caught after a header-only miss
        found = mail.found
        if found is None:
            return "unrelated", None, ""
        facts = known.case_facts(store, found.case_id)
        if facts is None:
            return "unrelated", None, ""
        effects = decide(c, facts, found.message, rules, now)
        with store.transaction():
            store.put_blob(raw, digest, mail.packed)
            classification = mail.row or encode_classification(c.to_json())
            row = store_inbound.insert(
                store, identity=identity, folder=folder, uidvalidity=validity, uid=uid,
                message_id=message_id, sha256=digest, state="handled", kind=c.kind.value,
                case_id=facts.case_id,
                related_message=found.message.row_id if found.message else None,
                from_address=c.from_address, subject=c.subject,
                classification=classification,
                error=None, now=now,
            )  # fmt: skip
            store.append_event(
                now,
                "mail_received",
                {
                    "inbound_id": row,
                    "identity": identity,
                    "folder": folder,
                    "uid": uid,
                    "uidvalidity": validity,
                    "message_id": message_id,
                    "sha256": digest,
                    "size": len(raw),
                    "classification": _summary(c, classification),
                    "in_reply_to": found.message.message_id if found.message else None,
                },
                case_id=facts.case_id,
                message_id=found.message.row_id if found.message else None,
            )
            fresh = True  # facts still say what the store says (their reading is skipped)
            if (
                c.kind in (Kind.HUMAN_REPLY, Kind.AUTOREPLY)
                and c.from_address
                and c.from_address.lower() in known.soft_bounced
            ):
                # Proof the address receives mail: soft bounces were not "in a row".
                store.conn.execute(
                    "UPDATE contacts SET soft_bounces = 0 WHERE address = ?", (c.from_address,)
                )
                known.forget_address(c.from_address)
                fresh = False
            self._signal(c, facts.case_id, found.message, now)
            for effect in effects:
                changed = self.apply_effect(
                    effect, facts, now, identity=identity, inbound_id=row, fresh=fresh,
                    withdraw=facts.case_id in known.pending,
                )  # fmt: skip
                if isinstance(effect, SoftBounce):
                    known.soft_bounced.add(effect.address.lower())
                if isinstance(effect, (Resend, Blocked)):
                    known.pending.add(facts.case_id)  # a message may now wait to go
                if isinstance(changed, CaseFacts):  # what the case is now: no need to read it
                    facts, fresh = changed, True
                    known.facts[facts.case_id] = facts
                    # A pause or a review withdrew whatever waited to go (the states
                    # cases_with_pending reads): the case's next messages need not look.
                    known.pending.discard(facts.case_id)
                elif changed:
                    fresh = False
                    known.forget(facts.case_id)
        known.digests.add(digest)
        if message_id is not None:
            known.message_ids.add(message_id)
        return "stored", facts.case_id, ""

    def _case_hint(self, c: Classification) -> int | None:
        store = self.app.store
        sent = store_inbound.sent_refs(store, cited_ids(c))
        if sent:
            return next(iter(sent.values())).case_id
        if c.from_address:
            return store_inbound.contact_cases(store, [c.from_address]).get(c.from_address.lower())
        return None

    def _quarantine(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        uid: int | None,
        raw: bytes,
        case_id: int | None,
        why: str,
        now: datetime,
    ) -> None:
        store = self.app.store
        digest = hashlib.sha256(raw).hexdigest()
        with store.transaction():
            if store_inbound.already_stored(store, digest, None):
                return
            store.put_blob(raw)
            row = store_inbound.insert(
                store, identity=identity, folder=folder, uidvalidity=validity, uid=uid,
                message_id=None, sha256=digest, state="quarantined", kind="quarantined",
                case_id=case_id, related_message=None, from_address=None, subject="",
                classification={}, error=why[:1000], now=now,
            )  # fmt: skip
            store.append_event(
                now,
                "mail_quarantined",
                {"inbound_id": row, "identity": identity, "folder": folder, "uid": uid,
                 "sha256": digest, "size": len(raw), "error": why[:1000]},
                case_id=case_id,
            )  # fmt: skip
            if case_id is not None:
                store_inbound.open_review(
                    store, case_id, row, "a message about this case could not be read", None,
                    "", now,
                )  # fmt: skip

    # --- acting on the case ----------------------------------------------------------------

    def _signal(
        self, c: Classification, case_id: int, about: SentRef | None, now: datetime
    ) -> None:
        """What the message proves about delivery, for the blocking judgement: an answer is
        engagement with the conversation (keyed by the address we wrote to), an auto-reply or
        a delivery report proves our mail arrives."""
        store = self.app.store
        sender = about.identity if about else None
        if c.kind in (Kind.HUMAN_REPLY, Kind.AUTOREPLY):
            address = about.recipients[0] if about and about.recipients else c.from_address
            if address:
                kind = SignalKind.ENGAGED if c.kind is Kind.HUMAN_REPLY else SignalKind.REACHED
                signal = Signal(now, kind, sender, address, c.kind.value, c.subject[:200])
                store_blocking.record(store, signal, case_id, about.row_id if about else None)
        elif c.kind is Kind.DELIVERED:
            for r in c.recipients:
                signal = Signal(now, SignalKind.REACHED, sender, r.address, "report", r.status)
                store_blocking.record(store, signal, case_id, about.row_id if about else None)

    def apply_effect(
        self,
        effect: Effect,
        facts: CaseFacts,
        now: datetime,
        *,
        identity: str,
        inbound_id: int | None = None,
        source: str = "dsn",
        fresh: bool = False,
        withdraw: bool = True,
    ) -> bool | CaseFacts:
        """Carry out one decided effect on the case (in the caller's transaction); whether it
        may have changed the case's facts (status, pause, contacts): False, True, or the
        facts as they are now when the effect tells them (a pause, a review).

        ``identity`` is the mailbox the news came through (the sender, when the message it is
        about is unknown); ``source`` says how a refusal was seen: "dsn" or "smtp". ``fresh``
        says ``facts`` were read in this transaction and nothing changed the case since, so
        they need not be read again. ``withdraw`` False says the caller knows the case has no
        message waiting to go, so a pause, a review or a lost address has nothing to withdraw.
        """
        store = self.app.store
        case_id = facts.case_id
        if isinstance(effect, Pause):
            current = facts if fresh else store_inbound.case_facts(store, case_id)
            assert current is not None
            change = stricter_pause(current.status, current.paused_until, effect)
            if change is None:
                store.append_event(
                    now, "case_unchanged", {"wanted": "pause", "reason": effect.reason,
                                            "status": current.status.value}, case_id=case_id,
                )  # fmt: skip
                return False
            status, until = change
            set_case_status(store, case_id, status, now, "mailer", effect.reason[:500], until)
            if withdraw:
                outbox.cancel_pending(
                    store, case_id, now, {"reason": f"case paused: {effect.reason}"}
                )
            # As the store reads it back: UTC, to the second.
            until = datetime.fromisoformat(iso(until)) if until is not None else None
            return dataclasses.replace(current, status=status, paused_until=until)
        elif isinstance(effect, ToReview):
            current = facts if fresh else store_inbound.case_facts(store, case_id)
            assert current is not None
            to_review(store, case_id, current.status, now, effect.reason, withdraw=withdraw)
            if current.status in REVIEWABLE:
                return dataclasses.replace(current, status=CaseStatus.REVIEW, paused_until=None)
            return current
        elif isinstance(effect, Queue):
            store_inbound.open_review(
                store, case_id, inbound_id, effect.reason,
                effect.intent.value if effect.intent else None, effect.text, now,
            )  # fmt: skip
            return False
        elif isinstance(effect, SetContact):
            store.conn.execute(
                "UPDATE contacts SET status = ?, status_reason = ?, updated_at = ?"
                " WHERE address = ? AND debtor_id = (SELECT debtor_id FROM cases WHERE id = ?)",
                (effect.status.value, effect.reason[:500], iso(now), effect.address, case_id),
            )
            store.append_event(
                now, "contact_status",
                {"address": effect.address, "status": effect.status.value,
                 "reason": effect.reason[:500]},
                case_id=case_id,
            )  # fmt: skip
            if withdraw:
                outbox.cancel_pending(
                    store, case_id, now,
                    {"reason": f"{effect.address} {effect.status.value}"}, only_to=effect.address,
                )  # fmt: skip
            self._look_now(case_id, now)
        elif isinstance(effect, SoftBounce):
            store.conn.execute(
                "UPDATE contacts SET soft_bounces = soft_bounces + 1, updated_at = ?"
                " WHERE address = ? AND debtor_id = (SELECT debtor_id FROM cases WHERE id = ?)",
                (iso(now), effect.address, case_id),
            )
            store.append_event(now, "soft_bounce", {"address": effect.address}, case_id=case_id)
        elif isinstance(effect, Resend):
            self._resend(effect, case_id, now)
        elif isinstance(effect, Blocked):
            sender = effect.message.identity if effect.message else identity
            signal = Signal(now, effect.kind, sender, effect.address, source, effect.why)
            with store.unbatched():  # the failover reads earlier verdicts from the events
                Failover(self.app).observe(case_id, signal, effect.message, now)
        elif isinstance(effect, Note):
            store.append_event(now, "mail_noted", {"note": effect.what[:500]}, case_id=case_id)
            return False
        return True

    def _look_now(self, case_id: int, now: datetime) -> None:
        self.app.store.conn.execute(
            "UPDATE cases SET next_action_at = ? WHERE id = ? AND status IN ('active', 'paused')",
            (iso(now), case_id),
        )

    def _resend(self, effect: Resend, case_id: int, now: datetime) -> None:
        """The bounced message again, to ``effect.to``: same words, new Message-ID and Date."""
        store = self.app.store
        original = outbox.get(store, effect.message.row_id)
        if original is None or not is_address(effect.to):
            return
        current = store_inbound.case_facts(store, case_id)
        if current is None or current.status not in (CaseStatus.ACTIVE, CaseStatus.PAUSED):
            return
        settings = self.app.settings
        identity = settings.identity(original.identity)
        row = store.conn.execute(
            "SELECT coalesce(max(resend), 0) + 1 FROM messages WHERE case_id = ? AND step = ?",
            (case_id, original.step),
        ).fetchone()
        number = int(row[0])
        message_id = new_message_id(identity, case_id, original.step)
        data = readdress(outbox.raw(store, original), effect.to, message_id, now)
        outbox.enqueue(
            store,
            case_id=case_id,
            step=original.step,
            step_name=original.step_name,
            channel=original.channel,
            identity=original.identity,
            message_id=message_id,
            recipients=[effect.to],
            subject=original.subject,
            raw=data,
            in_reply_to=original.in_reply_to,
            state=MessageState.QUEUED,
            now=now,
            deadline=effect.at + timedelta(hours=settings.retry_deadline_hours),
            resend=number,
            not_before=effect.at,
        )
        store.append_event(
            now, "message_resend_planned",
            {"of": original.message_id, "message_id": message_id, "to": effect.to,
             "at": iso(effect.at), "why": effect.why[:500]},
            case_id=case_id, message_id=original.id,
        )  # fmt: skip


def readdress(raw: bytes, to: str, message_id: str, when: datetime) -> bytes:
    """The same message for another recipient: To, Message-ID and Date replaced, body unchanged."""
    if not is_address(to):
        raise ValueError(f"not an address: {to!r}")
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    for name, value in (
        ("To", to),
        ("Message-ID", message_id),
        ("Date", email.utils.format_datetime(when)),
    ):
        del msg[name]
        msg[name] = value
    return msg.as_bytes(policy=email.policy.SMTP)


def _summary(c: Classification, row: str) -> Canonical | dict[str, object]:
    """The classification as recorded in the event log (reply text kept: it is the evidence,
    up to 4,000 characters). ``row`` is the inbound row's (``encode_classification``): the
    same text, unless the reply is longer."""
    if len(c.reply_text) <= _EVENT_REPLY_TEXT:
        return Canonical(row)
    return {**c.to_json(), "reply_text": c.reply_text[:_EVENT_REPLY_TEXT]}


@dataclass(slots=True)
class _Mail:
    """One message of a chunk: as fetched, what the pure reading made of it, and (once the
    chunk's store reads are done) what it cites and the case it matches."""

    uid: int | None
    raw: bytes
    readable: bool
    digest: str
    c: Classification
    packed: bytes | None
    row: str | None
    cited: list[str] = field(default_factory=list)
    found: Match | None = None


@dataclass
class _Known:
    """What recording a chunk needs from the store, read once for all its messages and kept
    up to date as they are recorded: the same answers as asking the store each time."""

    digests: set[str]  # of mail on file (dedupe by content)
    message_ids: set[str]  # of mail on file (dedupe by Message-ID)
    sent: dict[str, SentRef]  # our messages the chunk cites
    # Senders of the chunk (lower case) with soft bounces counted: the only addresses whose
    # count an answer has to reset.
    soft_bounced: set[str]
    # Facts of the cases the chunk's messages match, dropped as soon as something may change
    # them (then read again): most messages of a catch-up find their case as the one before
    # left it.
    facts: dict[int, CaseFacts]
    # Cases with messages waiting to go (the only ones a pause, a review or a lost address
    # withdraws).
    pending: set[int]

    @classmethod
    def load(cls, store: Store, mails: Sequence[_Mail]) -> _Known:
        """Read what the chunk needs, and match each message to its case (what matching reads,
        our messages and the debtors' addresses, recording the chunk does not change)."""
        digests, message_ids = store_inbound.stored_keys(
            store, [m.digest for m in mails], [m.c.message_id for m in mails]
        )
        for m in mails:
            m.cited = cited_ids(m.c)
        sent = store_inbound.sent_refs(store, [ref for m in mails for ref in m.cited])
        senders = [m.c.from_address for m in mails if m.c.from_address]
        addresses = [r.address for m in mails for r in m.c.recipients] + senders
        contacts = store_inbound.contact_cases(store, addresses)
        for m in mails:
            m.found = match(m.c, {ref: sent[ref] for ref in m.cited if ref in sent}, contacts)
        cases = {m.found.case_id for m in mails if m.found is not None}
        return cls(
            digests,
            message_ids,
            sent,
            store_inbound.soft_bounced(store, senders),
            store_inbound.cases_facts(store, cases),
            store_inbound.cases_with_pending(store, cases),
        )

    def case_facts(self, store: Store, case_id: int) -> CaseFacts | None:
        """The case's facts as the store has them now (read again once dropped)."""
        facts = self.facts.get(case_id)
        if facts is None:
            facts = store_inbound.case_facts(store, case_id)
            if facts is not None:
                self.facts[case_id] = facts
        return facts

    def forget(self, case_id: int | None) -> None:
        if case_id is not None:
            self.facts.pop(case_id, None)

    def forget_address(self, address: str) -> None:
        """Drop the facts of every case with this contact address (its row changed)."""
        lower = address.lower()
        for case_id in [
            k for k, f in self.facts.items() if any(a.lower() == lower for a, *_ in f.contacts)
        ]:
            del self.facts[case_id]


def _log_outcome(
    identity: str,
    folder: str,
    uid: int | None,
    c: Classification,
    outcome: str,
    case_id: int | None,
    why: str,
) -> None:
    if outcome == "stored" and log.isEnabledFor(logging.INFO):
        log.info(
            "case %s: %s%s from %s", case_id, c.kind.value,
            f" ({c.intent.value})" if c.intent else "", c.from_address or "?",
            extra={"case_id": case_id, "message_id": c.message_id},
        )  # fmt: skip
    elif outcome == "quarantined":
        log.warning("quarantined %s/%s uid %s: %s", identity, folder, uid, why[:200])
