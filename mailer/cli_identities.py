"""`mailer identities`: how each of the business's sender identities is faring, and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from mailer.flows.blocking import Failover
from mailer.store.blocking import identity_counts

if TYPE_CHECKING:
    from mailer.cli import Ctx


@click.command()
@click.pass_obj
def identities(obj: Ctx) -> None:
    """Per identity: sent, accepted, bounced, policy refusals, likely blocks, status."""
    console = Console(highlight=False)
    app = obj.app()
    counts = identity_counts(app.store)
    failover = Failover(app)
    pool = app.settings.failover_pool()
    table = Table(title="Sender identities")
    for column in ("identity", "address", "sent", "accepted", "bounced", "refused",
                   "likely blocks", "switched away", "status"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for ident in app.settings.identities:
        c = counts.get(ident.name)
        health = failover.health(ident.name, obj.now)
        if health.problem:
            status = f"problem: {health.why}"
        elif ident.name not in pool:
            status = "ok (not in the failover pool)"
        else:
            status = "ok" if not health.refusing else f"ok ({health.why})"
        table.add_row(
            ident.name,
            ident.address,
            *(str(getattr(c, f, 0)) if c else "0" for f in (
                "sent", "accepted", "bounced", "refused", "likely_blocks", "switched_away")),
            status,
        )  # fmt: skip
    console.print(table)
