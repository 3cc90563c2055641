"""`mailer run` as a child process, watched the way systemd watches it: a real NOTIFY_SOCKET."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from mailer.config import load_settings
from mailer.ledger import parse_invoices
from mailer.store.db import Store
from mailer.store.ledger import import_invoices

MAILER = [sys.executable, "-m", "mailer.cli"]
NOW = "2026-01-07T09:30:00+00:00"  # a Wednesday, 10:30 in Madrid: inside the sending window
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
WAIT = 120.0  # generous: a loaded machine is slow, a broken daemon never answers at all


def ledger(*debtors: str) -> str:
    """One overdue invoice per debtor id, each with its own address ``<id>@debtor.example``."""
    return "".join(
        f"F-{d},{d},Cliente {d} S.L.,{d.lower()}@debtor.example,es,business,ES,MD,EUR,"
        f"{100 + n}.00,2025-11-01,2025-12-01\n"
        for n, d in enumerate(debtors)
    )


def import_ledger(config: Path, rows: str, name: str = "invoices.csv") -> None:
    """Import through a connection of our own, as `mailer import` would beside the daemon."""
    settings = load_settings(config)
    path = config.parent / name
    path.write_text(HEADER + rows, encoding="utf-8")
    store = Store.open(settings.database)
    try:
        now = datetime(2026, 1, 5, 6, tzinfo=UTC)
        import_invoices(store, parse_invoices(path), now, name, settings.profiles)
    finally:
        store.close()


def set_daemon(config: Path, **values: float | str) -> None:
    """Replace the [daemon] table written by ``write_config`` (and add other tables after it)."""
    text = config.read_text(encoding="utf-8")
    table = "".join(f"{k} = {v}\n" for k, v in values.items())
    text = re.sub(r"\[daemon\]\n(?:[a-z_]+ = .*\n)*", f"[daemon]\n{table}", text)
    config.write_text(text, encoding="utf-8")


def parse(datagram: bytes) -> dict[str, str]:
    """One sd_notify datagram: ``KEY=value`` lines."""
    fields = {}
    for line in datagram.decode("utf-8").split("\n"):
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


class NotifySocket:
    """Stands in for systemd's notification socket: a unix datagram socket bound by the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, seconds: float) -> list[dict[str, str]]:
        """Everything that arrives within ``seconds``."""
        got = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            got.append(parse(data))
        self.received.extend(got)
        return got

    def until(
        self, wanted: Callable[[dict[str, str]], bool], child: subprocess.Popen[bytes] | None = None
    ) -> list[dict[str, str]]:
        """Messages up to and including the first that ``wanted`` accepts."""
        got = []
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            if child is not None and child.poll() is not None:
                raise AssertionError(f"mailer run exited with {child.returncode}")
            self.sock.settimeout(1.0)
            try:
                message = parse(self.sock.recv(4096))
            except TimeoutError:
                continue
            got.append(message)
            self.received.append(message)
            if wanted(message):
                return got
        raise AssertionError(f"no such notification within {WAIT} s; got {got[-10:]}")


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def mailer_run(
    config: Path,
    log: Path,
    *,
    notify: Path | None = None,
    args: tuple[str, ...] = (),
    watchdog_usec: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`mailer run` until the block ends; then SIGTERM, and the exit code must be 0."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    environ.update(env or {})
    if notify is not None:
        environ["NOTIFY_SOCKET"] = str(notify)
    if watchdog_usec is not None:
        environ["WATCHDOG_USEC"] = str(watchdog_usec)
    with log.open("ab") as out:
        child = subprocess.Popen(
            [*MAILER, "--config", str(config), "--now", NOW, "run", *args],
            stdout=out,
            stderr=out,
            env=environ,
        )
        try:
            yield child
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(WAIT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    assert child.returncode == 0, log.read_text(encoding="utf-8")[-3000:]
