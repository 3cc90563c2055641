"""`mailer demo --real-servers`: the demo's escalation through Postfix and Dovecot (tests/mailenv).

The embedded demo's servers stand in for a provider; this one runs the same escalation (sample
ledger, payments, staff approvals, scripted debtors) against the mail environment the
end-to-end tests use: mailer submits through Postfix (AUTH, STARTTLS verified against the
environment's CA), Postfix relays each reminder to the debtors' servers (an SMTP server on
loopback standing in for every other domain) and files receipt copies, DSNs and answers in
Dovecot, where the watcher reads them over IMAP. The debtors' answers travel through Postfix
too, and the debtors' server refuses the unknown address and the blocked identity after
Postfix relayed the message, so those bounces are Postfix's own DSNs.

That environment is a test fixture, not part of the installed package: it lives in the source
tree (tests/mailenv), needs root, Postfix and Dovecot (scripts/install-mailservers.sh), and is
loaded from there only when the flag is given. A flag rather than a script: the escalation in
simulated time is the demo's own loop, which `mailer run` (on the real clock) cannot replay.
"""

from __future__ import annotations

import importlib.util
import re
import secrets
import sys
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from rich.console import Console

from mailer.config import load_settings
from mailer.demo import (
    IDENTITIES,
    REPO,
    DemoResult,
    demo_users,
    escalate,
    fresh_workdir,
    write_config,
)
from mailer.demo_debtors import SCRIPTS, DemoDebtors
from mailer.errors import MailerError
from mailer.localservers import LocalMailServers, SinkMessage

HARNESS = REPO / "tests" / "mailenv" / "__init__.py"
_BRACKETED = re.compile(rb"<([^>]*)>")


def load_harness() -> Any:
    """tests/mailenv from the source tree this package runs from."""
    if not HARNESS.is_file():
        raise MailerError(
            "--real-servers needs mailer's source tree: the test mail environment "
            f"({HARNESS.parent}) is not part of an installed package"
        )
    module = sys.modules.get("mailenv")
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "mailenv", HARNESS, submodule_search_locations=[str(HARNESS.parent)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["mailenv"] = module  # its dataclasses look the module up while it loads
        spec.loader.exec_module(module)
    return module


@dataclass
class MailEnvServers(LocalMailServers):
    """The mail environment seen as the demo's debtors see servers: what the debtors' side
    accepted, and a mailbox per identity where an answer is put to be sent on."""

    env: Any = None  # tests/mailenv's MailEnv
    staging: Path = Path()
    _read: set[str] = field(default_factory=set, repr=False)

    def mailbox_path(self, address: str) -> Path:
        """Where a scripted debtor leaves its answer to ``address``; ``relay_answers`` sends
        it on through Postfix."""
        path = self.staging / address.lower()
        for sub in ("tmp", "new"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        return path

    def sink_messages(self) -> list[SinkMessage]:
        """What the debtors' servers accepted, in order of arrival (Postfix relayed it)."""
        root = Path(self.env.remote_maildir)
        fresh = sorted(
            (path.stat().st_mtime_ns, path.name, path)
            for sub in ("new", "cur")
            if (root / sub).is_dir()
            for path in (root / sub).iterdir()
            if path.name not in self._read
        )
        for _mtime, name, path in fresh:
            # The stand-in server prepends X-Envelope-From and X-Envelope-To: one line each.
            envelope_from, envelope_to, data = path.read_bytes().split(b"\n", 2)
            sender = _BRACKETED.findall(envelope_from)
            self._sink.append(
                SinkMessage(
                    sender[0].decode() if sender else "",
                    tuple(r.decode() for r in _BRACKETED.findall(envelope_to)),
                    data,
                )
            )
            self._read.add(name)
        return list(self._sink)

    def relay_answers(self) -> int:
        """Send the answers left in ``mailbox_path`` through Postfix's SMTP port, as the
        debtors' own servers would; returns how many."""
        count = 0
        for box in sorted(self.staging.glob("*/new")):
            for path in sorted(box.iterdir()):
                data = path.read_bytes()
                sender = parseaddr(str(BytesHeaderParser().parsebytes(data)["From"]))[1]
                self.env.relay(data, sender, [box.parent.name])
                path.unlink()
                count += 1
        return count

    def settle(self) -> None:
        """Wait until Postfix has delivered everything it accepted (and the DSNs it made)."""
        self.env.wait_for_empty_queue()


@dataclass
class ServerDebtors(DemoDebtors):
    """The demo's scripted debtors, reading what reached their servers and answering through
    Postfix; the simulated clock waits for the servers at each tick."""

    def react(self, now: datetime) -> None:
        servers = self.servers
        assert isinstance(servers, MailEnvServers)
        servers.settle()  # what the last tick sent has reached the debtors' servers
        super().react(now)  # answers due now are left in the staging mailboxes...
        if servers.relay_answers():
            servers.settle()  # ...sent on, and stored by Dovecot before the watchers read


def run_demo_real(
    workdir: Path,
    days: int = 60,
    step_minutes: int = 60,
    console: Console | None = None,
    *,
    keep_mail: bool = True,
) -> DemoResult:
    """The demo's escalation on Postfix and Dovecot; ``keep_mail`` leaves their mail and logs
    in the environment's directory (printed) after the servers stop."""
    console = console or Console()
    harness = load_harness()
    ok, why = harness.available()
    if not ok:
        raise MailerError(f"--real-servers: {why}")
    fresh_workdir(workdir)
    password = secrets.token_urlsafe(12)
    users = demo_users(password)
    domain = next(iter(users)).partition("@")[2]
    env = harness.start(users=(*users, f"postmaster@{domain}"), password=password)
    try:
        servers = MailEnvServers(
            smtp_host=env.host, smtp_port=env.submission_port, imap_host=env.host,
            imap_port=env.imap_port, maildir_root=env.dir / "mail", users=users, root=workdir,
            env=env, staging=workdir / "answers",
        )  # fmt: skip
        tls = "STARTTLS verified against the environment's CA" if env.ca_file else "no TLS"
        console.print(
            f"[bold]mailer demo --real-servers[/] — Postfix submission on {env.host}:"
            f"{env.submission_port} (AUTH, {tls}), Dovecot IMAP on {env.host}:{env.imap_port}; "
            f"the debtors' servers: an SMTP server on port {env.remote_mx_port} behind Postfix"
        )
        settings = load_settings(write_config(workdir, servers, ca_file=env.ca_file))
        debtors = ServerDebtors(servers, scripts=[s for s in SCRIPTS if s.does != "bounce"])
        # The debtors' servers refuse what the scripts say, and Postfix writes the DSNs: one
        # refuses an address it does not know, one refuses an identity (its sender blocks).
        blocks: dict[str, dict[str, str]] = {}
        for (sender, where), reply in servers.sender_blocks.items():
            blocks.setdefault(where, {})[sender] = reply
        env.set_remote_rules(
            {
                "unknown_recipients": [s.address for s in SCRIPTS if s.does == "bounce"],
                "recipient_sender_blocks": blocks,
            }
        )
        sent, chain_ok = escalate(settings, debtors, days, step_minutes, console)
        servers.settle()
        accepted = len(servers.sink_messages())
        copies = sum(len(env.messages(address, "Sent")) for address in users)
        reports = sum(
            m.get_content_type() == "multipart/report" for a in users for m in env.messages(a)
        )
    finally:
        harness.stop(env, keep=keep_mail)  # the servers stop; mail and logs may stay to be read
    console.print(
        f"\n{sent} reminders sent through Postfix; the debtors' servers accepted {accepted}; "
        f"Postfix returned {reports} delivery report(s); {copies} copies filed in the Sent "
        f"folders of {', '.join(a for a, _ in IDENTITIES.values())} in Dovecot."
    )
    console.print(
        f"database: {settings.database}\nevent chain: {'verified' if chain_ok else 'BROKEN'}"
    )
    if keep_mail:
        console.print(
            f"mail as the servers stored it: {env.dir / 'mail'} (Dovecot), {env.remote_maildir} "
            f"(the debtors' servers); server logs: {env.dir / 'log'} (delete {env.dir} when done)"
        )
    return DemoResult(workdir, settings.database, sent, accepted, copies, chain_ok)
