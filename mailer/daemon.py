"""The supervisor: builds the edges, runs bounded ticks on a clock, stops cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mailer.app import App
from mailer.config import Settings, read_secret
from mailer.domain.models import Identity
from mailer.errors import MailerError
from mailer.evidence import tsa
from mailer.flows.inbound import Inbound
from mailer.flows.instalments import Instalments
from mailer.flows.mailchimp_readback import build_channels
from mailer.flows.mandrill_readback import build_mandrill
from mailer.flows.outbound import MailboxPort, Outbound, TickReport
from mailer.flows.reading import Reader
from mailer.mailbox.imap import ImapMailbox
from mailer.mailbox.watcher import Watcher
from mailer.service import Service, load_rules
from mailer.store.db import Store
from mailer.transports.smtp import SmtpTransport
from mailer.web import WebServer, build_web

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


class ChannelFlow(Protocol):
    """A channel's own pass (Mailchimp, Mandrill): crash leftovers, refusals, read-back."""

    async def tick(self, now: datetime, report: TickReport) -> None: ...


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
    # One reader for all watchers: a catch-up classifies its next chunk in the reader's
    # worker process while this one records the current chunk (started at the first catch-up).
    inbound = Inbound(app, reader=Reader.for_machine())
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
    web: WebServer | None = None  # the review page, when [web] is configured
    service: Service = field(default_factory=Service)  # sd_notify, status file, metrics
    channel_flows: list[ChannelFlow] = field(default_factory=list)  # read-back per channel
    _reload: bool = False
    _waiter: asyncio.Future[Any] | None = None  # waits on _wake across several waits

    def request_reload(self) -> None:
        log.info("reload requested: campaigns and templates are read again between ticks")
        self._reload = True
        self._wake.set()

    def request_stop(self) -> None:
        if self.stopping:
            # Second signal: the person means it. Nothing is lost: what was mid-send is
            # reconciled from the mailbox at the next start.
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("stop requested: finishing the message in hand")
        self.stopping = True
        self.service.stopping()
        self._wake.set()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

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

    def _step(self) -> bool:
        """The tick asks this at each step: progress for the watchdog, and whether to stop."""
        self.service.progress()
        return self.stopping

    async def tick(self) -> TickReport:
        self.service.tick_started()
        try:
            return await self._tick()
        finally:
            self.service.tick_ended()

    async def _tick(self) -> TickReport:
        now = self.clock()
        report = await self.outbound.tick(now, stop=self._step)
        if not self._step():
            # Cases on an instalment plan: their reminders are stored now, sent next tick.
            try:
                report.planned += Instalments(self.app).tick(now)
            except Exception as exc:
                log.exception("instalment pass failed")
                report.errors.append(f"instalments: {exc}")
        for flow in self.channel_flows:
            if not self._step():
                try:  # crash leftovers, refusals and read-back of the Mailchimp channels
                    await flow.tick(now, report)
                except Exception as exc:
                    log.exception("channel pass failed")
                    report.errors.append(f"channel: {exc}")
        if not self._step():
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
        if self.web is not None:
            self.web.start()  # first: a port already taken stops the start, nothing half-run
        await self.service.start(self)  # before the watchers: a port taken stops the start
        self._watching = [
            asyncio.ensure_future(w.run(lambda: self.stopping)) for w in self.watchers
        ]
        await self._read_mail_first()
        while not self.stopping:
            if self._reload:
                self._reload = False
                await self.service.reload(self)
            task = asyncio.ensure_future(self.tick())
            await self._finish(task)
            if not self.stopping:
                self._checkpoint()
                await self.service.after_tick(self)
            await self._snooze()
        await self.close()

    async def _read_mail_first(self) -> None:
        """Before the first tick sends anything, each watched mailbox is read once (or found
        unreachable): a reply that arrived while the daemon was down pauses its case before
        the next reminder can go. At most ``[inbound] first_read_seconds``: a mailbox that
        hangs delays the sending, it does not stop it."""
        limit = self.app.settings.inbound.first_read_seconds
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while not self.stopping:
            waiting = [w.identity.address for w in self.watchers if not w.looked]
            if not waiting:
                return
            left = end - loop.time()
            if left <= 0:
                log.warning(
                    "mailbox %s not read %.0f s after the start: sending without it",
                    ", ".join(waiting), limit,
                )  # fmt: skip
                return
            await self._wait(None, min(left, 0.2))

    def _checkpoint(self) -> None:
        """Between ticks, while little is being written: the WAL copied into the database
        (SQLite does it by itself only every 64 MB: see Store.open)."""
        try:
            self.app.store.checkpoint()
        except sqlite3.Error as exc:  # busy or full: the next tick, or SQLite's own, will do
            log.warning("WAL checkpoint failed: %s", exc)

    async def _wait(self, task: asyncio.Future[Any] | None, timeout: float | None) -> None:
        """Until ``task`` ends, a stop or reload request, or ``timeout``; then feed the watchdog."""
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.ensure_future(self._wake.wait())
        waiting: set[asyncio.Future[Any]] = {self._waiter} if task is None else {self._waiter, task}
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self.stopping:
            self._wake.clear()  # a reload request is remembered in ``_reload``
        self.service.keepalive()

    async def _finish(self, task: asyncio.Future[TickReport]) -> None:
        """Wait for the tick; a stop request gives it ``shutdown_timeout`` to finish."""
        while not task.done() and not self.stopping:
            await self._wait(task, self.service.beat)
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout)
            except TimeoutError:
                log.warning("shutdown timeout: cancelling the tick in progress")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        elif task.exception() is not None:
            # A tick never raises by design; if one does, log it and keep running.
            log.error("tick failed: %r", task.exception())

    async def _snooze(self) -> None:
        """``interval`` between ticks, cut short by a stop or reload request; the watchdog is
        fed every ``beat`` meanwhile, however long the interval."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.interval
        while not (self.stopping or self._reload):
            left = end - loop.time()
            if left <= 0:
                return
            await self._wait(None, min(left, self.service.beat or left))

    async def close(self) -> None:
        if self.web is not None:
            await asyncio.to_thread(self.web.stop)  # waits for its serving loop's next turn
        if self._watching:
            # Each watcher notices the stop within a second (IDLE is waited in slices).
            _done, pending = await asyncio.wait(self._watching, timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._watching, return_exceptions=True)
        for watcher in self.watchers:
            watcher.inbound.close()  # the reader's worker process, if one was started
        for transport in self.outbound.transports.values():
            with contextlib.suppress(Exception):
                await transport.close()
        await self.service.close(self)
        if self._waiter is not None:
            self._waiter.cancel()
        self.app.store.close()
        log.info("stopped after %d ticks", self.ticks)


def make_daemon(settings: Settings, clock: Clock = system_clock) -> Daemon:
    app = App(settings, Store.open(settings.database), load_rules(settings))
    channels, channel_flows = build_channels(app, clock)
    mandrill, mandrill_flows = build_mandrill(app, clock)
    channels |= mandrill
    outbound = Outbound(app, build_transports(settings), open_mailbox, channels=channels)
    return Daemon(
        app,
        outbound,
        interval=settings.interval_seconds,
        clock=clock,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        watchers=build_watchers(app, clock),
        web=build_web(settings, clock),
        service=Service.for_settings(settings),
        channel_flows=[*channel_flows, *mandrill_flows],
    )
