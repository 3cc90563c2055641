"""`mailer review`, `mailer case ID` and `mailer resolve ID`: what a person reads and decides."""

from __future__ import annotations

import json
import os
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from mailer.domain.calendar import local_wall_to_utc, zone
from mailer.errors import MailerError
from mailer.flows.staff import Resolution, agree_instalments, resolve
from mailer.store import inbound as store_inbound
from mailer.store.db import Store

if TYPE_CHECKING:
    from mailer.cli import Ctx


def _console() -> Console:
    # Made per command, so COLUMNS set for this run (a pager, a wide terminal, tests) applies.
    return Console(highlight=False)


def _short(text: str, width: int = 90) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _local(moment: str, tz: str) -> str:
    return f"{datetime.fromisoformat(moment).astimezone(zone(tz)):%Y-%m-%d %H:%M}"


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
            _local(item.created_at.isoformat(), tz),
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
    store = app.store
    head = store.conn.execute(
        "SELECT k.status, k.status_reason, k.paused_until, k.campaign, k.closed_at, d.id, d.name,"
        " d.kind, d.lang FROM cases k JOIN debtors d ON d.id = k.debtor_id WHERE k.id = ?",
        (case_id,),
    ).fetchone()
    if head is None:
        raise MailerError(f"no case {case_id}")
    status, reason, paused_until, campaign, closed_at, debtor_id, name, kind, lang = head
    tz = app.settings.creditor.timezone
    console.print(
        f"[bold]Case {case_id}[/] — {name} ({debtor_id}, {kind}, {lang}), campaign {campaign}"
    )
    line = f"status: {status}" + (f" — {reason}" if reason else "")
    if paused_until:
        line += f", until {_local(paused_until, tz)}"
    if closed_at:
        line += f", closed {_local(closed_at, tz)}"
    console.print(line)
    for address, c_status, c_reason in store.conn.execute(
        "SELECT address, status, status_reason FROM contacts WHERE debtor_id = ? ORDER BY position",
        (debtor_id,),
    ):
        console.print(f"  {address}: {c_status}" + (f" ({c_reason})" if c_reason else ""))
    for number, amount, due, paid in store.conn.execute(
        "SELECT i.number, i.amount, i.due_date, (SELECT coalesce(sum(CAST(p.amount AS REAL)), 0)"
        " FROM payments p WHERE p.invoice_number = i.number) FROM invoices i"
        " WHERE i.debtor_id = ? ORDER BY i.due_date",
        (debtor_id,),
    ):
        console.print(f"  invoice {number}: {amount}, due {due}, paid {paid:.2f}")
    table = Table(title="Timeline")
    for column in ("when", "what", "detail"):
        table.add_column(column)
    for event in store.events(case_id):
        table.add_row(_local(event["at"], tz), event["kind"], _detail(event["kind"], event["data"]))
    console.print(table)
    for item in store_inbound.open_reviews(store, case_id):
        console.print(f"[yellow]review #{item.id}:[/] {item.reason}: {_short(item.text, 200)}")


def _detail(kind: str, data: dict[str, Any]) -> str:
    """One readable line per event; the full record is in `mailer evidence export`."""
    if kind in ("message_queued", "message_awaiting_approval"):
        return f"{data.get('step_name')} to {', '.join(data.get('recipients', []))}: {data.get('subject')}"
    if kind == "message_sent":
        receipt = data.get("receipt") or {}
        return f"{data.get('message_id')} accepted: {receipt.get('code', '')} {receipt.get('text', '')}".strip()
    if kind == "mail_received":
        c = data.get("classification") or {}
        what = c.get("kind", "?") + (f" ({c['intent']})" if c.get("intent") else "")
        text = c.get("reply_text") or c.get("subject") or ""
        return _short(f"{what} from {c.get('from_address') or '?'}: {text}")
    if kind == "contact_status":
        return _short(f"{data.get('address')} → {data.get('status')}: {data.get('reason')}")
    for key in ("reason", "note", "error"):
        if data.get(key):
            return _short(str(data[key]))
    return _short(json.dumps(data, ensure_ascii=False, default=str))


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
        until = _promise_end(
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


def _promise_end(store: Store, case_id: int, day: date, grace_days: int) -> datetime:
    facts = store_inbound.case_facts(store, case_id)
    if facts is None:
        raise MailerError(f"no case {case_id}")
    return local_wall_to_utc(day + timedelta(days=grace_days), time(0, 0), zone(facts.timezone))


COMMANDS = (review, case_cmd, resolve_cmd)
