"""The supervisor: builds the edges, runs bounded ticks on a clock, stops cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailer.app import App
from mailer.config import Settings, read_secret
from mailer.domain.models import Identity
from mailer.errors import MailerError
from mailer.evidence import tsa
from mailer.flows.inbound import Inbound
from mailer.flows.instalments import Instalments
from mailer.flows.outbound import MailboxPort, Outbound, TickReport
from mailer.mailbox.imap import ImapMailbox
from mailer.mailbox.watcher import Watcher
from mailer.transports.smtp import SmtpTransport

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The only place mailer reads the time of day."""
    return datetime.now(UTC)


def build_transports(settings: Settings) -> dict[str, SmtpTransport]:
    """One SMTP transport per identity; passwords read now, kept in memory only."""
    return {
        ident.name: SmtpTransport(ident, read_secret(ident) if ident.smtp_user else None)
        for ident in settings.identities
    }


@contextlib.contextmanager
def open_mailbox(identity: Identity) -> Iterator[MailboxPort]:
    """A logged-in IMAP session for one operation (closed after, even on error)."""
    box = ImapMailbox.for_identity(identity, read_secret(identity))
    with box:
        yield box


def make_box(identity: Identity) -> ImapMailbox:
    """A long-lived IMAP session for the watcher (connected by the watcher, in a thread)."""
    return ImapMailbox.for_identity(identity, read_secret(identity), timeout=60.0)


def build_watchers(app: App, clock: Clock) -> list[Watcher]:
    """One watcher per identity whose mailbox mailer can read."""
    inbound = Inbound(app)
    s = app.settings.inbound
    return [
        Watcher(
            ident,
            inbound,
            make_box,
            clock,
            folders=s.folders,
            idle_seconds=s.idle_seconds,
            poll_seconds=s.poll_seconds,
        )
        for ident in app.settings.identities
        if ident.imap_host
    ]


@dataclass
class Daemon:
    """Mailman-style runner: one tick → check stop → snooze, until a signal says stop."""

    app: App
    outbound: Outbound
    interval: float
    clock: Clock = system_clock
    shutdown_timeout: float = 20.0
    stopping: bool = False
    ticks: int = 0
    last_report: TickReport = field(default_factory=TickReport)
    watchers: list[Watcher] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _watching: list[asyncio.Task[None]] = field(default_factory=list)

    def request_stop(self) -> None:
        if self.stopping:
            # Second signal: the person means it. Nothing is lost: what was mid-send is
            # reconciled from the mailbox at the next start.
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("stop requested: finishing the message in hand")
        self.stopping = True
        self._wake.set()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def _timestamp(self, now: datetime, report: TickReport) -> None:
        """RFC 3161 stamp of the chain head when due; the TSA is asked from a worker thread."""
        settings = self.app.settings
        try:
            head = tsa.due_head(self.app.store, settings, now)
            if head is None:
                return
            token, info = await asyncio.to_thread(tsa.fetch_token, settings, head[1])
            tsa.record_token(self.app.store, settings, now, head, token, info)
        except MailerError as exc:  # an unreachable TSA is retried at the next tick
            log.warning("time-stamping the event chain failed: %s", exc)
            report.errors.append(f"timestamp: {exc}")

    async def tick(self) -> TickReport:
        now = self.clock()
        report = await self.outbound.tick(now, stop=lambda: self.stopping)
        if not self.stopping:
            # Cases on an instalment plan: their reminders are stored now, sent next tick.
            try:
                report.planned += Instalments(self.app).tick(now)
            except Exception as exc:
                log.exception("instalment pass failed")
                report.errors.append(f"instalments: {exc}")
        if not self.stopping:
            await self._timestamp(now, report)
        self.ticks += 1
        self.last_report = report
        if report.planned or report.sent or report.deferred or report.failed or report.errors:
            log.info(
                "tick: planned %d, sent %d, deferred %d, failed %d, reconciled %d, copies %d%s",
                report.planned, report.sent, report.deferred, report.failed,
                report.reconciled, report.copied,
                f", errors: {'; '.join(report.errors)}" if report.errors else "",
            )  # fmt: skip
        return report

    async def run(self) -> None:
        """Loop until stopped; the tick in progress gets ``shutdown_timeout`` to finish."""
        self._watching = [
            asyncio.ensure_future(w.run(lambda: self.stopping)) for w in self.watchers
        ]
        while not self.stopping:
            task = asyncio.ensure_future(self.tick())
            stop_wait = asyncio.ensure_future(self._wake.wait())
            done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                try:
                    await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout)
                except TimeoutError:
                    log.warning("shutdown timeout: cancelling the tick in progress")
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            else:
                failure = task.exception()
                if failure is not None:
                    # A tick never raises by design; if one does, log it and keep running.
                    log.error("tick failed: %r", failure)
            stop_wait.cancel()
            # Snooze; a stop request sets the event, so this returns at once when stopping.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
        await self.close()

    async def close(self) -> None:
        if self._watching:
            # Each watcher notices the stop within a second (IDLE is waited in slices).
            _done, pending = await asyncio.wait(self._watching, timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._watching, return_exceptions=True)
        for transport in self.outbound.transports.values():
            with contextlib.suppress(Exception):
                await transport.close()
        self.app.store.close()
        log.info("stopped after %d ticks", self.ticks)


def make_daemon(settings: Settings, clock: Clock = system_clock) -> Daemon:
    app = App.open(settings)
    outbound = Outbound(app, build_transports(settings), open_mailbox)
    return Daemon(
        app,
        outbound,
        interval=settings.interval_seconds,
        clock=clock,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        watchers=build_watchers(app, clock),
    )
