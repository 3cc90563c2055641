"""The daemon as a service: sd_notify (ready, status, watchdog), the status file, metrics, reload.

The watchdog rule: keep-alives go out from the daemon's main loop, while it snoozes between
ticks and while a tick runs, but only as long as the tick makes progress (reaches a new
message or phase, see ``progress``). A tick stuck for ``stall_seconds`` (a hung server with
no timeout, a deadlock) stops them, and systemd restarts mailer; a blocked event loop stops
them too, since they come from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from mailer.app import Rules
from mailer.config import Settings
from mailer.errors import ConfigError
from mailer.health import (
    DaemonStatus,
    EventTally,
    MailboxState,
    Snapshot,
    collect,
    open_readonly,
    status_path,
    tally_events,
    write_status,
)
from mailer.metrics import MetricsServer
from mailer.notify import Notifier, watchdog_interval

if TYPE_CHECKING:
    from pathlib import Path

    from mailer.daemon import Daemon

log = logging.getLogger(__name__)


def load_rules(settings: Settings) -> Rules:
    """Campaigns and templates after the checks of `mailer check`, pinned as checked.

    Jinja2 re-reads a template whose file changed on disk; the daemon's templates must change
    only through a reload that passed the checks, so every template is compiled now and
    Jinja2 is told not to look at the files again.
    """
    rules = Rules.load(settings)
    for path, exc in rules.templates.pin():
        # The checks rendered every template in use (and what they include), so this file is
        # not one of them: say so, and go on.
        log.warning("%s: not a usable template, and not used: %s", path, exc)
    return rules


@dataclass
class Service:
    """What systemd, Prometheus and `mailer status` see of a running daemon.

    The default does nothing (tests and the demo build Daemons without it); ``for_settings``
    builds the real one from the environment systemd sets.
    """

    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    beat: float | None = None  # seconds between watchdog keep-alives; None: no watchdog
    stall_seconds: float = 600.0
    status_file: Path | None = None
    metrics_listen: tuple[str, int] | None = None
    metrics: MetricsServer | None = None
    started_at: datetime | None = None
    rules_loaded_at: datetime | None = None
    reload_error: str | None = None
    _progress: float = field(default_factory=time.monotonic)
    _ticking: bool = False
    _stalled: bool = False
    _tally: EventTally = field(default_factory=EventTally)
    # Health reads get a thread of their own: the default pool can be full of IMAP IDLEs.
    _pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Service:
        metrics = settings.metrics
        return cls(
            notifier=Notifier.from_env(),
            beat=watchdog_interval(),
            stall_seconds=settings.stall_seconds,
            status_file=status_path(settings),
            metrics_listen=(metrics.host, metrics.port) if metrics else None,
        )

    # --- the watchdog -----------------------------------------------------------------------

    def tick_started(self) -> None:
        self._ticking = True
        self.progress()

    def tick_ended(self) -> None:
        self._ticking = False
        self.progress()

    def progress(self) -> None:
        """The tick reached a new step."""
        self._progress = time.monotonic()
        if self._stalled:
            log.warning("the tick is moving again: watchdog keep-alives resume")
            self._stalled = False

    def keepalive(self) -> None:
        """WATCHDOG=1, unless the tick in progress is stuck."""
        if self.beat is None:
            return
        idle = time.monotonic() - self._progress
        if self._ticking and idle > self.stall_seconds:
            if not self._stalled:
                self._stalled = True
                log.error(
                    "the tick has made no progress for %.0f s: watchdog keep-alives stop, so"
                    " systemd restarts mailer",
                    idle,
                )
                self.notifier.status(f"stuck: the tick has made no progress for {idle:.0f} s")
            return
        self.notifier.watchdog()

    # --- life cycle -------------------------------------------------------------------------

    async def start(self, daemon: Daemon) -> None:
        self.started_at = self.rules_loaded_at = daemon.clock()
        if self.metrics_listen is not None:
            host, port = self.metrics_listen
            self.metrics = MetricsServer(host, port, lambda: self.snapshot(daemon))
            await self.metrics.start()
        summary = await self._summary(daemon)
        self.write(daemon, "running")
        self.notifier.ready(summary)
        log.info("started: %s", summary)

    async def after_tick(self, daemon: Daemon) -> None:
        self.notifier.status(await self._summary(daemon))
        self.write(daemon, "running")

    async def _summary(self, daemon: Daemon) -> str:
        try:
            return (await self.snapshot(daemon)).summary()
        except Exception as exc:  # health is for people; it never stops the daemon
            log.warning("reading the health snapshot failed: %s", exc)
            return f"tick {daemon.ticks} done (no health snapshot: {exc})"

    def stopping(self) -> None:
        self.notifier.stopping("stopping: finishing the message in hand")

    async def close(self, daemon: Daemon) -> None:
        if self.metrics is not None:
            await self.metrics.close()
        if self.started_at is not None:
            self.write(daemon, "stopped")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.notifier.close()

    async def reload(self, daemon: Daemon) -> bool:
        """Campaigns and templates again, if they pass `mailer check`; else the old stay."""
        self.notifier.reloading()
        settings = daemon.app.settings
        try:
            rules = await asyncio.get_running_loop().run_in_executor(
                self._executor(), load_rules, settings
            )
        except Exception as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [repr(exc)]
            for problem in problems:
                log.error("reload: %s", problem)
            log.error(
                "reload refused (%d problem(s)): the campaigns and templates loaded before stay"
                " in force",
                len(problems),
            )
            self.reload_error = "; ".join(problems)[:2000]
            ok = False
        else:
            daemon.app.rules = rules
            self.rules_loaded_at = daemon.clock()
            self.reload_error = None
            log.info(
                "reloaded: %d campaigns, templates from %s",
                len(rules.campaigns),
                settings.templates_dir,
            )
            ok = True
        self.write(daemon, "running")
        self.notifier.ready(await self._summary(daemon))
        return ok

    # --- what the service shows -------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mailer-health")
        return self._pool

    async def snapshot(self, daemon: Daemon) -> Snapshot:
        """Store figures from a read-only connection in a worker thread, plus the watchers."""
        mailboxes = mailbox_states(daemon)
        settings, now, since = daemon.app.settings, daemon.clock(), self._tally

        def read() -> tuple[Snapshot, EventTally]:
            store = open_readonly(settings.database)
            try:
                tally = tally_events(store, since)
                return collect(store, settings, now, mailboxes, tally), tally
            finally:
                store.close()

        loop = asyncio.get_running_loop()
        snapshot, tally = await loop.run_in_executor(self._executor(), read)
        if tally.last_id >= self._tally.last_id:
            self._tally = tally
        return snapshot

    def write(self, daemon: Daemon, state: str) -> None:
        if self.status_file is None or self.started_at is None:
            return
        status = DaemonStatus(
            pid=os.getpid(),
            state=state,
            written_at=daemon.clock(),
            started_at=self.started_at,
            ticks=daemon.ticks,
            interval_seconds=daemon.interval,
            last_tick=asdict(daemon.last_report),
            mailboxes=mailbox_states(daemon),
            rules_loaded_at=self.rules_loaded_at,
            reload_error=self.reload_error,
            metrics=self.metrics.address if self.metrics else None,
        )
        try:
            write_status(self.status_file, status)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_file, exc)


def mailbox_states(daemon: Daemon) -> dict[str, MailboxState]:
    return {
        w.identity.name: MailboxState(w.connected, w.last_contact, w.last_error)
        for w in daemon.watchers
    }
