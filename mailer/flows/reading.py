"""Reading incoming mail (hash and classify, both pure) in a worker process beside the recording."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import NamedTuple

from mailer.domain.classify import Classification, classify
from mailer.store.db import compress
from mailer.store.inbound import encode_classification

log = logging.getLogger(__name__)
# Messages a task of the worker reads (~10 ms of work): the unit this process takes back, and
# reads itself, when the worker is behind.
PART = 50
# Parts given to the worker at once: the one it reads and the next, so that it never waits for
# this process to hand it more. The rest wait here, where they can still be taken back (what the
# executor has queued cannot be).
WINDOW = 2


class Read(NamedTuple):
    """The pure part of handling a message: what its recording needs made from its bytes."""

    digest: str  # SHA-256 (hex) of the bytes
    c: Classification
    # Made ahead only by the worker (in-process, only for the messages that are stored):
    packed: bytes | None = None  # the bytes as the blob store keeps them (``compress``)
    row: str | None = None  # the classification as the inbound row keeps it


def read(raw: bytes, today: date) -> Read:
    return Read(hashlib.sha256(raw).hexdigest(), classify(raw, today=today))


def read_all(raws: Sequence[bytes], today: date, ahead: int = 0) -> list[Read]:
    """``read`` each message, and for the first ``ahead`` of them the rest of the recording's
    pure work too (the blob's compressed bytes, the inbound row's JSON)."""
    done = [read(raw, today) for raw in raws]
    for i in range(min(ahead, len(done))):
        digest, c, _packed, _row = done[i]
        done[i] = Read(digest, c, compress(raws[i]), encode_classification(c.to_json()))
    return done


def _worker_started(parent: int) -> None:
    # Ctrl-C reaches the whole process group, and systemd signals every process of the unit:
    # the daemon decides when its worker stops (``Reader.close``, in its bounded shutdown).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A daemon that dies without closing the reader (SIGKILL, a second SIGTERM's os._exit)
    # never reaches the worker through its pipes: the worker notices it was left on its own.
    threading.Thread(target=_orphaned, args=(parent,), name="parent-watch", daemon=True).start()


def _orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


@dataclass(eq=False)
class _Part:
    """Some messages of a handed chunk: waiting here (no future), or given to the worker."""

    raws: list[bytes]
    today: date
    share: int  # of them to make ready for recording too (``read_all``'s ``ahead``)
    future: Future[list[Read]] | None = None
    pool: ProcessPoolExecutor | None = None  # the worker's, once given
    taken: bool = False  # taken back (or never given): read in-process


class Handed:
    """A chunk handed to the reader, in parts."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts

    def done(self) -> bool:
        """Whether the worker has read every part (its results wait to be taken)."""
        return all(p.future is not None and p.future.done() for p in self.parts)


class Reader:
    """Classifies chunks of mail in one worker process while the caller records earlier chunks.

    On two cores a chunk's classification (~40 ms for 200 messages) then costs the recording
    process only the unpickling of its results. The worker is given a chunk in parts, two at a
    time; when the recording asks for a chunk whose parts still wait, it reads them itself, so a
    worker that falls behind (a slow chunk, a busy machine) shares the reading instead of making
    the recording wait. Started on first use (``start`` to wait for it) and kept until
    ``close``; chunks are read in-process until it is up.
    Whatever goes wrong with the worker (it cannot start, it dies, a result cannot be sent back)
    costs nothing but time: the chunk is read in-process instead, with the same outcome, since
    reading is pure. After a failure the worker is started again at the next chunk, at most
    ``MAX_RESTARTS`` times; then the reader stays in-process.
    """

    MAX_RESTARTS = 3

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._failures = 0
        self._closed = False
        self._answered = False  # the running worker has answered (it is up)
        # Parts handed but not yet given to the worker, oldest first, and how many it has.
        # The lock is shared with the executor's thread, which gives the next part as one ends
        # (a future's callback). It is taken before the executor's own lock (in ``submit``),
        # never after: the executor runs callbacks without holding its lock.
        self._lock = threading.RLock()
        self._waiting: deque[_Part] = deque()
        self._given = 0

    @classmethod
    def for_machine(cls) -> Reader | None:
        """A reader when there is a second core to run it on; None (read in-process) otherwise."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return cls() if (cores or 1) >= 2 else None

    def start(self) -> bool:
        """Start the worker now (and wait until it answers); False when it cannot run."""
        pool = self._ensure()
        if pool is None:
            return False
        try:
            pool.submit(read_all, [], date(2000, 1, 1)).result()
        except Exception as exc:
            self._failed(exc)
            return False
        self._answered = True
        return True

    def _ensure(self) -> ProcessPoolExecutor | None:
        if self._closed or self._failures > self.MAX_RESTARTS:
            return None
        if self._pool is None:
            try:
                # spawn: a fresh interpreter, nothing of the daemon's state (its SQLite
                # connection, sockets, threads) copied into it.
                pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_started,
                    initargs=(os.getpid(),),
                )
                with self._lock:
                    self._pool, self._given = pool, 0
            except Exception as exc:  # no process support here (a sandbox, no /dev/shm)
                self._failed(exc)
                return None
        return self._pool

    def submit(self, raws: Sequence[bytes], today: date, ahead: float = 0.0) -> Handed | None:
        """Hand ``raws`` to the worker, in parts of ``PART``, with the rest of the pure work for a
        share ``ahead`` (0 to 1) of them; None when there is no worker to do it."""
        if self._ensure() is None:
            return None
        extra = round(ahead * len(raws))
        parts = []
        for start in range(0, len(raws), PART):
            piece = list(raws[start : start + PART])
            share = max(0, min(len(piece), extra - start))
            parts.append(_Part(piece, today, share))
        with self._lock:
            self._waiting.extend(parts)
        self._give()
        return Handed(parts)

    def _give(self) -> None:
        """Give the worker waiting parts until it has ``WINDOW`` of them."""
        with self._lock:
            while self._given < WINDOW * self.workers and self._waiting:
                part = self._waiting[0]
                pool = self._pool
                if pool is None or self._closed:
                    return  # the parts wait, and are read in-process when their turn comes
                try:
                    future = pool.submit(read_all, part.raws, part.today, part.share)
                except Exception as exc:
                    # The worker died since its last part: these parts are read in-process,
                    # and the next chunk starts a new worker.
                    self._failed(exc, pool)
                    return
                self._waiting.popleft()
                part.future, part.pool = future, pool
                self._given += 1
                future.add_done_callback(partial(self._given_back, pool))

    def _given_back(self, pool: ProcessPoolExecutor, _future: Future[list[Read]]) -> None:
        # In the executor's thread (or this one, if it was done at once). A part of a pool
        # that was replaced no longer counts.
        with self._lock:
            if pool is self._pool:
                self._given -= 1
        self._give()

    def drop(self, handed: Handed) -> None:
        """Forget a handed chunk whose result will not be asked for (its caller gave up)."""
        with self._lock:
            for part in handed.parts:
                part.taken = True
                if part.future is not None:
                    part.future.cancel()
            self._waiting = deque(p for p in self._waiting if not p.taken)

    async def result(self, handed: Handed | None, raws: Sequence[bytes], today: date) -> list[Read]:
        """What ``submit`` started, the same as reading ``raws`` in-process.

        The parts the worker has not been given yet are taken back and read here, while it
        finishes the ones it has: neither process waits long for the other, whichever is the
        slower at the time. Until the worker has answered once (it takes ~0.5 s to start), a
        part that is not ready is not waited for either: it is read here, and the worker's copy
        dropped. A part the worker fails at is read here too.
        """
        if handed is None:
            return [read(raw, today) for raw in raws]
        handed_count = sum(len(p.raws) for p in handed.parts)
        if handed_count != len(raws):
            raise ValueError(f"{handed_count} messages handed to the worker, {len(raws)} to read")
        with self._lock:
            for part in handed.parts:
                future = part.future
                if future is None or future.cancelled():
                    part.taken = True
                elif not self._answered and not future.done():
                    part.taken = True
                    future.cancel()  # if the executor still has it queued
            if any(p.taken and p.future is None for p in handed.parts):
                self._waiting = deque(p for p in self._waiting if not p.taken)
        out: list[list[Read]] = [
            [read(raw, today) for raw in p.raws] if p.taken else [] for p in handed.parts
        ]
        for i, part in enumerate(handed.parts):
            if part.taken:
                continue
            assert part.future is not None
            try:
                found = await asyncio.wrap_future(part.future)
                if len(found) != len(part.raws):
                    raise RuntimeError(f"{len(found)} results for {len(part.raws)} messages")
                self._answered = True
                out[i] = found
                continue
            except asyncio.CancelledError:
                if not part.future.cancelled():
                    raise  # this task was cancelled, not the part
                # The executor was shut down with the part in it (a failure, or close).
            except Exception as exc:
                self._failed(exc, part.pool)
            out[i] = [read(raw, today) for raw in part.raws]
        return [r for part in out for r in part]

    def _failed(self, exc: BaseException, pool: ProcessPoolExecutor | None = None) -> None:
        """A worker failed (``pool``: the one a part was given to, if known)."""
        # Under the lock: the executor's thread (giving a part) and this one (awaiting a part)
        # may both see the same dead worker.
        with self._lock:
            if pool is not None and pool is not self._pool:
                return  # that worker was already let go (its other parts fail too)
            self._failures += 1
            log.warning(
                "classifying worker failed (%s: %s): this chunk is read in-process%s",
                type(exc).__name__,
                exc,
                "" if self._failures <= self.MAX_RESTARTS else ", and every chunk from now on",
            )
            self._answered = False
            self._shutdown(wait=False)

    def _shutdown(self, wait: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker: it finishes the chunk in hand, if any, within ``timeout`` seconds,
        else it is killed (its work is pure: nothing is lost). Later chunks are read in-process.
        """
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # shutdown(wait=True) has no time limit: it waits in a thread of its own, and a worker
        # still busy when the time is up is killed (the executor keeps its processes in a
        # private attribute, read for that alone).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        stopper = threading.Thread(
            target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
        )
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            for process in processes:
                if process.exitcode is None:
                    log.warning("classifying worker %s did not stop: killed", process.pid)
                    process.kill()
            stopper.join(5.0)
