"""sd_notify from the real daemon: READY, STATUS, WATCHDOG through long snoozes, STOPPING; and a
stuck tick that stops the keep-alives. systemd's socket is stood in for by one the test binds."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

from daemonproc import NotifySocket, import_ledger, ledger, mailer_run, set_daemon

from mailer.config import load_settings
from mailer.demo import REPO, write_config
from mailer.health import read_status, status_path
from mailer.localservers import LocalMailServers
from mailer.notify import Notifier, watchdog_interval

SUMMARY = re.compile(
    r"^(\d+) cases active, queue (\d+), mailboxes (\d)/2 connected, \d+ to review$"
)


def test_watchdog_interval_is_half_of_watchdog_usec_and_ours_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "120000000"}) == 60.0
    assert watchdog_interval({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "7"}, pid=7) == 60.0
    # Set for another process (a wrapper that exec'ed us is not us): not ours to feed.
    assert watchdog_interval({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_notifier_speaks_to_path_and_abstract_sockets(tmp_path: Path) -> None:
    path = NotifySocket(tmp_path / "notify")
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"mailer-test-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.settimeout(30)
    notifiers = [Notifier(str(path.path)), Notifier("@" + name), Notifier(str(tmp_path / "gone"))]
    try:
        assert notifiers[0].ready("3 cases\nactive")
        # A datagram to a Unix socket is queued by the time send returns: no need to wait long.
        assert path.read(0.5)[0] == {"READY": "1", "STATUS": "3 cases active"}  # one line
        assert notifiers[1].watchdog()
        assert abstract.recv(100) == b"WATCHDOG=1"
        # Outside systemd nothing is sent, and nothing fails; nor when systemd went away.
        assert not Notifier.from_env({}).ready("x")
        assert not notifiers[2].watchdog()
    finally:
        for notifier in notifiers:
            notifier.close()
        path.close()
        abstract.close()


def test_the_daemon_reports_to_systemd(tmp_path: Path, servers: LocalMailServers) -> None:
    config = write_config(tmp_path, servers, grace_seconds=0)
    # A long snooze between ticks: keep-alives must go on through it.
    set_daemon(config, interval_seconds=30, reconcile_grace_seconds=0)
    import_ledger(config, ledger("D1", "D2", "D3"))
    log = tmp_path / "run.log"
    with (
        NotifySocket(tmp_path / "notify") as notify,
        mailer_run(config, log, notify=notify.path, watchdog_usec=200_000) as child,
    ):
        (ready,) = notify.until(lambda m: True, child)
        assert ready["READY"] == "1"
        assert SUMMARY.match(ready["STATUS"]), ready
        after_tick = notify.until(lambda m: "STATUS" in m, child)[-1]["STATUS"]
        cases, queue, _connected = SUMMARY.match(after_tick).groups()  # type: ignore[union-attr]
        assert (cases, queue) == ("3", "0")  # the three reminders went in the first tick
        # Now the daemon snoozes for 30 s: WATCHDOG=1 keeps coming (every 0.1 s) meanwhile.
        pings: list[dict[str, str]] = []

        def five_pings(message: dict[str, str]) -> bool:
            assert "STATUS" not in message, "the snooze ended before five keep-alives"
            pings.append(message)
            return len(pings) == 5

        notify.until(five_pings, child)
        assert all(p == {"WATCHDOG": "1"} for p in pings)
        child.send_signal(signal.SIGTERM)
        stopping = notify.until(lambda m: "STOPPING" in m, child)[-1]
        assert stopping["STOPPING"] == "1"
        assert child.wait(120) == 0
    assert len([m for m in servers.sink_messages() if "@debtor.example" in str(m.rcpt_tos)]) == 3
    status = read_status(status_path(load_settings(config)))
    assert status is not None and status.state == "stopped" and status.ticks >= 1
    assert set(status.mailboxes) == {"cobros", "administracion"}


def _stuck_config(workdir: Path, port: int) -> Path:
    path = workdir / "mailer.toml"
    path.write_text(
        f"""
[creditor]
legal_name = "Taller Demo S.L."
tax_id = "B00000000"
address = "Calle Mayor 1, 28013 Madrid"
iban = "ES91 2100 0418 4502 0005 1332"

[storage]
database = "mailer.db"
evidence_dir = "evidence"

[paths]
campaigns = "{REPO / "campaigns"}"
templates = "{REPO / "templates"}"

[daemon]
interval_seconds = 1
stall_seconds = 1
shutdown_timeout_seconds = 1

[identities.cobros]
address = "cobros@taller-demo.example"
display_name = "Cobros"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_security = "plain"
""",
        encoding="utf-8",
    )
    return path


def test_a_stuck_tick_stops_the_keepalives(tmp_path: Path) -> None:
    # A mail server that takes the connection and never says a word: the kernel completes the
    # handshake for a listening socket nobody accepts on. The SMTP client waits 60 s per try.
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)
    config = _stuck_config(tmp_path, blackhole.getsockname()[1])
    import_ledger(config, ledger("D1"))
    log = tmp_path / "run.log"
    with (
        blackhole,
        NotifySocket(tmp_path / "notify") as notify,
        mailer_run(config, log, notify=notify.path, watchdog_usec=200_000) as child,
    ):
        notify.until(lambda m: "READY" in m, child)
        before = notify.until(lambda m: "stuck" in m.get("STATUS", ""), child)
        assert any(m.get("WATCHDOG") == "1" for m in before)  # alive until it got stuck
        # Then silence: 30 keep-alive intervals without one, so systemd would restart it.
        after = notify.read(3.0)
        assert not any("WATCHDOG" in m for m in after), after
    text = log.read_text(encoding="utf-8")
    assert "no progress" in text and "systemd restarts mailer" in text
