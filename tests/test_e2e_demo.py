"""`mailer demo --real-servers`: the demo's escalation through Postfix and Dovecot completes."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from mailenv.fixtures import require_mailenv
from rich.console import Console

from mailer.demo_debtors import SCRIPTS
from mailer.demo_real import run_demo_real


def test_the_demo_escalation_runs_through_postfix_and_dovecot(tmp_path: Path) -> None:
    require_mailenv()
    out = io.StringIO()
    result = run_demo_real(
        tmp_path / "demo", days=21, console=Console(file=out, width=200), keep_mail=False
    )
    assert result.chain_ok and result.sent > 20
    assert result.sent_copies == result.sent  # each filed once in its identity's Sent folder
    db = sqlite3.connect(result.database)
    # The bouncing address was refused by the debtors' server: Postfix's DSN, then the next one.
    (bouncing,) = [s.address for s in SCRIPTS if s.does == "bounce"]
    contacts = dict(
        db.execute(
            "SELECT address, status FROM contacts WHERE debtor_id ="
            " (SELECT debtor_id FROM contacts WHERE address = ?)",
            (bouncing,),
        ).fetchall()
    )
    assert contacts.pop(bouncing) == "undeliverable" and "active" in contacts.values()
    # The server that refuses cobros@ did so after Postfix relayed: a DSN, then administracion@.
    (refusing,) = [s.address for s in SCRIPTS if s.does == "refuse"]
    identities = [
        identity
        for identity, recipients in db.execute(
            "SELECT identity, recipients FROM messages WHERE state = 'sent' ORDER BY id"
        )
        if refusing in recipients
    ]
    assert identities[:2] == ["cobros", "administracion"]
    assert "written from administracion instead of cobros" in out.getvalue()
    assert result.accepted_by_server == result.sent - 2  # all but the two refused
    assert "Postfix returned 2 delivery report(s)" in out.getvalue()
    # The scripted answers went through Postfix to Dovecot, where the watcher read them.
    kinds = {kind for (kind,) in db.execute("SELECT kind FROM inbound")}
    assert kinds == {"bounce", "human_reply", "autoreply"}
