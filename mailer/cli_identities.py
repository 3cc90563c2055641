"""`mailer identities`: how each of the business's sender identities is faring, and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from mailer.views import identity_rows

if TYPE_CHECKING:
    from mailer.cli import Ctx

_COUNTS = ("sent", "accepted", "bounced", "refused", "likely_blocks", "switched_away")


@click.command()
@click.pass_obj
def identities(obj: Ctx) -> None:
    """Per identity: sent, accepted, bounced, policy refusals, likely blocks, status."""
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
