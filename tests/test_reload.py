"""SIGHUP (`systemctl reload mailer`): campaigns and templates are read again only if they pass
`mailer check`; a broken edit leaves the rules in force, and the journal says why."""

from __future__ import annotations

import email
import email.policy
import shutil
import signal
import subprocess
from pathlib import Path

from daemonproc import NotifySocket, import_ledger, ledger, mailer_run, wait_for

from mailer.config import load_settings
from mailer.demo import REPO, write_config
from mailer.health import read_status, status_path
from mailer.localservers import LocalMailServers


def _subject(servers: LocalMailServers, address: str) -> str | None:
    for item in servers.sink_messages():
        if address in item.rcpt_tos:
            parsed = email.message_from_bytes(item.data, policy=email.policy.default)
            return str(parsed["Subject"])
    return None


def _reload(child: subprocess.Popen[bytes], notify: NotifySocket) -> None:
    """SIGHUP, as `systemctl reload` sends it; then RELOADING=1, and READY=1 when done."""
    child.send_signal(signal.SIGHUP)
    notify.until(lambda m: m.get("RELOADING") == "1", child)
    notify.until(lambda m: m.get("READY") == "1", child)


def test_reload_keeps_the_old_rules_when_the_new_ones_fail_the_check(
    tmp_path: Path, servers: LocalMailServers
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    for path in templates.glob("*/*.subject.txt"):
        path.write_text("Version-A " + path.read_text(encoding="utf-8"), encoding="utf-8")
    friendly = templates / "es" / "friendly.subject.txt"
    original = friendly.read_text(encoding="utf-8")
    config = write_config(tmp_path, servers, grace_seconds=0)
    config.write_text(
        config.read_text(encoding="utf-8").replace(str(REPO / "templates"), str(templates)),
        encoding="utf-8",
    )
    status_file = status_path(load_settings(config))
    log = tmp_path / "run.log"
    with (
        NotifySocket(tmp_path / "notify") as notify,
        mailer_run(config, log, notify=notify.path) as child,
    ):
        notify.until(lambda m: m.get("READY") == "1", child)

        # A staff member breaks a template, and reloads.
        friendly.write_text("Version-B {{ debtor.name ", encoding="utf-8")
        _reload(child, notify)
        text = log.read_text(encoding="utf-8")
        assert "reload refused" in text and f"{friendly}:" in text  # file:line, as `mailer check`
        status = read_status(status_file)
        assert status is not None and status.reload_error and str(friendly) in status.reload_error
        # What goes out now is still made with the rules checked before.
        import_ledger(config, ledger("D1"), "first.csv")
        wait_for(lambda: _subject(servers, "d1@debtor.example") is not None, "the first reminder")
        assert str(_subject(servers, "d1@debtor.example")).startswith("Version-A ")

        # Fixed, and reloaded: the new template is used from now on.
        friendly.write_text("Version-C " + original.removeprefix("Version-A "), encoding="utf-8")
        _reload(child, notify)
        assert "reloaded: 2 campaigns" in log.read_text(encoding="utf-8")
        status = read_status(status_file)
        assert status is not None and status.reload_error is None
        import_ledger(config, ledger("D2"), "second.csv")
        wait_for(lambda: _subject(servers, "d2@debtor.example") is not None, "the second reminder")
        assert str(_subject(servers, "d2@debtor.example")).startswith("Version-C ")
