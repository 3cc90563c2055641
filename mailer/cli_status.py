"""`mailer status`: the daemon, the queue, the mailboxes and the cases at a glance."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from mailer.health import (
    DaemonStatus,
    IdentityHealth,
    collect,
    open_readonly,
    read_status,
    status_path,
    tally_events,
)
from mailer.views import local_time

if TYPE_CHECKING:
    from mailer.cli import Ctx


@click.command()
@click.pass_obj
def status(obj: Ctx) -> None:
    """The daemon, queue, mailboxes and cases at a glance (also while the daemon is down)."""
    console = Console(highlight=False)
    settings = obj.settings()
    tz = settings.creditor.timezone
    daemon = read_status(status_path(settings))
    console.print(describe_daemon(daemon, obj.now, tz))
    store = open_readonly(settings.database)
    try:
        snap = collect(
            store, settings, obj.now, daemon.mailboxes if daemon else {}, tally_events(store)
        )
    finally:
        store.close()
    console.print(snap.summary())

    idents = Table(title="Identities")
    for column in ("identity", "address", "mailbox", "last read", "last sent", "sent", "blocks"):
        idents.add_column(column)
    for ident in snap.identities:
        idents.add_row(
            ident.name,
            ident.address,
            _mailbox(ident),
            _when(ident.last_imap_contact, obj.now, tz),
            _when(ident.last_smtp_send, obj.now, tz),
            str(ident.sent),
            str(ident.likely_blocks),
        )
    console.print(idents)
    for ident in snap.identities:
        if ident.last_error:
            console.print(f"[red]{ident.name}[/]: {ident.last_error}")

    counts = Table(title="Counts", show_header=False)
    counts.add_column("what")
    counts.add_column("figures")
    counts.add_row("messages", _pairs(snap.messages))
    counts.add_row("deferrals", str(snap.deferrals))
    counts.add_row("cases", _pairs(snap.cases))
    counts.add_row("bounces", _pairs(snap.bounces))
    counts.add_row("replies", _pairs(snap.replies))
    counts.add_row("mail in", _pairs(snap.inbound) + f"; quarantined {snap.quarantined}")
    counts.add_row("to review", str(snap.open_reviews))
    console.print(counts)


def describe_daemon(daemon: DaemonStatus | None, now: datetime, tz: str) -> str:
    """One line on the daemon, with how old that information is."""
    if daemon is None:
        return "daemon: no word from it yet (`mailer run` writes its status beside the database)"
    age = now - daemon.written_at
    said = f"last word {_ago(age)} ({local_time(daemon.written_at, tz)})"
    if daemon.state == "stopped":
        line = f"daemon: [yellow]stopped[/] — {said}"
    elif age > timedelta(seconds=max(3 * daemon.interval_seconds, 90)):
        line = (
            f"daemon: [red]not responding[/] — {said}; it may be down"
            " (systemctl status mailer, journalctl -u mailer)"
        )
    else:
        line = f"daemon: [green]running[/] (pid {daemon.pid}) — {said}"
    line += (
        f"\n  since {local_time(daemon.started_at, tz)}, {daemon.ticks} ticks, one every"
        f" {daemon.interval_seconds:g} s"
    )
    last = daemon.last_tick
    if last:
        line += (
            f"; last tick: planned {last.get('planned', 0)}, sent {last.get('sent', 0)},"
            f" deferred {last.get('deferred', 0)}, failed {last.get('failed', 0)}"
        )
        for error in last.get("errors") or []:
            line += f"\n  [red]tick error[/]: {error}"
    if daemon.reload_error:
        line += f"\n  [red]last reload refused[/] (older rules in force): {daemon.reload_error}"
    if daemon.metrics:
        line += f"\n  metrics: http://{daemon.metrics}/metrics"
    return line


def _mailbox(ident: IdentityHealth) -> str:
    if not ident.watched:
        return "not read"
    if ident.connected is None:
        return "unknown"
    return "[green]connected[/]" if ident.connected else "[red]disconnected[/]"


def _when(moment: datetime | None, now: datetime, tz: str) -> str:
    return f"{local_time(moment, tz)} ({_ago(now - moment)})" if moment else "never"


def _ago(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _pairs(counts: Mapping[str, int]) -> str:
    shown = [f"{key} {value}" for key, value in sorted(counts.items()) if value]
    return ", ".join(shown) or "none"
