"""Crash safety: `mailer run` SIGKILLed at random moments loses nothing and sends nothing twice."""

from __future__ import annotations

import email
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import demo_users, write_config
from mailer.flows.outbound import Outbound, TickReport
from mailer.ledger import parse_invoices
from mailer.localservers import running_local_servers
from mailer.store import outbox
from mailer.store.ledger import import_invoices

CASES = 600
NOW = "2026-01-07T09:30:00+00:00"  # a Wednesday, 10:30 in Madrid: inside the sending window
PASSWORD = "crash-test-secret"
MAILER = [sys.executable, "-m", "mailer.cli"]


def _ledger(path: Path) -> None:
    lines = [
        "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,"
        "region,currency,amount,issue_date,due_date"
    ]
    for n in range(CASES):
        lang = "es" if n % 3 else "en"
        lines.append(
            f"F-{n},D{n},Cliente {n} S.L.,d{n}@debtor.example,{lang},business,ES,MD,EUR,{100 + n}.00,2025-11-01,2025-12-01"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _run_once(
    config: Path, log: Path, kill_after: float | None, kill_when: Callable[[], bool] = lambda: False
) -> bool:
    """One `mailer run --once`; SIGKILLed after ``kill_after`` seconds, or as soon as
    ``kill_when()`` holds, if still running. True when it ran to its end."""
    env = {**os.environ, "MAILER_DEMO_PASSWORD": PASSWORD}
    with log.open("ab") as out:
        child = subprocess.Popen(
            [
                *MAILER,
                "--config",
                str(config),
                "--now",
                NOW,
                "run",
                "--once",
                "--log-format",
                "json",
            ],
            stdout=out,
            stderr=out,
            env=env,
        )
        deadline = None if kill_after is None else time.monotonic() + kill_after
        while child.poll() is None:
            if kill_when() or (deadline is not None and time.monotonic() >= deadline):
                child.send_signal(signal.SIGKILL)
                child.wait()
                return False
            time.sleep(0.002)
    assert child.returncode == 0, log.read_text()[-3000:]
    return True


def test_sigkill_at_random_moments_neither_loses_nor_duplicates(tmp_path: Path) -> None:
    users = demo_users(PASSWORD)
    with running_local_servers(tmp_path / "servers", users) as servers:
        config = write_config(tmp_path, servers, grace_seconds=0)
        settings = load_settings(config)
        app = App.open(settings)
        ledger = tmp_path / "invoices.csv"
        _ledger(ledger)
        start = datetime(2026, 1, 5, 6, tzinfo=UTC)
        import_invoices(app.store, parse_invoices(ledger), start, "invoices.csv", settings.profiles)
        app.store.close()

        rng = random.Random(20261122)
        log = tmp_path / "runs.log"
        kills = 0

        def server_took(count: int) -> Callable[[], bool]:
            return lambda: len(servers.sink_messages()) >= count

        # First kills land in start-up and planning (a chunk of cases per transaction), at the
        # latest when the first message reaches the server.
        for _ in range(5):
            kills += not _run_once(
                config, log, kill_after=rng.uniform(1.5, 3.5), kill_when=server_took(1)
            )
        # Finish planning here, so that the next kills land in sending and filing copies.
        app = App.open(settings)
        Outbound(app, {}, None).plan_due(datetime.fromisoformat(NOW), TickReport())
        app.store.close()
        # A run sends 600 messages in a second or two: besides a random moment, each run is
        # also killed right after the server has taken a random few more messages, so kills
        # land mid-send (others in flight, replies not yet recorded) however fast the machine.
        for _ in range(20):
            took = server_took(len(servers.sink_messages()) + rng.randint(1, 60))
            if _run_once(config, log, kill_after=rng.uniform(1.2, 4.5), kill_when=took):
                break
            kills += 1
        # Then let it finish (twice: the second run must find nothing left to do).
        assert _run_once(config, log, kill_after=None)
        assert _run_once(config, log, kill_after=None)

        app = App.open(load_settings(config))
        messages = outbox.select(app.store, "1", limit=10 * CASES)
        assert len(messages) == CASES, "each case planned exactly once"
        assert Counter(m.state.value for m in messages) == {"sent": CASES}
        assert all(m.copied_at is not None for m in messages)

        delivered: Counter[str] = Counter()
        for item in servers.sink_messages():
            parsed = email.message_from_bytes(item.data)
            if any(r.endswith("@debtor.example") for r in item.rcpt_tos):
                delivered[parsed["Message-ID"]] += 1
        assert set(delivered) == {m.message_id for m in messages}
        assert max(delivered.values()) == 1, "a message reached a debtor twice"

        in_sent: Counter[str] = Counter()
        for address in users:
            folder = servers.mailbox_path(address) / ".Sent"
            for sub in ("new", "cur"):
                for path in (folder / sub).glob("*") if (folder / sub).is_dir() else []:
                    in_sent[email.message_from_bytes(path.read_bytes())["Message-ID"]] += 1
        assert set(in_sent) == {m.message_id for m in messages}
        assert max(in_sent.values()) == 1, "a Sent copy was filed twice"
        assert app.store.verify_chain() is None
        # The kills really happened mid-work, not only before or after it.
        kinds = Counter(e["kind"] for e in app.store.events())
        assert kills >= 10, f"only {kills} kills"
        assert (
            kinds["send_attempt"] > CASES
            or kinds["send_retry_after_reconcile"]
            or any(
                e["data"].get("reconciled")
                for e in app.store.events()
                if e["kind"] == "message_sent"
            )
        ), "no kill landed while sending"
        print(f"\n{kills} kills; events: {dict(kinds)}")
        app.store.close()
    shutil.rmtree(tmp_path / "servers", ignore_errors=True)
