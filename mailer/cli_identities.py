"""`mailer identities`: how each sender identity is faring and why; resume the cases held for one."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from mailer.flows.staff import Resolution, resolve
from mailer.store.blocking import held_for_identity
from mailer.views import identity_rows

if TYPE_CHECKING:
    from mailer.cli import Ctx

_COUNTS = ("sent", "accepted", "bounced", "refused", "likely_blocks", "switched_away")


@click.group(invoke_without_command=True)
@click.pass_context
def identities(ctx: click.Context) -> None:
    """Per identity: sent, accepted, bounced, policy refusals, likely blocks, status."""
    if ctx.invoked_subcommand is None:
        _table(ctx.obj)


def _table(obj: Ctx) -> None:
    console = Console(highlight=False)
    app = obj.app()
    table = Table(title="Sender identities")
    for column in ("identity", "address", *(c.replace("_", " ") for c in _COUNTS), "status"):
        table.add_column(column, overflow="fold")
    for row in identity_rows(app.store, app.settings, obj.now):
        health = row.health
        if health.problem:
            status = f"problem: {health.why}"
        elif not row.in_pool:
            status = "ok (not in the failover pool)"
        else:
            status = "ok" if not health.refusing else f"ok ({health.why})"
        counts = (str(getattr(row.counts, f)) for f in _COUNTS)
        table.add_row(row.name, row.address, *counts, status)
    console.print(table)


@identities.command()
@click.argument("name")
@click.option("--note", default="", help="What was fixed, for the record.")
@click.option(
    "--by", "who", default=lambda: os.environ.get("USER", "staff"), help="Who decides (recorded)."
)
@click.pass_obj
def resume(obj: Ctx, name: str, note: str, who: str) -> None:
    """Resume the cases held because identity NAME was refused by many domains.

    For after the identity is fixed (its SPF, DKIM or DMARC, or a listing removed). Cases in
    review for any other reason since stay for a person; if the identity is still refused,
    its next refusals send the cases back to review.
    """
    console = Console(highlight=False)
    app = obj.app()
    if name not in {i.name for i in app.settings.identities}:
        raise click.BadParameter(
            f"no identity {name!r} in {app.settings.source}", param_hint="NAME"
        )
    held = held_for_identity(app.store, name)
    why = f"identity {name} works again" + (f": {note}" if note else "")
    for case_id in held:
        resolve(app.store, case_id, Resolution.RESUME, obj.now, who, note=why)
    console.print(
        f"{len(held)} case(s) held for identity {name} resumed"
        + (f": {', '.join(map(str, held))}" if held else "")
    )
