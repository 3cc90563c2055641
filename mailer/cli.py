"""The `mailer` command: check, import, plan, preview, cases, classify, run and demo."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mailer.app import App, Rules, rate_warnings
from mailer.cli_cases import COMMANDS
from mailer.cli_evidence import evidence
from mailer.cli_identities import identities
from mailer.cli_status import status
from mailer.config import Settings, find_config, load_settings
from mailer.domain.calendar import zone
from mailer.domain.models import Case, SendStep
from mailer.domain.money import late_interest
from mailer.domain.planner import simulate
from mailer.errors import ConfigError, MailerError
from mailer.ledger import parse_payments, read_invoices
from mailer.store.ledger import import_invoices, import_payments, load_cases, load_history

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@dataclass
class Ctx:
    config: str | None
    now: datetime
    pinned: bool = False  # --now was given

    def settings(self) -> Settings:
        return load_settings(find_config(self.config))

    def app(self) -> App:
        return App.open(self.settings())


def _now(value: str | None) -> datetime:
    # The only place a command reads the clock; --now makes any command reproducible.
    if value is None:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class MailerGroup(click.Group):
    """Turns mailer's own errors into a clear message and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(problem, err=True)
            err.print(f"[red]refused:[/] {len(exc.problems)} problem(s), nothing was changed")
            sys.exit(1)
        except MailerError as exc:
            err.print(f"[red]error:[/] {exc}", markup=True)
            sys.exit(1)


@click.group(cls=MailerGroup)
@click.option(
    "--config", "config", envvar="MAILER_CONFIG", help="mailer.toml to use (default ./mailer.toml)."
)
@click.option("--now", "now", help="Pretend it is this moment (ISO 8601, UTC if no offset).")
@click.version_option(package_name="mailer")
@click.pass_context
def main(ctx: click.Context, config: str | None, now: str | None) -> None:
    """mailer: chases unpaid invoices politely, from your own mailboxes."""
    ctx.obj = Ctx(config=config, now=_now(now), pinned=now is not None)


@main.command()
@click.pass_obj
def check(obj: Ctx) -> None:
    """Validate config, campaigns and templates; every problem as file:line: message."""
    settings = obj.settings()
    rules = Rules.load(settings)
    for warning in rate_warnings(obj.now.date()):
        click.echo(warning, err=True)
    steps = sum(len(c.steps) for c in rules.campaigns.values())
    console.print(
        f"ok: {settings.source} — {len(settings.identities)} identities, "
        f"{len(rules.campaigns)} campaigns ({steps} steps), templates in {settings.templates_dir}"
    )


@main.group(name="import")
def import_() -> None:
    """Import the ledger: invoices, then payments (CSV, UTF-8, header row)."""


@import_.command("invoices")
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_obj
def import_invoices_cmd(obj: Ctx, path: Path) -> None:
    """Upsert invoices and debtors from PATH (see README for the columns)."""
    settings = obj.settings()
    app = App.open(settings)
    # Streamed: checked and stored in one transaction, so a refused file imports nothing.
    report = import_invoices(app.store, read_invoices(path), obj.now, str(path), settings.profiles)
    console.print(
        f"{path}: {report.rows} rows — {report.added} new, {report.changed} changed, "
        f"{report.unchanged} unchanged invoices; {report.debtors_added} new debtors; "
        f"{report.cases_opened} cases opened, {report.cases_resolved} resolved"
    )


@import_.command("payments")
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_obj
def import_payments_cmd(obj: Ctx, path: Path) -> None:
    """Record payments from PATH (invoice_number, date, amount[, reference])."""
    settings = obj.settings()
    rows = parse_payments(path)
    app = App.open(settings)
    report = import_payments(app.store, rows, obj.now, str(path), settings.profiles)
    console.print(
        f"{path}: {report.rows} rows — {report.added} new payments, "
        f"{report.unchanged} already known; {report.cases_resolved} cases fully paid"
    )


def _money(amount: Decimal, currency: str = "EUR") -> str:
    return f"{amount:,.2f} {currency}"


def _due_with_interest(case: Case, when: datetime) -> Decimal:
    today = when.date()
    total = Decimal("0.00")
    for invoice in case.open_invoices:
        computed = late_interest(invoice, case.debtor.kind, today)
        total += invoice.balance + computed.total
    return total


@main.command()
@click.option("--days", default=60, show_default=True, help="How far ahead to look.")
@click.option("--case", "case_id", type=int, help="Only this case.")
@click.pass_obj
def plan(obj: Ctx, days: int, case_id: int | None) -> None:
    """Dry run: the calendar of what would be sent, assuming nobody pays or replies."""
    app = obj.app()
    end = obj.now + timedelta(days=days)
    cases = list(load_cases(app.store, None if case_id is None else [case_id]))
    history = load_history(app.store, [c.id for c in cases])
    rows: list[tuple[datetime, Case, str, str]] = []
    for case in cases:
        calendar = app.calendar(case.debtor.country, case.debtor.region)
        for at, step in simulate(
            case, app.campaign_for(case), history.get(case.id, []), calendar, obj.now, end
        ):
            rows.append((at, case, step.name, step.template))
    rows.sort(key=lambda r: (r[0], r[1].id))
    table = Table(title=f"Planned sends {obj.now:%Y-%m-%d} → {end:%Y-%m-%d} ({len(rows)})")
    for column in (
        "when (debtor local)",
        "case",
        "debtor",
        "step",
        "template",
        "due incl. interest",
    ):
        table.add_column(column, justify="right" if column.startswith("due") else "left")
    for at, case, step_name, template in rows:
        local = at.astimezone(zone(case.debtor.timezone))
        table.add_row(
            f"{local:%Y-%m-%d %H:%M %Z}",
            str(case.id),
            case.debtor.name,
            step_name,
            f"{case.debtor.lang}/{template}",
            _money(_due_with_interest(case, at)),
        )
    console.print(table)


@main.command()
@click.argument("case_id", type=int)
@click.option(
    "--step", "step_number", type=int, help="Step number (1-based); default: the next one."
)
@click.pass_obj
def preview(obj: Ctx, case_id: int, step_number: int | None) -> None:
    """Show the email for CASE exactly as the debtor would get it (headers and text)."""
    from mailer.compose import compose_preview

    app = obj.app()
    cases = list(load_cases(app.store, [case_id], include_closed=True))
    if not cases:
        raise MailerError(f"no case {case_id}")
    case = cases[0]
    campaign = app.campaign_for(case)
    if step_number is None:
        action = app.plan(case, load_history(app.store, [case_id]).get(case_id, []), obj.now)
        if not isinstance(action, SendStep):
            raise MailerError(f"case {case_id} has nothing to send next ({action}); give --step N")
        step = action.step
    else:
        if not 1 <= step_number <= len(campaign.steps):
            raise MailerError(f"step must be 1..{len(campaign.steps)}")
        step = campaign.steps[step_number - 1]
    identity = app.settings.identities[0]
    rendered = app.render(case, step, identity, obj.now)
    sys.stdout.write(compose_preview(app.settings.creditor, identity, case, rendered, obj.now))


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Include closed cases.")
@click.pass_obj
def cases(obj: Ctx, show_all: bool) -> None:
    """List cases: debtor, status, balance and what happens next."""
    app = obj.app()
    table = Table(title="Cases")
    for column in ("case", "debtor", "kind", "lang", "status", "invoices", "balance", "next"):
        table.add_column(column)
    all_cases = list(load_cases(app.store, include_closed=show_all))
    history = load_history(app.store)
    for case in all_cases:
        action = app.plan(case, history.get(case.id, []), obj.now)
        table.add_row(
            str(case.id),
            case.debtor.name,
            case.debtor.kind.value,
            case.debtor.lang,
            case.status.value,
            str(len(case.open_invoices)),
            _money(case.balance),
            _describe(action, case),
        )
    console.print(table)


def _describe(action: object, case: Case) -> str:
    if isinstance(action, SendStep):
        local = action.at.astimezone(zone(case.debtor.timezone))
        return f"{action.step.name} at {local:%Y-%m-%d %H:%M}"
    return str(getattr(action, "reason", action))


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def classify(path: Path, as_json: bool) -> None:
    """Classify one email file: bounce, auto-reply, reply intent…"""
    from mailer.domain.classify import classify as run_classifier

    result = run_classifier(path.read_bytes()).to_json()
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        return
    for key, value in result.items():
        if value not in (None, [], ""):
            console.print(f"[bold]{key}[/]: {value}")


@main.command()
@click.option(
    "--dir",
    "workdir",
    default="demo-output",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where the demo keeps its database and mail (emptied first).",
)
@click.option("--days", default=60, show_default=True, help="Simulated days.")
@click.option("--step-minutes", default=60, show_default=True, help="Simulated time per tick.")
@click.option(
    "--real-servers",
    is_flag=True,
    help="Through Postfix and Dovecot instead (the end-to-end test environment, tests/mailenv:"
    " a source checkout, root, and scripts/install-mailservers.sh).",
)
def demo(workdir: Path, days: int, step_minutes: int, real_servers: bool) -> None:
    """Run a whole escalation on local servers in simulated time: no setup, no network."""
    if real_servers:
        from mailer.demo_real import run_demo_real

        result = run_demo_real(workdir, days=days, step_minutes=step_minutes, console=console)
    else:
        from mailer.demo import run_demo

        result = run_demo(workdir, days=days, step_minutes=step_minutes, console=console)
    if not result.chain_ok or result.sent == 0:
        raise MailerError("the demo did not complete as expected")


@main.command()
@click.option(
    "--log-format", type=click.Choice(["human", "json"]), default="human", show_default=True
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
    help="debug also shows the libraries' chatter (the IMAP conversation, logins redacted).",
)
@click.option("--once", is_flag=True, help="Run one tick and exit (for cron or a test).")
@click.pass_obj
def run(obj: Ctx, log_format: str, log_level: str, once: bool) -> None:
    """The daemon: plan and send due reminders, tick after tick, until SIGTERM (SIGHUP: reload
    campaigns and templates)."""
    import asyncio
    import logging

    from mailer.daemon import make_daemon, system_clock
    from mailer.logs import setup_logging

    setup_logging(log_format, getattr(logging, log_level.upper()))
    # --now pins the clock (tests, replays); otherwise the daemon reads the system clock.
    daemon = make_daemon(obj.settings(), clock=(lambda: obj.now) if obj.pinned else system_clock)

    async def main_loop() -> None:
        daemon.install_signals()
        if once:
            await daemon.tick()
            await daemon.close()
        else:
            await daemon.run()

    asyncio.run(main_loop())


@main.command()
@click.argument("message_ids", nargs=-1, type=int, required=True)
@click.option(
    "--by", "who", default=lambda: os.environ.get("USER", "staff"), help="Who approves (recorded)."
)
@click.pass_obj
def approve(obj: Ctx, message_ids: tuple[int, ...], who: str) -> None:
    """Approve messages held for a person's approval (final notice, hand-over)."""
    from mailer.flows.staff import approve as approve_message

    app = obj.app()
    for message_id in message_ids:
        approve_message(app.store, message_id, obj.now, who)
        console.print(f"message {message_id} approved: it goes out at the next tick")


@main.command()
@click.pass_obj
def web(obj: Ctx) -> None:
    """The review page alone ([web] in mailer.toml; `mailer run` serves it too), until Ctrl-C."""
    from mailer.daemon import system_clock
    from mailer.logs import setup_logging
    from mailer.web import serve

    setup_logging()
    serve(
        obj.settings(),
        (lambda: obj.now) if obj.pinned else system_clock,
        lambda url: console.print(f"review page on {url} (Ctrl-C stops it)"),
    )


main.add_command(evidence)
main.add_command(status)
main.add_command(identities)
for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
