"""`mailer evidence …`: verify the record, export a case, time-stamp the chain, retention."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from mailer.errors import MailerError
from mailer.store.db import Store

if TYPE_CHECKING:
    from mailer.cli import Ctx

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_SHOWN = 50  # problems listed before "and N more"


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group()
def evidence() -> None:
    """The tamper-evident record: verify it, export it for a lawyer, time-stamp it, retention."""


@evidence.command()
@click.option(
    "--export",
    "export_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check this export (zip) instead of the database.",
)
@click.option("--no-timestamps", is_flag=True, help="Skip the RFC 3161 checks (no openssl).")
@click.pass_obj
def verify(obj: Ctx, export_file: Path | None, no_timestamps: bool) -> None:
    """Re-hash every stored message and event, check the chain and the time-stamps.

    Exits 1 and names the first break (event, blob, message, case) when anything fails.
    """
    from mailer.evidence.check_export import verify_export
    from mailer.evidence.verify import verify_store

    settings = obj.settings()
    store = Store.open(settings.database)
    try:
        if export_file is not None:
            problems = verify_export(export_file, store, settings.evidence.tsa_ca_file)
            summary = f"{export_file}: every file, the chain segment and its time-stamps"
        else:
            report = verify_store(store, settings.evidence, check_stamps=not no_timestamps)
            problems = report.problems
            summary = (
                f"{report.events} events ({report.redacted} redacted by purges), "
                f"{report.blobs} stored messages ({report.purged_blobs} purged), "
                f"{report.timestamps} time-stamps"
            )
    finally:
        store.close()
    if not problems:
        console.print(f"[green]ok:[/] {summary}")
        return
    err.print(f"[red]FAILED:[/] {len(problems)} problem(s); the first break is {problems[0]}")
    for problem in problems[:_SHOWN]:
        click.echo(f"  {problem}", err=True)
    if len(problems) > _SHOWN:
        click.echo(f"  … and {len(problems) - _SHOWN} more", err=True)
    sys.exit(1)


@evidence.command()
@click.option("--case", "case_ids", type=int, multiple=True, help="Case to export (repeatable).")
@click.option("--all", "export_all", is_flag=True, help="Every case.")
@click.option("--since", help="Only what happened from this moment (ISO 8601, UTC if no offset).")
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--no-timestamp", is_flag=True, help="Do not ask the TSA to stamp the manifest.")
@click.pass_obj
def export(
    obj: Ctx,
    case_ids: tuple[int, ...],
    export_all: bool,
    since: str | None,
    output: Path,
    no_timestamp: bool,
) -> None:
    """Write a zip with the emails, ledger, report (HTML + PDF), manifest and time-stamps."""
    from mailer.evidence.export import export_evidence

    if bool(case_ids) == export_all:
        raise click.UsageError("give --case ID (one or more) or --all")
    settings = obj.settings()
    store = Store.open(settings.database)
    try:
        report = export_evidence(
            store,
            settings,
            output,
            obj.now,
            case_ids=None if export_all else list(case_ids),
            since=_moment(since) if since else None,
            stamp=not no_timestamp,
        )
    finally:
        store.close()
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    chain = f"events {report.chain[0]}–{report.chain[1]}" if report.chain else "no events"
    console.print(
        f"{output}: {len(report.cases)} case(s), {report.files} files, chain {chain}, "
        f"{report.timestamps} time-stamp(s); manifest sha256 {report.manifest_sha256}"
        + (" (time-stamped)" if report.manifest_stamped else "")
    )


@evidence.command()
@click.pass_obj
def timestamp(obj: Ctx) -> None:
    """Time-stamp the chain head now if it is due (what the daemon does at intervals)."""
    from mailer.evidence.tsa import timestamp_if_due

    settings = obj.settings()
    if settings.evidence.tsa_url is None:
        raise MailerError("no [evidence] tsa_url configured")
    store = Store.open(settings.database)
    try:
        stamp = timestamp_if_due(store, settings, obj.now)
    finally:
        store.close()
    if stamp is None:
        console.print("nothing due: the last time-stamp is recent or the chain has not moved")
    else:
        console.print(
            f"chain head {stamp.head_id} ({stamp.head_hash}) stamped at {stamp.gen_time:%Y-%m-%d %H:%M:%S %Z}"
        )


@evidence.command()
@click.option("--apply", "apply_", is_flag=True, help="Block and purge now (default: only list).")
@click.pass_obj
def retention(obj: Ctx, apply_: bool) -> None:
    """Closed cases due to be blocked or purged under [evidence] retention settings."""
    from mailer.evidence.retention import apply_retention, describe, due

    settings = obj.settings()
    store = Store.open(settings.database)
    try:
        if not apply_:
            to_block, to_purge = due(store, settings.evidence, obj.now)
            console.print(f"to block: {to_block or 'none'}; to purge: {to_purge or 'none'}")
            if to_block or to_purge:
                console.print("run again with --apply to do it (each step is recorded)")
            return
        report = apply_retention(store, settings.evidence, obj.now)
    finally:
        store.close()
    console.print(f"blocked: {report.blocked or 'none'}")
    for purged in report.purged:
        console.print(f"purged: {describe(purged)}")
