"""Logs: case and message ids in both formats, journald priorities, and no secret ever logged,
not even by the libraries at DEBUG."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import import_ledger, ledger, mailer_run, set_daemon, wait_for

from mailer.config import load_settings
from mailer.demo import IDENTITIES, demo_users, write_config
from mailer.health import read_status, status_path
from mailer.localservers import LocalMailServers, running_local_servers
from mailer.logs import _Human, _Json, to_journal

SECRET = "Zq9-hunter2-xLw7pTk"  # appears nowhere else: any occurrence in a log is a leak


def _record(level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord("mailer.flows.outbound", level, __file__, 1, "sent %s", ("x",), None)
    record.case_id = 12
    record.message_id = "<mailer.12.1.ab@taller-demo.example>"
    return record


def test_both_formats_carry_case_and_message_ids() -> None:
    human = _Human().format(_record())
    assert human == (
        "info    mailer.flows.outbound: sent x"
        " [case_id=12 message_id=<mailer.12.1.ab@taller-demo.example>]"
    )
    data = json.loads(_Json().format(_record()))
    assert (data["case_id"], data["message_id"], data["msg"], data["level"]) == (
        12, "<mailer.12.1.ab@taller-demo.example>", "sent x", "info",
    )  # fmt: skip


def test_journald_gets_priorities_when_stderr_is_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream:
        info = os.fstat(stream.fileno())
        assert to_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not to_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
        assert not to_journal(stream, {})
    assert _Human(journal=True).format(_record(logging.ERROR)).startswith("<3>error   mailer.")
    assert _Human(journal=True).format(_record(logging.WARNING)).startswith("<4>warning ")


@pytest.fixture
def secret_servers(tmp_path: Path) -> Iterator[LocalMailServers]:
    with running_local_servers(tmp_path / "servers", demo_users(SECRET)) as running:
        yield running


def test_no_secret_is_logged_even_at_debug(
    tmp_path: Path, secret_servers: LocalMailServers
) -> None:
    servers = secret_servers
    config = write_config(tmp_path, servers, grace_seconds=0)
    set_daemon(config, interval_seconds=1, reconcile_grace_seconds=0)
    import_ledger(config, ledger("D1"))
    status_file = status_path(load_settings(config))
    log = tmp_path / "run.log"

    def read_both_mailboxes() -> bool:
        status = read_status(status_file)
        return status is not None and all(
            box.last_contact is not None for box in status.mailboxes.values()
        )

    # The password reaches the daemon the way a deployment gives it: from the environment.
    env = {"MAILER_DEMO_PASSWORD": SECRET}
    with mailer_run(
        config, log, args=("--log-level", "debug", "--log-format", "json"), env=env
    ) as child:
        wait_for(lambda: len(servers.sink_messages()) == 1, "a send")
        wait_for(read_both_mailboxes, "a pass through each mailbox")
        child.send_signal(signal.SIGTERM)
        assert child.wait(120) == 0
    text = log.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    # DEBUG really was on, for the libraries too: imapclient logged the IMAP conversation,
    # its LOGIN redacted by imapclient itself.
    assert any(r["logger"].startswith("imapclient") for r in records)
    assert any("LOGIN **REDACTED**" in r["msg"] for r in records)
    assert any(r.get("case_id") == 1 and r.get("message_id") for r in records)
    # Neither the password, nor any SMTP AUTH encoding of it, anywhere.
    forms = {SECRET, base64.b64encode(SECRET.encode()).decode()}
    for user, _display in IDENTITIES.values():
        plain = f"\0{user}\0{SECRET}".encode()
        forms.add(base64.b64encode(plain).decode())
    for form in forms:
        assert form not in text, f"a secret in the log: {form!r}"
    # The run did log in: the secret was used, not merely absent.
    assert len([m for m in servers.sink_messages() if "d1@debtor.example" in m.rcpt_tos]) == 1
    print(f"{len(records)} log records, {sys.getsizeof(text)} bytes, no secret")
