"""`mailer demo`: real local servers, the sample ledger, 60 days of escalation in simulated time."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mailer.app import App
from mailer.config import Settings, load_settings
from mailer.daemon import Daemon, build_transports, build_watchers, make_box, open_mailbox
from mailer.demo_debtors import DemoDebtors
from mailer.domain.calendar import zone
from mailer.flows.outbound import Outbound
from mailer.flows.staff import approve
from mailer.ledger import PaymentRow, parse_invoices, parse_payments
from mailer.localservers import LocalMailServers, running_local_servers
from mailer.mailbox.imap import ImapMailbox
from mailer.sample import SAMPLE_DIR
from mailer.store import outbox
from mailer.store.ledger import import_invoices, import_payments

REPO = Path(__file__).resolve().parent.parent
START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # a Monday, before office hours in Madrid
IDENTITIES = {
    "cobros": ("cobros@taller-demo.example", "Departamento de cobros"),
    "administracion": ("administracion@taller-demo.example", "Administración"),
}
APPROVAL_DELAY = timedelta(hours=20)  # the simulated staff member approves held steps next day


@dataclass
class DemoResult:
    workdir: Path
    database: Path
    sent: int
    accepted_by_server: int
    sent_copies: int
    chain_ok: bool


def demo_users(password: str) -> dict[str, str]:
    """Every demo identity's mailbox with ``password``, which is also put where the config
    written by ``write_config`` reads it ($MAILER_DEMO_PASSWORD), as a real deployment would."""
    os.environ["MAILER_DEMO_PASSWORD"] = password
    return {address: password for address, _ in IDENTITIES.values()}


def write_config(
    workdir: Path,
    servers: LocalMailServers,
    *,
    grace_seconds: int = 60,
    ca_file: Path | None = None,
) -> Path:
    """A mailer.toml for the embedded servers (also used by the tests); with ``ca_file``,
    submission over STARTTLS verified against that CA (`mailer demo --real-servers`)."""
    security = (
        f'smtp_security = "starttls"\nca_file = "{ca_file}"'
        if ca_file is not None
        else 'smtp_security = "plain"        # loopback demo servers only; real mailboxes use tls/starttls'
    )
    identities = "".join(
        f"""
[identities.{name}]
address = "{address}"
display_name = "{display}"
smtp_host = "{servers.smtp_host}"
smtp_port = {servers.smtp_port}
{security}
smtp_user = "{address}"
password_env = "MAILER_DEMO_PASSWORD"
imap_host = "{servers.imap_host}"
imap_port = {servers.imap_port}
imap_security = "plain"
rate_per_minute = 60000
concurrency = 4
"""
        for name, (address, display) in IDENTITIES.items()
    )
    text = f"""# Written by `mailer demo`: local servers on loopback, nothing leaves this machine.
[creditor]
legal_name = "Taller Demo S.L."
tax_id = "B00000000"
address = "Calle Mayor 1, 28013 Madrid, España"
country = "ES"
timezone = "Europe/Madrid"
iban = "ES91 2100 0418 4502 0005 1332"
payment_link_template = "https://pagos.taller-demo.example/factura/{{invoice}}"

[storage]
database = "mailer.db"
evidence_dir = "evidence"

[paths]
campaigns = "{REPO / "campaigns"}"
templates = "{REPO / "templates"}"

[daemon]
interval_seconds = 1
reconcile_grace_seconds = {grace_seconds}
{identities}"""
    path = workdir / "mailer.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def _simulate(
    app: App,
    daemon: Daemon,
    payments: list[PaymentRow],
    days: int,
    step: timedelta,
    debtors: DemoDebtors,
    boxes: dict[str, ImapMailbox],
) -> int:
    """Advance the clock tick by tick: payments arrive on their dates, staff approve held steps,
    scripted debtors answer, and the watchers read each mailbox after every tick."""
    end = START + timedelta(days=days)
    pending = sorted(payments, key=lambda p: p.payment.paid_on)
    clock = START
    daemon.clock = lambda: clock
    watchers = build_watchers(app, lambda: clock)
    sent = 0
    while clock < end:
        clock += step
        debtors.react(clock)
        for watcher in watchers:
            await watcher.one_pass(boxes[watcher.identity.name], lambda: False)
        arrived = [p for p in pending if p.payment.paid_on <= clock.date()]
        if arrived:
            pending = pending[len(arrived) :]
            import_payments(
                app.store,
                arrived,
                clock,
                "sample payments (arriving on their dates)",
                app.settings.profiles,
            )
        for held in outbox.select(app.store, "state = 'awaiting_approval'"):
            if held.updated_at <= clock - APPROVAL_DELAY:
                approve(app.store, held.id, clock, "demo staff (simulated)")
        report = await daemon.tick()
        sent += report.sent
    return sent


def fresh_workdir(workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)


def run_demo(
    workdir: Path, days: int = 60, step_minutes: int = 60, console: Console | None = None
) -> DemoResult:
    console = console or Console()
    fresh_workdir(workdir)
    users = demo_users(secrets.token_urlsafe(12))
    with running_local_servers(workdir / "servers", users) as servers:
        console.print(
            f"[bold]mailer demo[/] — SMTP on {servers.smtp_host}:{servers.smtp_port}, "
            f"IMAP on {servers.imap_host}:{servers.imap_port} (loopback only)"
        )
        settings = load_settings(write_config(workdir, servers))
        sent, chain_ok = escalate(settings, DemoDebtors(servers), days, step_minutes, console)
        accepted = len(servers.sink_messages())
        copies = _count_sent_copies(servers)
    console.print(
        f"\n{sent} reminders sent; the SMTP server accepted {accepted} messages (each to the debtor "
        f"and, as a receipt, to our own mailbox); {copies} copies filed in the Sent folders over IMAP."
    )
    database = settings.database
    console.print(f"database: {database}\nevent chain: {'verified' if chain_ok else 'BROKEN'}")
    console.print(f"mail as the servers stored it: {workdir / 'servers' / 'maildir'}")
    return DemoResult(workdir, database, sent, accepted, copies, chain_ok)


def escalate(
    settings: Settings, debtors: DemoDebtors, days: int, step_minutes: int, console: Console
) -> tuple[int, bool]:
    """The sample ledger through the daemon in simulated time, then what happened: returns
    how many reminders were sent and whether the event chain verifies."""
    app = App.open(settings)
    try:
        rows = parse_invoices(SAMPLE_DIR / "invoices.csv")
        report = import_invoices(app.store, rows, START, "sample invoices.csv", settings.profiles)
        console.print(
            f"ledger: {report.added} invoices of {report.debtors_added} debtors, {report.cases_opened} cases"
        )
        payments = parse_payments(SAMPLE_DIR / "payments.csv")
        daemon = Daemon(app, Outbound(app, build_transports(settings), open_mailbox), interval=0)
        with console.status(f"simulating {days} days, one tick per {step_minutes} minutes…"):
            sent = asyncio.run(
                _run(app, daemon, payments, days, timedelta(minutes=step_minutes), debtors)
            )
        _timeline(app, console)
        _arrivals(app, console)
        return sent, app.store.verify_chain() is None
    finally:
        app.store.close()


async def _run(
    app: App,
    daemon: Daemon,
    payments: list[PaymentRow],
    days: int,
    step: timedelta,
    debtors: DemoDebtors,
) -> int:
    boxes = {i.name: make_box(i) for i in app.settings.identities}
    try:
        for box in boxes.values():
            await asyncio.to_thread(box.connect)
        return await _simulate(app, daemon, payments, days, step, debtors, boxes)
    finally:
        for box in boxes.values():
            await asyncio.to_thread(box.close)
        for transport in daemon.outbound.transports.values():
            await transport.close()


def _count_sent_copies(servers: LocalMailServers) -> int:
    total = 0
    for address in servers.users:
        sent = servers.mailbox_path(address) / ".Sent"
        for sub in ("cur", "new"):
            if (sent / sub).is_dir():
                total += sum(1 for _ in (sent / sub).iterdir())
    return total


def _timeline(app: App, console: Console) -> None:
    rows = app.store.conn.execute(
        "SELECT c.id, d.name, d.lang, d.kind, d.timezone, c.status, c.status_reason, m.step_name,"
        " m.state, m.sent_at FROM cases c JOIN debtors d ON d.id = c.debtor_id"
        " LEFT JOIN messages m ON m.case_id = c.id ORDER BY c.id, m.step"
    ).fetchall()
    per_case: dict[int, list[str]] = defaultdict(list)
    info: dict[int, tuple[str, str, str, str, str | None, str]] = {}
    for case_id, name, lang, kind, tz, status, reason, step, state, sent_at in rows:
        info[case_id] = (name, lang, kind, status, reason, tz)
        if step is None:
            continue
        if state == "sent" and sent_at:
            local = datetime.fromisoformat(sent_at).astimezone(zone(tz))
            per_case[case_id].append(f"{step} {local:%d/%m %H:%M}")
        else:
            per_case[case_id].append(f"{step} ({state})")
    table = Table(title="What went out, to whom and when (debtor-local time)", show_lines=False)
    for column in ("case", "debtor", "lang/kind", "messages", "outcome"):
        table.add_column(column, overflow="fold")
    for case_id, (name, lang, kind, status, reason, _tz) in info.items():
        outcome = status if not reason else f"{status}: {reason}"
        table.add_row(
            str(case_id), name, f"{lang}/{kind}", " → ".join(per_case[case_id]) or "—", outcome
        )
    console.print(table)
    for case_id, at, body in app.store.conn.execute(
        "SELECT case_id, at, body FROM events WHERE kind = 'identity_switched' ORDER BY id"
    ):
        data = json.loads(body)["data"]
        console.print(
            f"case {case_id}: from {at[:10]} written from [bold]{data['to']}[/] instead of"
            f" {data['from']}: {data['why']}"
        )


def _arrivals(app: App, console: Console) -> None:
    rows = app.store.conn.execute(
        "SELECT i.received_at, i.case_id, d.name, i.kind, i.classification, k.status,"
        " k.status_reason FROM inbound i LEFT JOIN cases k ON k.id = i.case_id"
        " LEFT JOIN debtors d ON d.id = k.debtor_id ORDER BY i.id"
    ).fetchall()
    if not rows:
        return
    tz = zone(app.settings.creditor.timezone)
    table = Table(title="What arrived in the mailbox and what mailer did (business time)")
    for column in ("when", "case", "debtor", "what", "case now"):
        table.add_column(column, overflow="fold")
    for at, case_id, name, kind, data, status, reason in rows:
        c = json.loads(data) if data else {}
        what = kind + (f" ({c['intent']})" if c.get("intent") else "")
        if c.get("return_date"):
            what += f", back {c['return_date']}"
        for r in c.get("recipients", []) if kind == "bounce" else []:
            what += f": {r['address']} {r['reason']}"
        local = datetime.fromisoformat(at).astimezone(tz)
        table.add_row(
            f"{local:%d/%m %H:%M}", str(case_id or "—"), name or "—", what,
            status if not reason else f"{status}: {reason}",
        )  # fmt: skip
    console.print(table)
    waiting = app.store.conn.execute(
        "SELECT count(*) FROM reviews WHERE resolved_at IS NULL"
    ).fetchone()[0]
    console.print(f"review queue: {waiting} item(s) for a person (`mailer review`)")
