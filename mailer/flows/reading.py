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
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import date
from typing import NamedTuple

from mailer.domain.classify import Classification, classify
from mailer.store.db import compress
from mailer.store.inbound import encode_classification

log = logging.getLogger(__name__)


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


class Reader:
    """Classifies chunks of mail in one worker process while the caller records earlier chunks.

    On two cores a chunk's classification (~40 ms for 200 messages) then costs the recording
    process only the unpickling of its results. Started on first use (``start`` to wait for it)
    and kept until ``close``; chunks are read in-process until it is up.
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
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_started,
                    initargs=(os.getpid(),),
                )
            except Exception as exc:  # no process support here (a sandbox, no /dev/shm)
                self._failed(exc)
                return None
        return self._pool

    def submit(
        self, raws: Sequence[bytes], today: date, ahead: float = 0.0
    ) -> Future[list[Read]] | None:
        """Start reading ``raws`` in the worker, with the rest of the pure work for a share
        ``ahead`` (0 to 1) of them; None when there is no worker to do it."""
        pool = self._ensure()
        if pool is None:
            return None
        try:
            return pool.submit(read_all, list(raws), today, round(ahead * len(raws)))
        except Exception as exc:  # the pool broke since the last chunk
            self._failed(exc)
            return None

    async def result(
        self, future: Future[list[Read]] | None, raws: Sequence[bytes], today: date
    ) -> list[Read]:
        """What ``submit`` started, or the same read in-process if the worker failed at it.

        Until the worker has answered once (it takes ~0.5 s to start), a result that is not
        ready is not waited for: the chunk is read here, and the worker's copy dropped.
        """
        if future is not None and not self._answered and not future.done():
            future.cancel()  # if still queued; if running, its result is not used
            future = None
        if future is not None:
            try:
                found = await asyncio.wrap_future(future)
                if len(found) == len(raws):
                    self._answered = True
                    return found
                raise RuntimeError(f"{len(found)} results for {len(raws)} messages")
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                self._failed(exc)
        return [read(raw, today) for raw in raws]

    def _failed(self, exc: BaseException) -> None:
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
