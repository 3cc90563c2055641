"""Metrics and `mailer status`: the snapshot, its Prometheus text (read back by an independent
parser), the page served by the real daemon on loopback, and the terminal view of the same."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daemonproc import MAILER, NOW, import_ledger, ledger, mailer_run, set_daemon, wait_for
from prometheus_client.parser import text_string_to_metric_families

from mailer.config import MetricsSettings, load_settings
from mailer.demo import IDENTITIES, write_config
from mailer.demo_debtors import delivery_report, reply_to
from mailer.errors import ConfigError, MailerError
from mailer.health import IdentityHealth, Snapshot, open_readonly, read_status, status_path
from mailer.localservers import LocalMailServers, deliver
from mailer.metrics import MetricsServer, render
from mailer.store.db import Store

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mailer.toml"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text page, as prometheus_client's own parser reads it."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_render_is_valid_text_format_with_escaped_labels() -> None:
    sent = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)
    snap = Snapshot(
        at=sent,
        messages={"sent": 7, "failed": 1, "queued": 2, "deferred": 1, "sending": 0},
        deferrals=4,
        cases={"active": 5, "review": 1},
        inbound={"bounce": 2, "human_reply": 3},
        quarantined=1,
        bounces={"hard": 1, "soft": 1},
        replies={"promise_to_pay": 2, "dispute": 1},
        open_reviews=1,
        identities=(
            IdentityHealth('odd"na\\me', "a@x.example", True, True, sent, sent, 7, 2, None),
            IdentityHealth("quiet", "q@x.example", False, None, None, None, 0, 0, None),
        ),
    )
    found = samples(render(snap))
    assert value(found, "mailer_messages_sent_total") == 7
    assert value(found, "mailer_messages_failed_total") == 1
    assert value(found, "mailer_send_deferrals_total") == 4
    assert value(found, "mailer_queue_depth") == 3
    assert value(found, "mailer_messages", state="queued") == 2
    assert value(found, "mailer_bounces_total", **{"class": "hard"}) == 1
    assert value(found, "mailer_replies_total", intent="dispute") == 1
    assert value(found, "mailer_cases", status="review") == 1
    assert value(found, "mailer_inbound_quarantined_total") == 1
    odd = 'odd"na\\me'  # a quote and a backslash survive the label escaping
    assert value(found, "mailer_identity_likely_blocks_total", identity=odd) == 2
    assert value(found, "mailer_identity_mailbox_connected", identity=odd) == 1
    stamp = value(found, "mailer_identity_last_smtp_send_timestamp_seconds", identity=odd)
    assert stamp == sent.timestamp()
    # Never sent, mailbox not read: no made-up timestamps, no connection gauge.
    assert (
        "mailer_identity_last_smtp_send_timestamp_seconds",
        frozenset({("identity", "quiet")}),
    ) not in found
    assert ("mailer_identity_mailbox_connected", frozenset({("identity", "quiet")})) not in found


def _with_metrics(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text(EXAMPLE.read_text(encoding="utf-8") + "\n" + table, encoding="utf-8")
    return path


def test_metrics_config_is_off_by_default_and_loopback_only(tmp_path: Path) -> None:
    assert load_settings(EXAMPLE).metrics is None
    ok = load_settings(_with_metrics(tmp_path, '[metrics]\nlisten = "[::1]:9464"\n'))
    assert ok.metrics == MetricsSettings(host="::1", port=9464)
    assert load_settings(_with_metrics(tmp_path, "[metrics]\n")).metrics == MetricsSettings()
    remote = '[metrics]\nlisten = "0.0.0.0:9464"\nallow_remote = true\n'
    assert load_settings(_with_metrics(tmp_path, remote)).metrics == MetricsSettings(
        host="0.0.0.0", port=9464, allow_remote=True
    )
    for table, problem in (
        ('[metrics]\nlisten = "192.0.2.7:9464"\n', "not a loopback address"),
        ('[metrics]\nlisten = "metrics.example:9464"\n', "not a loopback address"),
        ('[metrics]\nlisten = "127.0.0.1"\n', 'listen must be "host:port"'),
        ('[metrics]\nlisten = "127.0.0.1:99999"\n', 'listen must be "host:port"'),
        ("[metrics]\nport = 1\n", "unknown key 'port'"),
        ('[metrics]\nallow_remote = "yes"\n', "allow_remote must be true or false"),
    ):
        path = _with_metrics(tmp_path, table)
        with pytest.raises(ConfigError) as caught:
            load_settings(path)
        assert any(problem in p and p.startswith(f"{path}:") for p in caught.value.problems)


def _scrape(address: str, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(response.read().decode("utf-8"))


def _status(config: Path) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [*MAILER, "--config", str(config), "--now", NOW, "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_daemon_serves_metrics_and_mailer_status_reads_them(
    tmp_path: Path, servers: LocalMailServers
) -> None:
    config = write_config(tmp_path, servers, grace_seconds=0)
    set_daemon(config, interval_seconds=1, reconcile_grace_seconds=0)
    with config.open("a", encoding="utf-8") as fh:
        # Port 0: any free port (the status file says which); IDLE re-issued every second.
        fh.write('\n[metrics]\nlisten = "127.0.0.1:0"\n\n[inbound]\nidle_seconds = 1\n')
    settings = load_settings(config)
    import_ledger(config, ledger("D1", "D2", "D3"))
    status_file = status_path(settings)
    billing = IDENTITIES["cobros"][0]
    log = tmp_path / "run.log"

    def address() -> str | None:
        status = read_status(status_file)
        return status.metrics if status else None

    def sent_to(debtor: str) -> bytes | None:
        found = [m.data for m in servers.sink_messages() if debtor in m.rcpt_tos]
        return found[0] if found else None

    with mailer_run(config, log) as child:
        wait_for(lambda: all(sent_to(f"d{n}@debtor.example") for n in (1, 2, 3)), "3 sends")
        wait_for(lambda: address() is not None, "the status file")
        # The debtors' side: D1 promises to pay, D2's address turns out not to exist.
        when = datetime.fromisoformat(NOW)
        inbox = servers.mailbox_path(billing)
        first, second = sent_to("d1@debtor.example"), sent_to("d2@debtor.example")
        assert first is not None and second is not None
        deliver(inbox, reply_to(first, "D1 <d1@debtor.example>", "Pagaré el día 15. Saludos", when))
        deliver(
            inbox,
            delivery_report(second, "d2@debtor.example", "5.1.1",
                "550 5.1.1 <d2@debtor.example>: Recipient address rejected: User unknown",
                when, "mx.debtor.example"),
        )  # fmt: skip
        url = str(address())

        def both_read() -> bool:
            found = samples(_scrape(url))
            return (
                value(found, "mailer_replies_total", intent="promise_to_pay") == 1
                and value(found, "mailer_bounces_total", **{"class": "hard"}) == 1
                and value(found, "mailer_identity_mailbox_connected", identity="administracion")
                == 1
            )

        wait_for(both_read, "the reply and the bounce, read by the watcher")
        found = samples(_scrape(url))
        assert value(found, "mailer_messages_sent_total") == 3
        assert value(found, "mailer_queue_depth") == 0
        assert value(found, "mailer_identity_sent_total", identity="cobros") == 3
        assert value(found, "mailer_identity_sent_total", identity="administracion") == 0
        assert value(found, "mailer_identity_likely_blocks_total", identity="cobros") == 0
        assert value(found, "mailer_inbound_total", kind="human_reply") == 1
        assert value(found, "mailer_cases", status="paused") == 1  # D1's promise
        assert value(found, "mailer_cases", status="review") == 1  # D2: no address left
        assert value(found, "mailer_reviews_open") == 2
        for name in ("cobros", "administracion"):
            assert value(found, "mailer_identity_mailbox_connected", identity=name) == 1
            stamp = "mailer_identity_last_imap_contact_timestamp_seconds"
            assert value(found, stamp, identity=name) == when.timestamp()  # the daemon's clock
        last_send = value(
            found, "mailer_identity_last_smtp_send_timestamp_seconds", identity="cobros"
        )
        assert last_send == when.timestamp()
        with pytest.raises(urllib.error.HTTPError) as caught:
            _scrape(url, "/")
        assert caught.value.code == 404
        caught.value.close()

        shown = _status(config)
        assert "daemon: running" in shown and "last word 0 s ago" in shown
        assert "1 cases active, queue 0, mailboxes 2/2 connected, 2 to review" in shown
        assert "cobros@taller-demo.example" in shown and "connected" in shown
        assert "promise_to_pay 1" in shown and "hard 1" in shown
        assert f"metrics: http://{url}/metrics" in shown
        child.send_signal(signal.SIGTERM)
        assert child.wait(120) == 0
    shown = _status(config)
    assert "daemon: stopped" in shown and "disconnected" in shown


def test_status_never_leaves_files_the_service_could_not_open(tmp_path: Path) -> None:
    # Reading a WAL database nobody has open creates its -wal and -shm files; made by root for
    # a database that belongs to the service's user, they would keep the service from starting.
    if os.geteuid() != 0:
        pytest.skip("needs root, to hand the database to another user")
    database = tmp_path / "mailer.db"
    Store.open(database).close()
    os.chown(database, 65534, 65534)
    with pytest.raises(MailerError, match="belongs to another user"):
        open_readonly(database)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailer.db"]
    os.chown(database, os.geteuid(), os.getegid())
    open_readonly(database).close()


def test_a_port_already_taken_is_a_clear_error() -> None:
    async def snapshot() -> Snapshot:
        raise AssertionError("never scraped")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = MetricsServer("127.0.0.1", taken.getsockname()[1], snapshot)
        with pytest.raises(MailerError, match=r"metrics: cannot listen on 127\.0\.0\.1:"):
            asyncio.run(server.start())
