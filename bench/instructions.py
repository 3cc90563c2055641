"""Instructions a message spent recording or reading inbound mail, counted by valgrind (callgrind).

    .venv/bin/python bench/instructions.py [--part record|read|both] [--messages 1000] [--debtors N]

On a shared machine the wall clock of the same run varies by a third or more, too much to see a
change of a few per cent; callgrind counts instructions, the same on every run of the same code
and input, whatever else the machine does. It is a proxy for CPU time (cache misses, system
calls and waits on the disk are not in it), for comparing two versions of the code.

This process builds the store and the messages as bench/inbound.py does (not counted), then runs
itself under callgrind, which counts only the measured call: ``read_all`` over the messages
(hash and classify, as the catch-up's worker does), or ``Inbound.process_many`` chunk by chunk
with the classifications made beforehand (the recording process's share; half of each chunk's
blobs and rows made ahead, as the worker's ``ahead`` share does).
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# callgrind counts inside this C function only: the measured call runs through it, nothing
# else in these scripts does.
TOGGLE = "starmap_next"


def prepare(work: Path, messages: int, debtors: int) -> None:
    from inbound import corpus, open_store  # bench/inbound.py

    app, addresses = open_store(work / "store", debtors, messages)
    app.store.checkpoint()
    app.store.close()
    mail = corpus(addresses, messages, spread=bool(debtors))
    (work / "messages.pickle").write_bytes(pickle.dumps(mail))


def measure(work: Path, part: str) -> None:
    """Run under callgrind: the one measured call goes through itertools.starmap."""
    from inbound import NOW

    from mailer.flows.reading import read_all

    mail: list[bytes] = pickle.loads((work / "messages.pickle").read_bytes())
    today = NOW.date()
    if part == "read":
        read_all(mail[:20], today, 0)  # imports and first-use caches, not counted
        list(itertools.starmap(read_all, [(mail, today, 0)]))
        return
    from mailer.app import App
    from mailer.config import load_settings
    from mailer.flows.inbound import CHUNK, Inbound

    app = App.open(load_settings(work / "store" / "mailer.toml"))
    chunks = []
    for start in range(0, len(mail), CHUNK):
        raws = mail[start : start + CHUNK]
        items = [(None, raw, True) for raw in raws]
        chunks.append((items, read_all(raws, today, len(raws) // 2)))
    inbound = Inbound(app)

    def record() -> None:
        for items, reads in chunks:
            inbound.process_many("cobros", "INBOX", 1, items, NOW, read=reads)

    list(itertools.starmap(record, [()]))
    app.store.close()


def count(work: Path, part: str) -> int:
    """Instructions of one measured run, on a copy of the prepared store."""
    run = work / f"run-{part}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(work / "store", run / "store")
    shutil.copy(work / "messages.pickle", run / "messages.pickle")
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--toggle-collect={TOGGLE}",
         f"--callgrind-out-file={work / f'callgrind.{part}.out'}",
         sys.executable, __file__, "--measure", str(run), "--part", part],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"valgrind gave no count:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("record", "read", "both"), default="both")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--debtors", type=int, default=0)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help="keep the store and callgrind files here")
    args = parser.parse_args()
    os.environ.setdefault("MAILER_DEMO_PASSWORD", "unused")
    if args.measure is not None:
        measure(args.measure, args.part)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prepare(work, args.messages, args.debtors)
        parts = ("read", "record") if args.part == "both" else (args.part,)
        store = f"{args.debtors} generated debtors" if args.debtors else "the sample ledger"
        print(f"{args.messages} messages, {store}; callgrind instruction counts")
        for part in parts:
            total = count(work, part)
            print(f"{part:7}: {total / args.messages / 1000:8.0f} K instructions a message")


if __name__ == "__main__":
    main()
