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
share (at the classify-only rate) and the rest (SQLite, the evidence chain, decisions).
"""

from __future__ import annotations

import argparse
import email
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import write_config
from mailer.demo_debtors import auto_reply, delivery_report, reply_to
from mailer.domain.classify import classify
from mailer.flows.inbound import CHUNK, Inbound
from mailer.ledger import parse_invoices
from mailer.sample import SAMPLE_DIR
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


def corpus(addresses: list[str], count: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for n in range(count):
        to = rng.choice(addresses)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("MAILER_DEMO_PASSWORD", "unused")
    with tempfile.TemporaryDirectory() as tmp:
        nowhere = SimpleNamespace(
            smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1", imap_port=9
        )
        app = App.open(load_settings(write_config(Path(tmp), nowhere)))  # type: ignore[arg-type]
        import_invoices(
            app.store,
            parse_invoices(SAMPLE_DIR / "invoices.csv"),
            NOW,
            "sample",
            app.settings.profiles,
        )
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
        started = time.perf_counter()
        outcomes: list[str] = []
        for start in range(0, len(messages), CHUNK):
            chunk = [(None, raw, True) for raw in messages[start : start + CHUNK]]
            outcomes += inbound.process_many("cobros", "INBOX", 1, chunk, NOW)
        recorded = time.perf_counter() - started
        stored = outcomes.count("stored")
        app.store.close()

    n = len(messages)
    per = 1e6 / n
    print(f"{n} messages ({stored} recorded against a case), one process, {os.cpu_count()} cores")
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
    print(f"ratio classify / bare           : {bare / classified:7.2f}")
    print(f"ratio inbound / bare            : {bare / recorded:7.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
