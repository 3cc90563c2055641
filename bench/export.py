"""Export benchmark: one case of 10,000 emails (and their events) to an evidence zip, < 30 s."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: `python bench/export.py`
    sys.path.insert(0, str(ROOT))

from mailer.config import load_settings  # noqa: E402
from mailer.domain.models import DEFAULT_PROFILES, MessageState  # noqa: E402
from mailer.evidence.export import export_evidence  # noqa: E402
from mailer.evidence.verify import verify_store  # noqa: E402
from mailer.ledger import parse_invoices  # noqa: E402
from mailer.store import outbox  # noqa: E402
from mailer.store.db import Store  # noqa: E402
from mailer.store.ledger import import_invoices  # noqa: E402

START = datetime(2026, 1, 5, 8, tzinfo=UTC)
TARGET_S = 30.0
CONFIG = """\
[creditor]
legal_name = "Taller Bench S.L."
tax_id = "B00000000"
address = "Calle Mayor 1, Madrid"
iban = "ES91 2100 0418 4502 0005 1332"

[storage]
database = "mailer.db"

[identities.cobros]
address = "cobros@bench.example"
display_name = "Cobros"
smtp_host = "127.0.0.1"
"""
LEDGER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
    "F-1,D1,Acme Trading Ltd,pay@acme.example,en,business,ES,MD,EUR,1210.00,2025-11-01,2025-12-01\n"
)


def email(n: int) -> bytes:
    body = f"Reminder {n}: invoice F-1, 1,210.00 EUR, is overdue.\r\n" * 40
    return (
        f"From: Cobros <cobros@bench.example>\r\nTo: pay@acme.example\r\n"
        f"Subject: Invoice F-1 ({n})\r\nMessage-ID: <bench.{n}@bench.example>\r\n"
        f"Date: Mon, 5 Jan 2026 09:00:00 +0100\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def build(workdir: Path, messages: int) -> Path:
    """A database with one case whose outbox holds ``messages`` sent emails."""
    config = workdir / "mailer.toml"
    config.write_text(CONFIG, encoding="utf-8")
    ledger = workdir / "invoices.csv"
    ledger.write_text(LEDGER, encoding="utf-8")
    store = Store.open(workdir / "mailer.db")
    import_invoices(store, parse_invoices(ledger), START, "invoices.csv", DEFAULT_PROFILES)
    with store.transaction():
        for n in range(messages):
            now = START + timedelta(minutes=n)
            row = outbox.enqueue(
                store, case_id=1, step=n, step_name="friendly", channel="smtp",
                identity="cobros", message_id=f"<bench.{n}@bench.example>",
                recipients=["pay@acme.example"], subject=f"Invoice F-1 ({n})", raw=email(n),
                in_reply_to=None, state=MessageState.QUEUED, now=now, deadline=None,
            )  # fmt: skip
            assert row is not None
            message = outbox.get(store, row)
            assert message is not None
            outbox.move(store, message, MessageState.SENDING, now, "send_attempt", {"attempt": 1})
            sending = outbox.get(store, row)
            assert sending is not None
            outbox.move(
                store, sending, MessageState.SENT, now, "message_sent",
                {"receipt": {"code": 250, "text": f"2.0.0 Ok: queued as {n:08X}"}}, sent_at=now,
            )  # fmt: skip
    store.close()
    return config


def floor(database: Path, target: Path) -> float:
    """The same emails read, decompressed and zipped, nothing else: what any export must pay."""
    store = Store.open(database)
    started = time.perf_counter()
    with zipfile.ZipFile(target, "w") as archive:
        for n, (data,) in enumerate(
            store.conn.execute(
                "SELECT b.data FROM messages m JOIN blobs b ON b.sha256 = m.raw_sha256"
            )
        ):
            archive.writestr(f"{n}.eml", zlib.decompress(data), zipfile.ZIP_DEFLATED, 6)
    store.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        config = build(workdir, args.messages)
        built = time.perf_counter() - started
        settings = load_settings(config)
        store = Store.open(settings.database)
        events = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        started = time.perf_counter()
        report = export_evidence(
            store, settings, workdir / "case.zip", START + timedelta(days=30), case_ids=[1]
        )
        took = time.perf_counter() - started
        started = time.perf_counter()
        verified = verify_store(store, settings.evidence)
        verify_took = time.perf_counter() - started
        store.close()
        raw = floor(settings.database, workdir / "floor.zip")
        size = (workdir / "case.zip").stat().st_size
    print(f"built: {args.messages} emails, {events} events in {built:.1f} s")
    print(
        f"export: {took:.2f} s for {report.files} files ({size / 1e6:.1f} MB zip);"
        f" target {TARGET_S:.0f} s -> {took / TARGET_S:.2f}x of target;"
        f" floor (read + zip the .eml only) {raw:.2f} s -> {took / raw:.1f}x floor"
    )
    print(f"verify: {verify_took:.2f} s, {'ok' if verified.ok else verified.problems[0]}")


if __name__ == "__main__":
    main()
