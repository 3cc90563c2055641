"""One bounded inbound pass per mailbox: fetch what is new, keep what concerns a case, act on it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol

from mailer.domain.inbound import Headers, Relevance, read_headers, screen
from mailer.flows.reading import Handed, Reader
from mailer.flows.recording import Recorder
from mailer.store import inbound as store_inbound

log = logging.getLogger(__name__)
CHUNK = 200  # messages fetched per round trip; the checkpoint advances after each chunk
_AHEAD = 2  # chunks a catch-up hands the reader's worker beyond the one it records


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
class Inbound(Recorder):
    """An identity's mailbox read since its checkpoint, folder by folder, and what concerns a
    case recorded (``Recorder``), a chunk at a time."""

    # Classifies a catch-up's next chunk in a worker process while this one records the
    # current chunk; None: everything in-process.
    reader: Reader | None = None

    def close(self) -> None:
        """Stop the reader's worker, if one runs (the daemon's shutdown)."""
        if self.reader is not None:
            self.reader.close()

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
                handed = None
                if reader is not None and chunk.items:
                    handed = reader.submit([raw for _uid, raw, _ok in chunk.items], today, ahead)
                held.append((chunk, handed))
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
        handed: Handed | None,
        now: datetime,
        *,
        durable: bool = True,
    ) -> list[str]:
        reads = None
        if handed is not None and self.reader is not None:
            raws = [raw for _uid, raw, _ok in chunk.items]
            reads = await self.reader.result(handed, raws, now.date())
        return self.process_many(
            identity, folder, validity, chunk.items, now, checkpoint=chunk.checkpoint,
            read=reads, durable=durable,
        )  # fmt: skip
