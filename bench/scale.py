"""Scale benchmark: import a 100k-debtor / 300k-invoice ledger, plan every case, peak RSS per phase."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: `python bench/scale.py`
    sys.path.insert(0, str(ROOT))

from mailer.app import App, Rules  # noqa: E402
from mailer.config import load_settings  # noqa: E402
from mailer.domain.models import DEFAULT_PROFILES, DebtorKind  # noqa: E402
from mailer.ledger import InvoiceRow, read_invoices  # noqa: E402
from mailer.sample import INVOICE_COLUMNS, generate  # noqa: E402
from mailer.store.cases import FACTS_SQL, load_cases, load_history, load_plan_facts  # noqa: E402
from mailer.store.db import Store, iso  # noqa: E402
from mailer.store.ledger import import_invoices  # noqa: E402

START = date(2026, 1, 5)
IMPORT_AT = datetime(2026, 3, 2, 7, tzinfo=UTC)
PLAN_AT = datetime(2026, 3, 20, 12, tzinfo=UTC)
CHUNK = 2000  # cases planned per batch: the pass streams, it never holds every case at once

TARGET_IMPORT_S = 20.0
TARGET_PLAN_S_PER_100K = 1.0
TARGET_RSS_MB = 150.0


# --- the ledger ----------------------------------------------------------------------------


def ledger_rows(debtors: int, per_debtor: int, seed: int = 2026) -> Iterator[dict[str, str]]:
    """Exactly ``per_debtor`` invoices for each of ``debtors`` debtors, as sample.py shapes them.

    The debtors (names, addresses, kinds, places) are sample.generate's, one invoice each; their
    invoices are then spread over 75 days with amounts incl. 21 % VAT and 30-day terms.
    """
    firsts, _ = generate(debtors, 1, start=START, seed=seed, paid_share=0.0)
    rng = random.Random(seed + 1)
    number = 0
    for first in firsts:
        for _ in range(per_debtor):
            number += 1
            issued = START + timedelta(days=rng.randint(0, 75))
            net = Decimal(rng.randrange(8000, 480000)) / 100
            yield {
                **first,
                "invoice_number": f"F{issued.year}-{number:07d}",
                "amount": str((net * Decimal("1.21")).quantize(Decimal("0.01"))),
                "issue_date": issued.isoformat(),
                "due_date": (issued + timedelta(days=30)).isoformat(),
            }


def write_ledger(path: Path, debtors: int, per_debtor: int) -> int:
    """Write the invoices CSV row by row (the generator is not what we measure); returns rows."""
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INVOICE_COLUMNS)
        writer.writeheader()
        for row in ledger_rows(debtors, per_debtor):
            writer.writerow(row)
            count += 1
    return count


# --- phases, each run in its own process so each has its own peak RSS ----------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Timed:
    """Wraps the stream of rows to add up the time spent producing them (reading, checking)."""

    def __init__(self, rows: Iterable[InvoiceRow]) -> None:
        self.rows = iter(rows)
        self.spent = 0.0

    def __iter__(self) -> Iterator[InvoiceRow]:
        clock = time.perf_counter
        while True:
            began = clock()
            try:
                row = next(self.rows)
            except StopIteration:
                return
            finally:
                self.spent += clock() - began
            yield row


def run_import(csv_path: Path, db_path: Path) -> dict[str, Any]:
    """read_invoices streamed into import_invoices, file-backed WAL database, as `mailer import`."""
    store = Store.open(db_path)
    rows = Timed(read_invoices(csv_path))
    cpu = time.process_time()
    began = time.perf_counter()
    report = import_invoices(store, rows, IMPORT_AT, csv_path.name, DEFAULT_PROFILES)
    done = time.perf_counter()
    cpu = time.process_time() - cpu
    counts = {
        table: store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("debtors", "invoices", "contacts", "cases", "events")
    }
    chain_ok = store.verify_chain() is None
    store.close()
    return {
        "parse_s": rows.spent,
        "store_s": done - began - rows.spent,
        "total_s": done - began,
        "cpu_s": cpu,
        "added": report.added,
        "cases_opened": report.cases_opened,
        "counts": counts,
        "chain_ok": chain_ok,
    }


def run_import_floor(csv_path: Path, db_path: Path) -> dict[str, Any]:
    """The floor: csv.reader + one executemany of the same rows into an equivalent table."""
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    columns = ", ".join(f"{c} TEXT" for c in INVOICE_COLUMNS[1:])
    conn.execute(f"CREATE TABLE invoices (invoice_number TEXT PRIMARY KEY, {columns})")
    began = time.perf_counter()
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        conn.execute("BEGIN IMMEDIATE")
        marks = ", ".join("?" * len(INVOICE_COLUMNS))
        conn.executemany(f"INSERT INTO invoices VALUES ({marks})", reader)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - began
    rows = conn.execute("SELECT count(*) FROM invoices").fetchone()[0]
    conn.close()
    return {"total_s": elapsed, "rows": rows}


def open_app(db_path: Path) -> App:
    """The App the daemon would run (examples/mailer.toml: campaigns/, templates/), on ``db_path``.

    Its holiday calendars are built before any timing (once per place, ~0.25 s, as the daemon
    does at its first pass), and printed apart.
    """
    settings = load_settings(ROOT / "examples" / "mailer.toml")
    return App(settings, Store.open(db_path), Rules.load(settings))


def warm_calendars(app: App) -> float:
    """Build every place's HolidayCalendar now; returns the seconds it took."""
    began = time.perf_counter()
    for country, region in app.store.conn.execute("SELECT DISTINCT country, region FROM debtors"):
        app.calendar(country, region)
    for kind in DebtorKind:
        app.campaign_for_kind(kind)
    return time.perf_counter() - began


def due_ids(store: Store, now: datetime) -> list[int]:
    """The cases plan_due takes (without its per-pass limit: a full pass takes all)."""
    return [
        r[0]
        for r in store.conn.execute(
            "SELECT id FROM cases WHERE closed_at IS NULL"
            " AND (next_action_at IS NULL OR next_action_at <= ?) ORDER BY id",
            (iso(now),),
        )
    ]


def run_plan(db_path: Path, now: datetime = PLAN_AT) -> dict[str, Any]:
    """One full planning pass as the daemon's plan_due reads and decides: every due case's
    facts (``load_plan_facts``) and history, ``App.plan_facts`` on each.

    Timed apart: getting each chunk's facts and history ("load"), and planning the chunk
    ("plan"); the total is the wall clock of the whole pass, choosing the due cases included.
    The writes plan_due then makes (the next look of each case, rendering and storing the
    messages due) are not part of the pass measured here: bench/send.py measures those.
    """
    app = open_app(db_path)
    calendars_s = warm_calendars(app)
    actions: Counter[str] = Counter()
    planned = 0
    load = planning = 0.0
    clock = time.perf_counter
    cpu = time.process_time()
    began = clock()
    facts = load_plan_facts(app.store, due_ids(app.store, now), chunk=CHUNK)
    while True:
        t0 = clock()
        batch = list(itertools.islice(facts, CHUNK))
        if not batch:
            load += clock() - t0
            break
        history = load_history(app.store, [f.id for f in batch])
        t1 = clock()
        for f in batch:
            action = app.plan_facts(f, history.get(f.id, []), now)
            actions[type(action).__name__] += 1
        planned += len(batch)
        load += t1 - t0
        planning += clock() - t1
    total = clock() - began
    cpu = time.process_time() - cpu
    app.store.close()
    return {
        "total_s": total,
        "cpu_s": cpu,
        "plan_s": planning,
        "load_s": load,
        "calendars_s": calendars_s,
        "planned": planned,
        "actions": dict(actions),
    }


def run_plan_cases(db_path: Path, now: datetime = PLAN_AT) -> dict[str, Any]:
    """The previous planning pass, for comparison: whole Cases (``load_cases``: debtor,
    contacts, every invoice and payment as objects), ``App.plan`` on each."""
    app = open_app(db_path)
    warm_calendars(app)
    actions: Counter[str] = Counter()
    load = 0.0
    clock = time.perf_counter
    cpu = time.process_time()
    began = clock()
    cases = load_cases(app.store, chunk=CHUNK)
    while True:
        t0 = clock()
        batch = list(itertools.islice(cases, CHUNK))
        history = load_history(app.store, [c.id for c in batch]) if batch else {}
        load += clock() - t0
        if not batch:
            break
        for case in batch:
            actions[type(app.plan(case, history.get(case.id, []), now)).__name__] += 1
    total = clock() - began
    cpu = time.process_time() - cpu
    app.store.close()
    return {"total_s": total, "cpu_s": cpu, "load_s": load, "actions": dict(actions)}


def write_outbox(db_path: Path, per_case: int, now: datetime = PLAN_AT) -> dict[str, Any]:
    """Give every open case ``per_case`` sent messages (steps 0, 1, ...), the last one 6 days
    before ``now`` give or take a day, each at its own minute: a store some weeks into its
    campaigns, where each case's history is read and the gap counts from its own last send."""
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    rng = random.Random(7)
    stamp = iso(now)
    rows = []
    for (case_id,) in conn.execute("SELECT id FROM cases WHERE closed_at IS NULL ORDER BY id"):
        last = now - timedelta(days=6, minutes=rng.randint(-1440, 1440))
        for step in range(per_case):
            sent = iso(last - timedelta(days=7 * (per_case - 1 - step)))
            rows.append(
                (case_id, step, f"step{step}", "smtp", "billing", f"<{case_id}.{step}@bench>",
                 "sent", sent, "[]", "", sent, stamp, stamp)
            )  # fmt: skip
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO messages (case_id, step, step_name, channel, identity, message_id, state,"
        " scheduled_at, recipients, subject, sent_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    conn.close()
    return {"messages": len(rows)}


def run_load_floor(db_path: Path) -> dict[str, Any]:
    """The floors for loading: the same SQL fetched as plain tuples, no objects built.

    "facts": the facts statement, a chunk of case ids at a time as load_plan_facts runs it, and the
    history's; "cases": the rows load_cases reads (cases, contacts, invoices, payments, history).
    """
    conn = sqlite3.connect(str(db_path))
    ids = [r[0] for r in conn.execute("SELECT id FROM cases WHERE closed_at IS NULL ORDER BY id")]
    began = time.perf_counter()
    facts_rows = 0
    for start in range(0, len(ids), CHUNK):
        part = ids[start : start + CHUNK]
        where = f"c.id IN ({', '.join('?' * len(part))})"
        facts_rows += len(conn.execute(FACTS_SQL.format(where=where), part).fetchall())
        history = "SELECT case_id, step, coalesce(sent_at, scheduled_at), state FROM messages"
        conn.execute(f"{history} WHERE case_id IN ({', '.join('?' * len(part))})", part).fetchall()
    facts_s = time.perf_counter() - began
    began = time.perf_counter()
    rows = 0
    for sql in (
        "SELECT c.id, c.status, c.paused_until, d.id, d.name, d.kind, d.lang, d.country,"
        " d.region, d.timezone FROM cases c JOIN debtors d ON d.id = c.debtor_id"
        " WHERE c.closed_at IS NULL ORDER BY c.id",
        "SELECT t.debtor_id, t.address, t.status FROM contacts t JOIN cases c"
        " ON c.debtor_id = t.debtor_id WHERE c.closed_at IS NULL AND t.position >= 0",
        "SELECT i.number, i.debtor_id, i.currency, i.amount, i.issue_date, i.due_date,"
        " i.pdf_path, i.payment_link FROM invoices i JOIN cases c ON c.debtor_id = i.debtor_id"
        " WHERE c.closed_at IS NULL",
        "SELECT invoice_number, paid_on, amount FROM payments",
        "SELECT case_id, step, coalesce(sent_at, scheduled_at), state FROM messages",
    ):
        for _ in conn.execute(sql):
            rows += 1
    elapsed = time.perf_counter() - began
    conn.close()
    return {"total_s": elapsed, "rows": rows, "facts_s": facts_s, "facts_rows": facts_rows}


PHASES = {
    "generate": lambda a: {"rows": write_ledger(a.csv, a.debtors, a.invoices)},
    "import": lambda a: run_import(a.csv, a.db),
    "import-floor": lambda a: run_import_floor(a.csv, a.db),
    "plan": lambda a: run_plan(a.db),
    "plan-cases": lambda a: run_plan_cases(a.db),
    "load-floor": lambda a: run_load_floor(a.db),
    "outbox": lambda a: write_outbox(a.db, a.outbox),
}


def phase_main(args: argparse.Namespace) -> None:
    baseline = peak_rss_mb()  # the interpreter and mailer's imports, before any work
    result = PHASES[args.phase](args)
    result["rss_mb"] = peak_rss_mb()
    result["baseline_rss_mb"] = baseline
    print(json.dumps(result))


def run_phase(phase: str, **options: object) -> dict[str, Any]:
    # A child inherits its parent's peak RSS on Linux: the parent only waits and prints, so it
    # stays below every child's peak (and generates the ledger in a child of its own).
    command = [sys.executable, __file__, "--phase", phase]
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the report ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--debtors", type=int, default=100_000)
    parser.add_argument("--invoices", type=int, default=3, help="invoices per debtor, exactly")
    parser.add_argument("--db", type=Path, help="database file (default: in the temp dir)")
    parser.add_argument("--passes", type=int, default=3, help="planning passes, median reported")
    parser.add_argument(
        "--plan-only", action="store_true", help="no import: plan the cases already in --db"
    )
    parser.add_argument(
        "--outbox",
        type=int,
        default=0,
        help="before planning, give every case this many sent messages (changes --db)",
    )
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase_main(args)
        return

    imp: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
        work = Path(tmp)
        db_path = args.db or work / "mailer.db"
        if args.plan_only:
            if not db_path.exists():
                sys.exit(f"--plan-only: {db_path} does not exist")
        elif db_path.exists():
            sys.exit(f"{db_path} exists: the benchmark imports into a fresh database")
        else:
            imp, floor_imp = import_phases(args, work, db_path)
        if args.outbox:
            sent = run_phase("outbox", db=db_path, outbox=args.outbox)["messages"]
            print(f"outbox: {sent:,} sent messages written, {args.outbox} a case")
        passes = sorted(
            (run_phase("plan", db=db_path) for _ in range(max(1, args.passes))),
            key=lambda r: float(r["total_s"]),
        )
        old = run_phase("plan-cases", db=db_path)
        floor_load = run_phase("load-floor", db=db_path)

    planned = passes[len(passes) // 2]  # the median pass (the upper one of an even count)
    print(f"plan:   {planned['planned']:,} cases planned: {planned['actions']}")
    per_100k = 100_000 / max(planned["planned"], 1)
    plan_target = TARGET_PLAN_S_PER_100K / per_100k
    rows: list[tuple[str, float, str, float | None, float | None]] = []
    if imp is not None:
        rows += [
            ("import (read + store)", imp["total_s"], "s", TARGET_IMPORT_S, floor_imp["total_s"]),
            ("  read + check the CSV", imp["parse_s"], "s", None, None),
            ("  store + events + cases", imp["store_s"], "s", None, None),
        ]
    rows += [
        ("plan pass, load + plan", planned["total_s"], "s", plan_target, None),
        ("  load facts + history", planned["load_s"], "s", None, floor_load["facts_s"]),
        ("  plan only (no load)", planned["plan_s"], "s", plan_target, None),
        ("  best of the passes", passes[0]["total_s"], "s", plan_target, None),
        ("old pass: whole Cases", old["total_s"], "s", plan_target, None),
        ("  load cases + history", old["load_s"], "s", None, floor_load["total_s"]),
    ]
    if imp is not None:
        rows.append(("peak RSS, import", imp["rss_mb"], "MB", TARGET_RSS_MB, floor_imp["rss_mb"]))
    rows += [
        ("peak RSS, plan pass", planned["rss_mb"], "MB", TARGET_RSS_MB, floor_load["rss_mb"]),
        ("peak RSS, old pass", old["rss_mb"], "MB", TARGET_RSS_MB, floor_load["rss_mb"]),
    ]
    print()
    print(
        f"{'measure':<26}{'value':>10}  {'target':>9}  {'/target':>8}  {'floor':>9}  {'/floor':>7}"
    )
    for name, value, unit, target, floor in rows:
        line = f"{name:<26}{value:>8.2f} {unit:<2}"
        line += f"  {target:>6.2f} {unit:<2}  {value / target:>7.2f}x" if target else " " * 22
        line += f"  {floor:>6.2f} {unit:<2}  {value / floor:>6.1f}x" if floor else ""
        print(line.rstrip())
    print()
    totals = ", ".join(f"{p['total_s']:.2f}" for p in passes)
    print(
        f"plan pass: {len(passes)} passes, each in a process of its own: {totals} s; the median"
        " is shown. A pass = choosing the due cases, load_plan_facts + load_history a chunk of"
        f" {CHUNK:,} at a time, App.plan_facts on each; the old pass = load_cases + App.plan."
    )
    print(
        "floors, measured in this run: import = csv.reader + one executemany of the same rows"
        " into one equivalent table (WAL, synchronous=FULL); load = the same SQL fetched as"
        " tuples (facts: the facts and history statements; cases: the rows load_cases reads);"
        " RSS = the floor processes' own peaks. Holiday calendars (built once per place, not"
        f" counted above): {planned['calendars_s']:.2f} s. Interpreter + imports alone:"
        f" {planned['baseline_rss_mb']:.0f} MB (plan)."
    )
    cpu = f"import {imp['cpu_s']:.2f} s, " if imp is not None else ""
    print(
        f"CPU time of the phase's process: {cpu}plan pass {planned['cpu_s']:.2f} s, old pass"
        f" {old['cpu_s']:.2f} s (wall time above; the rest is waiting: fsync, other processes)."
    )
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.1f} at the end"
    )


def import_phases(
    args: argparse.Namespace, work: Path, db_path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generate the ledger, import it, and measure the import's floor; prints what it did."""
    csv_path = work / "invoices.csv"
    began = time.perf_counter()
    count = run_phase("generate", csv=csv_path, debtors=args.debtors, invoices=args.invoices)[
        "rows"
    ]
    size_mb = csv_path.stat().st_size / 1e6
    print(
        f"ledger: {args.debtors:,} debtors, {count:,} invoices, {size_mb:.1f} MB CSV"
        f" (generated in {time.perf_counter() - began:.1f} s)"
    )
    imp = run_phase("import", csv=csv_path, db=db_path)
    floor_imp = run_phase("import-floor", csv=csv_path, db=work / "floor.db")
    counts = imp["counts"]
    print(
        f"import: {imp['added']:,} invoices, {counts['debtors']:,} debtors,"
        f" {counts['contacts']:,} contacts, {counts['cases']:,} cases, {counts['events']:,} events;"
        f" chain verifies: {imp['chain_ok']}"
    )
    return imp, floor_imp


if __name__ == "__main__":
    main()
