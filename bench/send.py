"""Outbound throughput: plan → render → store → send, against raw aiosmtplib on the same sink."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib

from mailer.app import App
from mailer.config import load_settings
from mailer.daemon import build_transports
from mailer.demo import IDENTITIES, write_config
from mailer.flows.outbound import Outbound, TickReport
from mailer.ledger import parse_invoices
from mailer.localservers import running_local_servers
from mailer.store import outbox
from mailer.store.ledger import import_invoices

NOW = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)  # a Wednesday inside the sending window
PASSWORD = "bench-secret"


def ledger(path: Path, count: int) -> None:
    rows = [
        "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,"
        "region,currency,amount,issue_date,due_date"
    ]
    rows += [
        f"F-{n},D{n},Cliente {n} S.L.,d{n}@debtor.example,{'es' if n % 3 else 'en'},business,ES,MD,"
        f"EUR,{100 + n % 900}.00,2025-11-01,2025-12-01"
        for n in range(count)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


async def raw_send(
    host: str, port: int, jobs: list[tuple[str, list[str], bytes]], conns: int
) -> None:
    """The floor: the same bytes and envelopes over ``conns`` reused aiosmtplib connections."""
    sender = IDENTITIES["cobros"][0]

    async def worker(part: list[tuple[str, list[str], bytes]]) -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False)
        await client.connect()
        await client.login(sender, PASSWORD)
        for _, rcpts, data in part:
            await client.sendmail(sender, rcpts, data)
        await client.quit()

    await asyncio.gather(*(worker(jobs[i::conns]) for i in range(conns)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["MAILER_DEMO_PASSWORD"] = PASSWORD
    users = {address: PASSWORD for address, _ in IDENTITIES.values()}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_local_servers(Path(tmp) / "srv", users) as servers,
    ):
        config = write_config(Path(tmp), servers, grace_seconds=0)
        settings = load_settings(config)
        app = App.open(settings)
        ledger(Path(tmp) / "i.csv", args.messages)
        import_invoices(
            app.store, parse_invoices(Path(tmp) / "i.csv"), NOW, "bench", settings.profiles
        )
        transports = build_transports(settings)
        conns = settings.identity("cobros").concurrency
        flow = Outbound(app, transports, open_mailbox=None, batch=args.messages)

        async def whole_path() -> TickReport:
            report = TickReport()
            flow.plan_due(NOW, report)
            await flow.send_due(NOW, report, lambda: False)
            for transport in transports.values():
                await transport.close()
            return report

        start = time.perf_counter()
        report = asyncio.run(whole_path())
        ours = time.perf_counter() - start
        assert report.sent == args.messages, report
        copy = IDENTITIES["cobros"][0]
        jobs = [
            (m.message_id, [*m.recipients, copy], outbox.raw(app.store, m))
            for m in outbox.select(app.store, "state = 'sent'", limit=args.messages)
        ]
        start = time.perf_counter()
        asyncio.run(raw_send(servers.smtp_host, servers.smtp_port, jobs, conns))
        floor = time.perf_counter() - start
        app.store.close()
    n = args.messages
    print(f"messages: {n}, connections: {conns}")
    print(f"mailer whole path (plan+render+store+send): {ours:7.2f} s  {n / ours:8.1f} msg/s")
    print(f"raw aiosmtplib, same bytes and sink:        {floor:7.2f} s  {n / floor:8.1f} msg/s")
    print(f"ratio (mailer / raw): {floor / ours:.2f}   target >= 0.8")


if __name__ == "__main__":
    sys.exit(main())
