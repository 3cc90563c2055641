"""Inbound throughput: messages classified and recorded per second, against bare parsing.

    .venv/bin/python bench/inbound.py [--messages 5000]

Builds a store with the sample ledger, then a mailbox's worth of case-related mail (replies in
Spanish and English, out-of-office answers, Postfix-style DSNs, each unique) and runs, on the
same messages in the same run:
  * bare: ``email.message_from_bytes`` on each message (the floor any reader pays);
  * classify: mailer's pure classifier alone;
  * inbound: ``Inbound.process_many`` — classify, match to a case, store the raw bytes, record
    the events and act on the case, committed per chunk of 200 as the watcher does.
Prints messages/second of each and the ratio inbound / bare (target >= 0.5). The machine may be
shared: bare and classify run alternately, ``--rounds`` times, and the best round of each counts.
The inbound pass writes to the store, so it runs once; its time is also split into the classifier's
share (at the classify-only rate) and the rest (SQLite, the evidence chain, decisions), and its
CPU time is printed next to the wall clock (the difference: waiting for fsync, and other work on
the machine).

By default the store is the sample ledger: 36 debtors, so each case gets ~140 of the messages,
matched by the sender's address (the store has sent nothing they could answer), and most find
their case already paused or in review. ``--debtors N`` builds a store of N generated debtors
instead, with a sent reminder for each message to answer (the message threads to it by
In-Reply-To), spread over the cases: closer to a real mailbox, where a case gets a message or
two and most of them change it.
"""

from __future__ import annotations

import argparse
import csv
import email
import os
import random
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import write_config
from mailer.demo_debtors import auto_reply, delivery_report, reply_to
from mailer.domain.classify import classify
from mailer.domain.models import MessageState
from mailer.flows.inbound import CHUNK, Inbound
from mailer.ledger import parse_invoices
from mailer.sample import INVOICE_COLUMNS, SAMPLE_DIR, generate
from mailer.store import outbox
from mailer.store.db import iso
from mailer.store.ledger import import_invoices

NOW = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
TEXTS = (
    "Buenos días, pagaremos la factura el día 20. Un saludo.",
    "No reconocemos este cargo, el servicio no se prestó. Lo reclamamos.",
    "Ya está pagada, les adjunto el justificante de la transferencia.",
    "¿Podríamos pagarlo en tres plazos? Ahora mismo no nos es posible.",
    "We will pay on Friday, sorry for the delay.",
    "Please stop emailing me about this.",
    "Could you send me a copy of the invoice? Thanks.",
)


def original(n: int, to: str) -> bytes:
    return (
        f"From: Cobros <cobros@taller-demo.example>\r\nTo: {to}\r\n"
        f"Subject: Factura F-{n} pendiente de pago\r\nMessage-ID: <mailer.{n}.1.x@taller-demo.example>\r\n"
        f"Date: Mon, 05 Jan 2026 09:00:00 +0100\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Estimado cliente, la factura F-{n} está pendiente de pago.\r\n"
    ).encode()


def corpus(addresses: list[str], count: int, *, spread: bool = False) -> list[bytes]:
    """Message n answers (or bounces) reminder n; ``spread``: sent to addresses[n % len]."""
    rng = random.Random(7)
    out = []
    for n in range(count):
        to = addresses[n % len(addresses)] if spread else rng.choice(addresses)
        when = NOW - timedelta(minutes=count - n)
        roll = n % 10
        if roll < 6:
            out.append(reply_to(original(n, to), to, f"{rng.choice(TEXTS)} (ref {n})", when))
        elif roll < 8:
            out.append(
                auto_reply(original(n, to), to, f"Out of office until 9 February 2026. ({n})", when)
            )
        else:
            mta = "mx." + to.rsplit("@", 1)[1]
            out.append(
                delivery_report(
                    original(n, to), to, "4.2.2", f"452 4.2.2 Mailbox full ({n})", when, mta
                )
            )
    return out


def generated_ledger(path: Path, debtors: int) -> Path:
    """An invoices CSV of ``debtors`` generated debtors (sample.py's), one invoice each.

    The generator repeats company names, and so their addresses: here each debtor's addresses
    are its own, as in a real ledger (a subdomain named after the debtor).
    """
    invoices, _payments = generate(debtors, 1, start=date(2025, 10, 1), paid_share=0.0)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INVOICE_COLUMNS)
        writer.writeheader()
        for row in invoices:
            own = row["debtor_id"].lower()
            emails = [e.replace("@", f"@{own}.", 1) for e in row["debtor_emails"].split(";")]
            writer.writerow({**row, "debtor_emails": ";".join(emails)})
    return path


def sent_reminders(app: App, count: int) -> list[str]:
    """Reminder n (``original``) in the outbox as sent, spread over the cases; the addresses."""
    rows = app.store.conn.execute(
        "SELECT k.id, c.address FROM cases k JOIN contacts c ON c.debtor_id = k.debtor_id"
        " AND c.position = (SELECT min(position) FROM contacts WHERE debtor_id = k.debtor_id)"
        " ORDER BY k.id"
    ).fetchall()
    for n in range(count):
        case_id, to = rows[n % len(rows)]
        row = outbox.enqueue(
            app.store, case_id=case_id, step=1, step_name="friendly", channel="smtp",
            identity="cobros", message_id=f"<mailer.{n}.1.x@taller-demo.example>",
            recipients=[to], subject=f"Factura F-{n} pendiente de pago", raw=original(n, to),
            in_reply_to=None, state=MessageState.QUEUED, now=NOW - timedelta(days=2),
            deadline=None, resend=n // len(rows),
        )  # fmt: skip
        app.store.conn.execute(
            "UPDATE messages SET state = 'sent', sent_at = ? WHERE id = ?",
            (iso(NOW - timedelta(days=2)), row),
        )
    return [to for _case, to in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--debtors", type=int, default=0, help="a generated store of this many debtors"
    )
    args = parser.parse_args()
    os.environ.setdefault("MAILER_DEMO_PASSWORD", "unused")
    with tempfile.TemporaryDirectory() as tmp:
        nowhere = SimpleNamespace(
            smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1", imap_port=9
        )
        app = App.open(load_settings(write_config(Path(tmp), nowhere)))  # type: ignore[arg-type]
        ledger = SAMPLE_DIR / "invoices.csv"
        if args.debtors:
            ledger = generated_ledger(Path(tmp) / "invoices.csv", args.debtors)
        import_invoices(
            app.store,
            parse_invoices(ledger),
            NOW - timedelta(days=30) if args.debtors else NOW,
            "sample",
            app.settings.profiles,
        )
        if args.debtors:
            with app.store.transaction():
                addresses = sent_reminders(app, args.messages)
            messages = corpus(addresses, args.messages, spread=True)
        else:
            addresses = [r[0] for r in app.store.conn.execute("SELECT address FROM contacts")]
            messages = corpus(addresses, args.messages)

        bare = classified = float("inf")
        for _round in range(args.rounds):
            started = time.perf_counter()
            for raw in messages:
                email.message_from_bytes(raw)
            bare = min(bare, time.perf_counter() - started)

            started = time.perf_counter()
            for raw in messages:
                classify(raw, today=NOW.date())
            classified = min(classified, time.perf_counter() - started)

        inbound = Inbound(app)
        started, cpu = time.perf_counter(), time.process_time()
        outcomes: list[str] = []
        for start in range(0, len(messages), CHUNK):
            chunk = [(None, raw, True) for raw in messages[start : start + CHUNK]]
            outcomes += inbound.process_many("cobros", "INBOX", 1, chunk, NOW)
        recorded = time.perf_counter() - started
        cpu = time.process_time() - cpu
        stored = outcomes.count("stored")
        cases = app.store.conn.execute("SELECT count(*) FROM cases").fetchone()[0]
        app.store.close()

    n = len(messages)
    per = 1e6 / n
    print(
        f"{n} messages ({stored} recorded against a case) on {cases} cases, one process,"
        f" {os.cpu_count()} cores"
    )
    print(f"bare email.message_from_bytes   : {n / bare:7.0f} msg/s  {bare * per:5.0f} us/msg")
    print(
        f"mailer classify only            : {n / classified:7.0f} msg/s  {classified * per:5.0f} us/msg"
    )
    print(
        f"mailer inbound (classify+record): {n / recorded:7.0f} msg/s  {recorded * per:5.0f} us/msg"
    )
    print(
        f"  of which recording            :                {(recorded - classified) * per:5.0f} us/msg"
    )
    print(f"  CPU time of the inbound pass   :                {cpu * per:5.0f} us/msg")
    print(f"ratio classify / bare           : {bare / classified:7.2f}")
    print(f"ratio inbound / bare            : {bare / recorded:7.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
