"""Outbound throughput: plan → render → store → send, against raw aiosmtplib on the same sink."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiosmtplib
from procstat import cpu_seconds  # bench/, this script's directory

from mailer.app import App
from mailer.config import load_settings
from mailer.daemon import build_transports
from mailer.demo import IDENTITIES, write_config
from mailer.flows.outbound import Outbound, TickReport
from mailer.ledger import parse_invoices
from mailer.localservers import running_local_servers
from mailer.service import load_rules
from mailer.store import outbox
from mailer.store.db import Store
from mailer.store.ledger import import_invoices

NOW = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)  # a Wednesday inside the sending window
PASSWORD = "bench-secret"
USERS = {address: PASSWORD for address, _ in IDENTITIES.values()}


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


def serve(root: Path, delay: float) -> None:
    """``--serve``: the sink (aiosmtpd, and pymap for the config) until stdin closes."""
    with running_local_servers(root, USERS) as servers:
        servers.data_delay = delay
        where = {
            "smtp_host": servers.smtp_host,
            "smtp_port": servers.smtp_port,
            "imap_host": servers.imap_host,
            "imap_port": servers.imap_port,
        }
        print(json.dumps(where), flush=True)
        sys.stdin.read()


@contextmanager
def sink(root: Path, in_process: bool, delay: float = 0.0) -> Iterator[Any]:
    """The servers, by default in a process of their own, as a real server would be.

    In this process they would share the GIL with the client: every call that releases it
    (each SQLite statement, each socket write) may then wait for the server thread, a cost no
    deployment has, and one that grows with the number of such calls rather than their work.
    """
    if in_process:
        with running_local_servers(root, USERS) as servers:
            servers.pid = None
            servers.data_delay = delay
            yield servers
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(root), "--server-delay", str(delay * 1000)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield SimpleNamespace(**json.loads(child.stdout.readline()), pid=child.pid)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


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


def counted(
    connect: Callable[[], Awaitable[Any]], tally: list[int]
) -> Callable[[], Awaitable[Any]]:
    """Count the SMTP connections mailer opens: the comparison is fair only if they match."""

    async def wrapper() -> Any:
        tally.append(1)
        return await connect()

    return wrapper


def sink_cpu(pid: int | None) -> float:
    """CPU seconds the sink has used so far; 0 when it runs in this process."""
    return 0.0 if pid is None else cpu_seconds(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    parser.add_argument(
        "--sink-in-process",
        action="store_true",
        help="run the sink in a thread of this process (how the first figures were taken)",
    )
    parser.add_argument(
        "--server-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="the sink waits this long before answering the end of DATA, as a real server"
        " does while it queues and checks a message (loopback has no such wait: the default 0"
        " makes the comparison one of CPU time)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.server_delay / 1000)
        return
    os.environ["MAILER_DEMO_PASSWORD"] = PASSWORD
    n = args.messages
    with (
        tempfile.TemporaryDirectory() as tmp,
        sink(Path(tmp) / "srv", args.sink_in_process, args.server_delay / 1000) as srv,
    ):
        settings = load_settings(write_config(Path(tmp), srv, grace_seconds=0))
        # As the daemon opens it (mailer.daemon.make_daemon): templates compiled and pinned.
        app = App(settings, Store.open(settings.database), load_rules(settings))
        ledger(Path(tmp) / "i.csv", n)
        import_invoices(
            app.store, parse_invoices(Path(tmp) / "i.csv"), NOW, "bench", settings.profiles
        )
        transports = build_transports(settings)
        opened: list[int] = []
        for transport in transports.values():
            transport._connect = counted(transport._connect, opened)  # type: ignore[method-assign]
        conns = settings.identity("cobros").concurrency
        flow = Outbound(app, transports, open_mailbox=None, batch=n)
        report = TickReport()

        async def whole_path() -> None:
            # The daemon's tick: planning and sending at once (Outbound.plan_and_send).
            await flow.plan_and_send(NOW, report, lambda: False)
            for transport in transports.values():
                await transport.close()

        sink_start = sink_cpu(srv.pid)
        start, cpu_start = time.perf_counter(), time.process_time()
        asyncio.run(whole_path())
        done, cpu = time.perf_counter(), time.process_time() - cpu_start
        sink_ours = sink_cpu(srv.pid) - sink_start
        assert report.sent == n and not report.errors, report
        copy = IDENTITIES["cobros"][0]
        jobs = [
            (m.message_id, [*m.recipients, copy], outbox.raw(app.store, m))
            for m in outbox.select(app.store, "state = 'sent'", limit=n)
        ]
        raw_start, raw_cpu_start = time.perf_counter(), time.process_time()
        asyncio.run(raw_send(srv.smtp_host, srv.smtp_port, jobs, conns))
        floor, raw_cpu = time.perf_counter() - raw_start, time.process_time() - raw_cpu_start
        sink_raw = sink_cpu(srv.pid) - sink_start - sink_ours
        app.store.close()
    ours = done - start
    where = "in this process" if args.sink_in_process else "in its own process"
    print(
        f"messages: {n}; SMTP connections: mailer {len(opened)}, raw {conns}; sink {where},"
        f" answering DATA after {args.server_delay:g} ms"
    )
    print(f"mailer whole path (plan+render+store+send): {ours:7.2f} s  {n / ours:8.1f} msg/s")
    print(f"raw aiosmtplib, same bytes, sink, conns:    {floor:7.2f} s  {n / floor:8.1f} msg/s")
    print(f"ratio (mailer / raw), whole path: {floor / ours:.2f}   target >= 0.8")
    # CPU time of this process (the sink's not included unless it runs in this process): a
    # busy machine stretches wall times, this much less.
    print(f"CPU per message: mailer {cpu / n * 1000:.2f} ms, raw {raw_cpu / n * 1000:.2f} ms")
    if srv.pid is not None:
        print(
            f"sink CPU per message: during mailer {sink_ours / n * 1000:.2f} ms,"
            f" during raw {sink_raw / n * 1000:.2f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
