"""A mailer configured with the Mailchimp channel, against the local stand-in of Mailchimp's API."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakemailchimp import FakeMailchimp

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import REPO, write_config
from mailer.flows.mailchimp_readback import MailchimpFlow, build_channels
from mailer.flows.outbound import Outbound, TickReport
from mailer.ledger import parse_invoices
from mailer.store import outbox
from mailer.store.ledger import import_invoices
from mailer.transports.base import Transport

KEY = "5f0e3c2a9b8d7e6f5a4b3c2d1e0f9a8b-us21"
KEY_ENV = "MAILER_TEST_MAILCHIMP_KEY"
LIST = "a1b2c3d4e5"
NOW = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)  # a Wednesday, 10:30 in Madrid: inside the window
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
ROW = (
    "F-{n},D{n},Cliente {n} S.L.,d{n}@debtor.example;otra{n}@debtor.example,es,business,ES,MD,"
    "EUR,1210.00,2025-11-01,2025-12-01\n"
)


class Clock:
    """The tests' simulated time, shared by mailer and the stand-in."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMailchimp]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeMailchimp(KEY, LIST, clock).running() as running:
        yield running


def write_campaigns(directory: Path, *, fallback: bool) -> Path:
    """The shipped campaigns with every step on the Mailchimp channel."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = 'channel = "mailchimp"\n' + ("fallback_smtp = true\n" if fallback else "")
    for name in ("business", "consumer"):
        text = (REPO / "campaigns" / f"{name}.toml").read_text(encoding="utf-8")
        text = re.sub(r"(?m)^(offset_days = .*\n)", lambda m: m.group(1) + extra, text)
        (directory / f"{name}.toml").write_text(text, encoding="utf-8")
    return directory


def make_app(
    tmp_path: Path,
    fake: FakeMailchimp,
    *,
    cases: int = 1,
    fallback: bool = False,
    servers: Any = None,
    mailchimp: str = "",
) -> App:
    servers = servers or SimpleNamespace(
        smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1", imap_port=9
    )
    path = write_config(tmp_path, servers, grace_seconds=0)
    campaigns = write_campaigns(tmp_path / "campaigns", fallback=fallback)
    text = re.sub(r'(?m)^campaigns = ".*"$', f'campaigns = "{campaigns}"', path.read_text())
    text += f"""
[mailchimp]
api_key_env = "{KEY_ENV}"
audience_id = "{LIST}"
base_url = "{fake.base_url}"
poll_minutes = 30
{mailchimp}"""
    path.write_text(text, encoding="utf-8")
    app = App.open(load_settings(path))
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(HEADER + "".join(ROW.format(n=n) for n in range(1, cases + 1)))
    import_invoices(app.store, parse_invoices(ledger), NOW, "invoices.csv", app.settings.profiles)
    return app


def add_case(app: App, n: int, tmp_path: Path) -> None:
    """Another debtor's invoice, imported now."""
    ledger = tmp_path / f"invoices-{n}.csv"
    ledger.write_text(HEADER + ROW.format(n=n))
    import_invoices(app.store, parse_invoices(ledger), NOW, ledger.name, app.settings.profiles)


class Office:
    """The outbound pass and the Mailchimp pass, as the daemon runs them, one tick at a time."""

    def __init__(
        self, app: App, clock: Clock, transports: dict[str, Transport] | None = None
    ) -> None:
        channels, flows = build_channels(app, clock)
        self.app = app
        self.clock = clock
        self.outbound = Outbound(app, transports or {}, None, channels=channels)
        self.flow: MailchimpFlow = flows[0]

    async def tick(self) -> TickReport:
        report = await self.outbound.tick(self.clock.now)
        await self.flow.tick(self.clock.now, report)
        return report

    def messages(self, where: str = "1 = 1") -> list[outbox.OutboxMessage]:
        return outbox.select(self.app.store, where)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.app.store.events() if e["kind"] == kind]

    def contact(self, address: str) -> str:
        row = self.app.store.conn.execute(
            "SELECT status FROM contacts WHERE address = ?", (address,)
        ).fetchone()
        return str(row[0])

    def case_status(self, case_id: int = 1) -> str:
        row = self.app.store.conn.execute("SELECT status FROM cases WHERE id = ?", (case_id,))
        return str(row.fetchone()[0])
