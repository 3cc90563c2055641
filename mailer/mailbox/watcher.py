"""One watcher per identity mailbox: sync, then IDLE (or poll), reconnecting with backoff forever.

imapclient runs in worker threads (``asyncio.to_thread``), one call at a time per connection:
it is the library the project already uses for APPEND and reconciliation, it is mature and
typed, and its IDLE support is explicit (``idle``/``idle_check``/``idle_done``). An asyncio IMAP
client would save the threads but brings a second IMAP stack and error mapping to maintain for
one long-lived connection per mailbox, which a thread handles well. Database work stays on the
event loop's thread: SQLite connections are not shared across threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from mailer.domain.models import Identity
from mailer.errors import MailerError, PermanentError
from mailer.flows.inbound import Inbound, InboundReport, MailboxReader

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0


class WatchedMailbox(MailboxReader, Protocol):
    def connect(self) -> None: ...

    def close(self) -> None: ...

    def supports_idle(self) -> bool: ...

    def idle_wait(self, folder: str, seconds: float, stop: Callable[[], bool]) -> bool: ...


@dataclass
class Watcher:
    """Mailman-style runner for one mailbox: one pass → wait for news → again; never dies."""

    identity: Identity
    inbound: Inbound
    make_box: Callable[[Identity], WatchedMailbox]
    clock: Callable[[], datetime]
    folders: Sequence[str] = ("INBOX",)
    idle_seconds: float = 25 * 60.0
    poll_seconds: float = 60.0
    connected: bool = False
    last_contact: datetime | None = None  # the last pass that completed
    last_error: str | None = None
    passes: int = 0
    failures: int = 0  # connections or passes that ended in an error
    totals: InboundReport | None = None
    _idle_thread: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def _idler(self) -> ThreadPoolExecutor:
        if self._idle_thread is None:
            self._idle_thread = ThreadPoolExecutor(1, f"idle-{self.identity.name}")
        return self._idle_thread

    async def run(self, stop: Callable[[], bool]) -> None:
        backoff = 1.0
        while not stop():
            box: WatchedMailbox | None = None
            try:
                box = self.make_box(self.identity)
                await asyncio.to_thread(box.connect)
                idle = await asyncio.to_thread(box.supports_idle)
                self.connected = True
                log.info("watching %s (%s)", self.identity.address, "IDLE" if idle else "polling")
                while not stop():
                    await self.one_pass(box, stop)
                    backoff = 1.0
                    if stop():
                        break
                    if idle:
                        # Several folders: IDLE watches one, so wake up to poll the others.
                        wait = self.idle_seconds
                        if len(self.folders) > 1:
                            wait = min(wait, self.poll_seconds)
                        # In a thread of its own: an IDLE holds its thread for minutes, and
                        # asyncio's shared pool (min(32, cores + 4) threads) would run dry with
                        # a few mailboxes, starving every other to_thread call of the daemon.
                        await asyncio.get_running_loop().run_in_executor(
                            self._idler(), box.idle_wait, self.folders[0], wait, stop
                        )
                    else:
                        await _sleep(self.poll_seconds, stop)
            except PermanentError as exc:
                # Wrong password, a folder that does not exist: keep trying, slowly and loudly.
                self.failures += 1
                self.last_error = str(exc)
                log.error("mailbox %s: %s", self.identity.address, exc)
                backoff = MAX_BACKOFF
            except MailerError as exc:
                self.failures += 1
                self.last_error = str(exc)
                log.warning("mailbox %s: %s; reconnecting", self.identity.address, exc)
            except Exception as exc:  # never let one mailbox's surprise stop the daemon
                self.failures += 1
                self.last_error = repr(exc)
                log.exception("mailbox %s failed; reconnecting", self.identity.address)
            finally:
                self.connected = False
                if box is not None:
                    await asyncio.to_thread(box.close)
            if stop():
                break
            await _sleep(backoff, stop)
            backoff = min(backoff * 2, MAX_BACKOFF)
        if self._idle_thread is not None:
            self._idle_thread.shutdown(wait=False)
            self._idle_thread = None

    @property
    def looked(self) -> bool:
        """The mailbox was read once since the start, or found unreachable."""
        return self.passes > 0 or self.failures > 0

    async def one_pass(self, box: MailboxReader, stop: Callable[[], bool]) -> InboundReport:
        report = await self.inbound.sync(self.identity.name, box, self.clock(), stop)
        self.passes += 1
        self.last_contact = self.clock()
        self.last_error = None
        if self.totals is None:
            self.totals = InboundReport()
        self.totals.add(report)
        if report.stored or report.quarantined or report.resync or report.errors:
            log.info(
                "mailbox %s: %d examined, %d case-related, %d quarantined%s",
                self.identity.address,
                report.examined,
                report.stored,
                report.quarantined,
                ", resynced" if report.resync else "",
            )
        return report


async def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep, waking early when ``stop()`` turns true."""
    end = time.monotonic() + seconds
    while not stop():
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.2))
