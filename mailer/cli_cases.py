"""`mailer review`, `mailer case ID` and `mailer resolve ID`: what a person reads and decides."""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from mailer.flows.staff import Resolution, agree_instalments, resolve
from mailer.store import inbound as store_inbound
from mailer.views import case_sheet, promise_end
from mailer.views import local_time as _local
from mailer.views import short as _short

if TYPE_CHECKING:
    from mailer.cli import Ctx


def _console() -> Console:
    # Made per command, so COLUMNS set for this run (a pager, a wide terminal, tests) applies.
    return Console(highlight=False)


@click.command()
@click.pass_obj
def review(obj: Ctx) -> None:
    """The review queue: replies, disputes and refusals waiting for a person."""
    console = _console()
    app = obj.app()
    items = store_inbound.open_reviews(app.store)
    if not items:
        console.print("nothing to review")
        return
    tz = app.settings.creditor.timezone
    table = Table(title=f"Review queue ({len(items)})")
    for column in ("#", "case", "debtor", "status", "why", "intent", "they wrote", "since"):
        table.add_column(column)
    for item in items:
        table.add_row(
            str(item.id),
            str(item.case_id),
            item.debtor_name,
            item.case_status,
            item.reason,
            item.intent or "",
            _short(item.text, 60),
            _local(item.created_at, tz),
        )
    console.print(table)
    console.print(
        "decide with: mailer case ID · mailer resolve ID --resume | --stop | --promise DATE"
    )


@click.command(name="case")
@click.argument("case_id", type=int)
@click.pass_obj
def case_cmd(obj: Ctx, case_id: int) -> None:
    """One case: the debtor, its addresses and invoices, and everything sent, received and decided."""
    console = _console()
    app = obj.app()
    sheet = case_sheet(app.store, case_id)
    tz = app.settings.creditor.timezone
    console.print(
        f"[bold]Case {case_id}[/] — {sheet.debtor_name} ({sheet.debtor_id}, {sheet.debtor_kind},"
        f" {sheet.debtor_lang}), campaign {sheet.campaign}"
    )
    line = f"status: {sheet.status}" + (f" — {sheet.status_reason}" if sheet.status_reason else "")
    if sheet.paused_until:
        line += f", until {_local(sheet.paused_until, tz)}"
    if sheet.closed_at:
        line += f", closed {_local(sheet.closed_at, tz)}"
    console.print(line)
    console.print(f"writing from: {sheet.identity or app.settings.failover_pool()[0]}")
    if sheet.verdict:
        v = sheet.verdict
        decision = v.get("decision") or {}
        console.print(
            f"delivery verdict: {v.get('identity')} → {v.get('address')}: {v.get('verdict')}"
            f" ({v.get('why')}); decided: {decision.get('action')} {decision.get('to', '')}"
        )
        for item in v.get("evidence") or []:
            console.print(
                f"  evidence: {item.get('at')} {item.get('kind')} via {item.get('source')}"
                f" {_short(str(item.get('detail') or ''), 120)}"
            )
    for contact in sheet.contacts:
        console.print(
            f"  {contact.address}: {contact.status}"
            + (f" ({contact.reason})" if contact.reason else "")
        )
    for invoice in sheet.invoices:
        console.print(
            f"  invoice {invoice.number}: {invoice.amount}, due {invoice.due_date},"
            f" paid {invoice.paid:.2f}"
        )
    table = Table(title="Timeline")
    for column in ("when", "what", "detail"):
        table.add_column(column)
    for entry in sheet.timeline:
        table.add_row(_local(entry.at, tz), entry.kind, entry.detail)
    console.print(table)
    for item in sheet.reviews:
        console.print(f"[yellow]review #{item.id}:[/] {item.reason}: {_short(item.text, 200)}")


@click.command(name="resolve")
@click.argument("case_id", type=int)
@click.option("--resume", "how", flag_value="resume", help="Back to the campaign now.")
@click.option("--stop", "how", flag_value="stop", help="No more automatic mail for this case.")
@click.option(
    "--promise",
    "promise",
    type=click.DateTime(["%Y-%m-%d"]),
    help="They promised to pay on DATE: pause until then (plus the grace days).",
)
@click.option("--instalments", type=int, help="Agree N instalments of the balance.")
@click.option("--every", "every_days", type=int, help="Days between instalments.")
@click.option(
    "--first",
    "first_due",
    type=click.DateTime(["%Y-%m-%d"]),
    help="First instalment's due date (default: in --every days).",
)
@click.option("--note", default="", help="Why, for the record.")
@click.option(
    "--by", "who", default=lambda: os.environ.get("USER", "staff"), help="Who decides (recorded)."
)
@click.pass_obj
def resolve_cmd(
    obj: Ctx,
    case_id: int,
    how: str | None,
    promise: datetime | None,
    instalments: int | None,
    every_days: int | None,
    first_due: datetime | None,
    note: str,
    who: str,
) -> None:  # fmt: skip
    """Decide on a case in review: --resume, --stop, --promise DATE or --instalments N --every DAYS."""
    console = _console()
    chosen = [x for x in (how, promise, instalments) if x is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --resume, --stop, --promise, --instalments")
    app = obj.app()
    if instalments is not None:
        if every_days is None:
            raise click.UsageError("--instalments needs --every DAYS")
        first = first_due.date() if first_due else None  # default: --every days from today
        schedule = agree_instalments(
            app.store, case_id, instalments, every_days, first, obj.now, who
        )
        for seq, due, amount in schedule:
            console.print(f"  instalment {seq}: {amount} due {due.isoformat()}")
        console.print(f"case {case_id}: instalment plan agreed; reminders follow each instalment")
        return
    if promise is not None:
        until = promise_end(
            app.store, case_id, promise.date(), app.settings.inbound.promise_grace_days
        )
        closed = resolve(
            app.store, case_id, Resolution.PROMISE, obj.now, who, until=until, note=note
        )
        console.print(
            f"case {case_id}: paused until {until.isoformat()}; {closed} review item(s) closed"
        )
        return
    assert how is not None
    closed = resolve(app.store, case_id, Resolution(how), obj.now, who, note=note)
    console.print(f"case {case_id}: {how}; {closed} review item(s) closed")


COMMANDS = (review, case_cmd, resolve_cmd)
