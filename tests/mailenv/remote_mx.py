"""A scriptable "remote MX" (the rest of the internet) for the test mail environment.

Postfix routes every domain that is not hosted locally to this aiosmtpd server
(default_transport = smtp:[127.0.0.1]:MX_PORT), so tests can make a *remote* server
accept, reject at RCPT ("550 5.7.1 ... blocked") or tempfail, and Postfix then produces
a real DSN back to the local sender.

Rules are re-read from a JSON file on every transaction, so a test can change them
without restarting anything:

    {
      "blocked_senders":    {"billing@creditor.test": "550 5.7.1 Sender blocked by recipient"},
      "recipient_sender_blocks": {                         # per recipient domain or address
        "acme.example": {"billing@creditor.test": "550 5.7.1 Sender blocked by recipient"}
      },
      "unknown_recipients": ["gone@remote.test"],          # -> 550 5.1.1 User unknown
      "tempfail_recipients": ["busy@remote.test"],         # -> 451 4.2.0 Try again later
      "reject_all": null                                   # e.g. "554 5.7.1 Go away"
    }

Accepted messages are stored in one Maildir with X-Envelope-From / X-Envelope-To prepended.

usage: remote_mx.py --port N --rules FILE --maildir DIR [--hostname mx.remote.test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mailbox
import os
import signal
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class RemoteMX:
    """aiosmtpd handler: answers by the rules file, stores what it accepts."""

    def __init__(self, rules_path: str, maildir: str) -> None:
        self.rules_path = rules_path
        self.box = mailbox.Maildir(maildir, create=True)

    def rules(self) -> dict[str, Any]:
        try:
            with open(self.rules_path, encoding="utf-8") as f:
                data = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            # a test may be rewriting the file right now: treat as "no rules"
            return {}
        return data if isinstance(data, dict) else {}

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        r = self.rules()
        if r.get("reject_all"):
            return str(r["reject_all"])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        r = self.rules()
        sender = (envelope.mail_from or "").lower()
        rcpt = address.lower()
        blocked = {k.lower(): v for k, v in (r.get("blocked_senders") or {}).items()}
        if sender in blocked:
            return str(blocked[sender] or "550 5.7.1 Sender blocked by recipient")
        # one debtor's server blocking one sender, like Postfix's recipient_policy table
        for where, senders in (r.get("recipient_sender_blocks") or {}).items():
            where = where.lower()
            if rcpt != where and not rcpt.endswith("@" + where):
                continue
            replies = {k.lower(): v for k, v in senders.items()}
            if sender in replies:
                return str(replies[sender] or "550 5.7.1 Sender blocked by recipient")
        if rcpt in [x.lower() for x in r.get("unknown_recipients") or []]:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if rcpt in [x.lower() for x in r.get("tempfail_recipients") or []]:
            return "451 4.2.0 Try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpts = ", ".join(f"<{r}>" for r in envelope.rcpt_tos)
        hdr = f"X-Envelope-From: <{envelope.mail_from}>\r\nX-Envelope-To: {rcpts}\r\n"
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.box.add(hdr.encode() + data)
        return "250 2.0.0 Ok: stored by remote MX simulator"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--hostname", default="mx.remote.test")
    ap.add_argument("--pidfile")
    a = ap.parse_args()
    handler = RemoteMX(a.rules, a.maildir)
    # server_hostname must differ from Postfix's myhostname, else Postfix reports a mail loop
    ctl = Controller(
        handler,
        hostname=a.host,
        port=a.port,
        server_hostname=a.hostname,
        decode_data=False,
        enable_SMTPUTF8=True,
    )
    ctl.start()
    if a.pidfile:
        with open(a.pidfile, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
