"""Inbound throughput: messages classified and recorded per second, against bare parsing.

    .venv/bin/python bench/inbound.py [--messages 5000] [--debtors N]

Builds a store with the sample ledger, then a mailbox's worth of case-related mail (replies in
Spanish and English, out-of-office answers, Postfix-style DSNs, each unique) and runs, on the
same messages in the same run:
  * bare: ``email.message_from_bytes`` on each message (the floor any reader pays);
  * classify: mailer's pure classifier alone;
  * inbound, one process: ``Inbound.process_many`` per chunk of 200 — classify, match to a
    case, store the raw bytes, record the events and act on the case, one commit a chunk;
  * inbound, catch-up: ``Inbound.record_chunks``, the path the watcher takes when a folder has
    more than one chunk of new mail (after downtime): the same recording, with each next chunk
    classified in the reader's worker process (``mailer.flows.reading``) meanwhile. The worker
    is started before the clock starts, as it is in a daemon after its first catch-up; the
    start-up time is printed.
The two inbound passes write to two stores built alike, and must leave the same event chain.
Prints messages/second of each and the ratios to bare (target for the catch-up: >= 0.5). The
machine may be shared: each of ``--rounds`` rounds runs all four on the same messages, the
inbound passes on fresh stores of their own, and the best round of each measure counts (the
catch-up's every round is printed too), with the inbound passes' CPU time (the catch-up: of this
process and of the worker) next to the wall clock.

By default the store is the sample ledger: 36 debtors, so each case gets ~140 of the messages,
matched by the sender's address (the store has sent nothing they could answer), and most find
their case already paused or in review. ``--debtors N`` builds a store of N generated debtors
instead, with a sent reminder for each message to answer (the message threads to it by
In-Reply-To), spread over the cases: closer to a real mailbox, where a case gets a message or
two and most of them change it (a pause: more writes per message).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import email
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procstat import children_cpu  # bench/, this script's directory

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import write_config
from mailer.demo_debtors import auto_reply, delivery_report, reply_to
from mailer.domain.classify import classify
from mailer.domain.models import MessageState
from mailer.flows.inbound import CHUNK, Chunk, Inbound
from mailer.flows.reading import Reader
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


def open_store(tmp: Path, debtors: int, count: int) -> tuple[App, list[str]]:
    """A store of the sample ledger (or ``debtors`` generated ones, with a sent reminder for
    each message to answer); the addresses the messages come from."""
    tmp.mkdir()
    nowhere = SimpleNamespace(
        smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1", imap_port=9
    )
    app = App.open(load_settings(write_config(tmp, nowhere)))  # type: ignore[arg-type]
    ledger = SAMPLE_DIR / "invoices.csv"
    if debtors:
        ledger = generated_ledger(tmp / "invoices.csv", debtors)
    import_invoices(
        app.store,
        parse_invoices(ledger),
        NOW - timedelta(days=30) if debtors else NOW,
        "sample",
        app.settings.profiles,
    )
    if debtors:
        with app.store.transaction():
            addresses = sent_reminders(app, count)
    else:
        addresses = [r[0] for r in app.store.conn.execute("SELECT address FROM contacts")]
    # The WAL as the daemon's housekeeping leaves it between ticks: copied into the database.
    # Else building 5,000 debtors leaves ~5,000 pages in it, and SQLite's automatic checkpoint
    # copies them (with the catch-up's own) in the middle of the catch-up.
    app.store.checkpoint()
    return app, addresses


async def catch_up(inbound: Inbound, messages: list[bytes]) -> list[str]:
    """The watcher's catch-up path: ``record_chunks`` over chunks of ``CHUNK`` (as
    ``Inbound.sync`` hands it a folder's backlog, here without the IMAP round trips; as there,
    only the last chunk's commit waits for the disk, unless bounces are moved)."""

    async def chunks() -> AsyncIterator[Chunk]:
        for start in range(0, len(messages), CHUNK):
            yield Chunk([(None, raw, True) for raw in messages[start : start + CHUNK]])

    outcomes: list[str] = []
    async for _chunk, done in inbound.record_chunks(
        "cobros", "INBOX", 1, chunks(), NOW, parallel=True, durable_each=False
    ):
        outcomes += done
    return outcomes


def one_process(inbound: Inbound, messages: list[bytes]) -> list[str]:
    """``process_many`` per chunk, classifying in this process."""
    outcomes: list[str] = []
    for start in range(0, len(messages), CHUNK):
        chunk = [(None, raw, True) for raw in messages[start : start + CHUNK]]
        outcomes += inbound.process_many("cobros", "INBOX", 1, chunk, NOW)
    return outcomes


def inbound_round(
    tmp: Path, debtors: int, count: int, reader: Reader
) -> tuple[list[bytes], tuple[float, float], tuple[float, float, float | None, float], str, int]:
    """One round of both inbound passes, each on a fresh store of its own built alike: the
    messages, (wall, CPU) of each, the catch-up's worker CPU and the checkpoint it leaves."""
    tmp.mkdir()
    apps = []
    for name in ("one", "pair"):
        app, addresses = open_store(tmp / name, debtors, count)
        apps.append(app)
    messages = corpus(addresses, count, spread=bool(debtors))
    # One process: what a watcher does with a chunk or two of new mail.
    started, cpu = time.perf_counter(), time.process_time()
    outcomes = one_process(Inbound(apps[0]), messages)
    alone = (time.perf_counter() - started, time.process_time() - cpu)
    # The catch-up path, with the reader's worker already up (as the daemon's is by then).
    started, cpu, helper = time.perf_counter(), time.process_time(), children_cpu()
    caught_up = asyncio.run(catch_up(Inbound(apps[1], reader=reader), messages))
    wall, own = time.perf_counter() - started, time.process_time() - cpu
    after = children_cpu()
    worker_cpu = after - helper if after is not None and helper is not None else None
    # What the catch-up left in the WAL, copied back as the daemon does after its tick.
    started = time.perf_counter()
    apps[1].store.checkpoint()
    checkpoint = time.perf_counter() - started
    assert caught_up == outcomes, "the two paths must record the same"
    same = [
        a.store.conn.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        for a in apps
    ]
    assert same[0] == same[1], "the two paths must leave the same event chain"
    cases = apps[0].store.conn.execute("SELECT count(*) FROM cases").fetchone()[0]
    for app in apps:
        app.store.close()
    summary = f"{len(messages)} messages ({outcomes.count('stored')} recorded against a case)"
    return messages, alone, (wall, own, worker_cpu, checkpoint), summary, cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--debtors", type=int, default=0, help="a generated store of this many debtors"
    )
    args = parser.parse_args()
    os.environ.setdefault("MAILER_DEMO_PASSWORD", "unused")
    reader = Reader()
    started = time.perf_counter()
    worker = reader.start()
    spawn = time.perf_counter() - started
    bare = classified = float("inf")
    alone: tuple[float, float] = (float("inf"), 0.0)
    paired: tuple[float, float, float | None, float] = (float("inf"), 0.0, None, 0.0)
    walls: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            messages, one, two, summary, cases = inbound_round(
                Path(tmp) / str(n), args.debtors, args.messages, reader
            )
            alone, paired = min(alone, one), min(paired, two, key=lambda t: t[0])
            walls.append(two[0])

            started = time.perf_counter()
            for raw in messages:
                email.message_from_bytes(raw)
            bare = min(bare, time.perf_counter() - started)

            started = time.perf_counter()
            for raw in messages:
                classify(raw, today=NOW.date())
            classified = min(classified, time.perf_counter() - started)
    reader.close()

    n = args.messages
    per = 1e6 / n
    wall, own, worker_cpu, checkpoint = paired
    print(f"{summary} on {cases} cases, {os.cpu_count()} cores, best of {args.rounds} rounds")
    print(f"bare email.message_from_bytes     : {n / bare:7.0f} msg/s  {bare * per:5.0f} us/msg")
    print(
        f"mailer classify only              : {n / classified:7.0f} msg/s  {classified * per:5.0f} us/msg"
    )
    print(
        f"inbound, one process              : {n / alone[0]:7.0f} msg/s  {alone[0] * per:5.0f} us/msg"
        f"  (recording {(alone[0] - classified) * per:.0f}, CPU {alone[1] * per:.0f})"
    )
    print(
        f"inbound, catch-up (worker reads)  : {n / wall:7.0f} msg/s  {wall * per:5.0f} us/msg"
        f"  (CPU: this process {own * per:.0f}, "
        + (
            f"worker {worker_cpu * per:.0f}; started in {spawn * 1000:.0f} ms before)"
            if worker and worker_cpu is not None
            else "no worker: in-process)"
        )
    )
    print(
        "  catch-up, every round            : "
        + ", ".join(f"{w * per:.0f}" for w in walls)
        + " us/msg"
    )
    print(f"ratio classify / bare             : {bare / classified:7.2f}")
    print(f"ratio inbound one process / bare  : {bare / alone[0]:7.2f}")
    print(
        f"  WAL checkpoint after the catch-up (the daemon's, between ticks): {checkpoint * 1000:.0f} ms"
        f" ({checkpoint * per:.0f} us/msg)"
    )
    print(f"ratio inbound catch-up / bare     : {bare / wall:7.2f}  (target >= 0.5)")
    print(f"  the same, with that checkpoint  : {bare / (wall + checkpoint):7.2f}")


if __name__ == "__main__":
    main()
