"""The watcher against Dovecot: a 10,000-message mailbox caught up after downtime, flags untouched."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from mailenv import MailEnv

from mailer.app import App
from mailer.config import load_settings
from mailer.daemon import make_box
from mailer.flows.inbound import Inbound
from mailer.ledger import parse_invoices
from mailer.store.ledger import import_invoices

NOW = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
USER = "billing-catchup@creditor.test"  # a mailbox of its own in the shared environment
REPO = Path(__file__).resolve().parent.parent


def config(tmp_path: Path, env: MailEnv) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text(
        f"""
[creditor]
legal_name = "Creditor Test S.L."
tax_id = "B00000001"
address = "Calle Mayor 1, Madrid"
country = "ES"
timezone = "Europe/Madrid"
iban = "ES91 2100 0418 4502 0005 1332"

[storage]
database = "mailer.db"

[paths]
campaigns = "{REPO / "campaigns"}"
templates = "{REPO / "templates"}"

[identities.billing]
address = "{USER}"
display_name = "Billing"
smtp_host = "{env.host}"
smtp_port = {env.submission_port}
smtp_security = "plain"
smtp_user = "{USER}"
password_env = "MAILER_TEST_DOVECOT_PASSWORD"
imap_host = "{env.host}"
imap_port = {env.imap_port}
imap_security = "plain"
""",
        encoding="utf-8",
    )
    return path


def put(maildir: Path, data: bytes, owner: os.stat_result) -> None:
    """Deliver as an MDA does: write in tmp/, rename into new/, owned by the mail user."""
    name = f"{uuid.uuid4().hex}.mailenv"
    tmp = maildir / "tmp" / name
    tmp.write_bytes(data)
    os.chown(tmp, owner.st_uid, owner.st_gid)
    tmp.rename(maildir / "new" / name)


def message(sender: str, subject: str, body: str, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = USER
    msg["Subject"] = subject
    msg["Date"] = format_datetime(NOW)
    msg["Message-ID"] = f"<m{n}.{uuid.uuid4().hex[:8]}@sender.test>"
    msg.set_content(body)
    return msg.as_bytes()


def test_a_10000_message_mailbox_is_caught_up_after_downtime(
    tmp_path: Path, mailenv: MailEnv
) -> None:
    user = USER
    mailenv.add_user(user)
    os.environ["MAILER_TEST_DOVECOT_PASSWORD"] = mailenv.password
    settings = load_settings(config(tmp_path, mailenv))
    app = App.open(settings)
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(
        "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,"
        "region,currency,amount,issue_date,due_date\n"
        "F-9,D9,Delta S.L.,debtor1@debtor.test,es,business,ES,MD,EUR,900.00,2025-12-01,"
        "2025-12-31\n",
        encoding="utf-8",
    )
    import_invoices(app.store, parse_invoices(ledger), NOW, "invoices.csv", settings.profiles)
    inbound = Inbound(app)
    identity = settings.identity("billing")

    async def sync() -> int:
        box = make_box(identity)
        await asyncio.to_thread(box.connect)
        try:
            report = await inbound.sync("billing", box, NOW)
        finally:
            await asyncio.to_thread(box.close)
        return report.stored

    assert asyncio.run(sync()) == 0  # first contact: the checkpoint is set
    maildir = mailenv.maildir(user)
    owner = maildir.stat()
    # mailer is down while 10,000 messages arrive; one of them is from the debtor.
    for n in range(10_000):
        if n == 7_777:
            data = message(
                "Delta <debtor1@debtor.test>",
                "Factura F-9",
                "Ya está pagada, adjunto el justificante.",
                n,
            )
        else:
            data = message(f"friend{n}@sender.test", f"Lunch {n}?", "Shall we meet on Friday?", n)
        put(maildir, data, owner)
    assert asyncio.run(sync()) == 1
    rows = app.store.query("SELECT kind, from_address FROM inbound")
    assert [(r["kind"], r["from_address"]) for r in rows] == [
        ("human_reply", "debtor1@debtor.test")
    ]
    assert app.store.query("SELECT intent FROM reviews")[0]["intent"] == "paid_already"
    # Nothing was marked read: every message is still unseen for the person who reads this box.
    with make_box(identity) as box:
        imap = box._imap
        imap.select_folder("INBOX", readonly=True)
        assert len(imap.search(["UNSEEN"])) == 10_000
    app.store.close()
