"""A catch-up classified in the reader's worker process records what one process would."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from daemonproc import import_ledger, ledger, mailer_run, set_daemon, wait_for
from test_inbound_chunk import (
    NOW,
    TABLES,
    dump,
    explode_on_marker,
    mailbox,
    open_app,
    pinned_ids,
)

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import IDENTITIES, write_config
from mailer.domain.classify import classify
from mailer.flows.inbound import CHUNK, Chunk, Inbound
from mailer.flows.reading import PART, WINDOW, Reader, read, read_all
from mailer.localservers import LocalMailServers, deliver
from mailer.store import inbound as store_inbound
from mailer.store.db import Store, compress
from mailer.store.inbound import encode_classification


@pytest.fixture
def reader() -> Iterator[Reader]:
    found = Reader()
    if not found.start():
        pytest.skip("no worker process on this machine")
    yield found
    found.close()


def items(mails: list[bytes]) -> list[tuple[int | None, bytes, bool]]:
    return [(uid, raw, uid != 13) for uid, raw in enumerate(mails, 1)]  # 13: header unreadable


async def caught_up(
    inbound: Inbound, mails: list[bytes], size: int, *, durable_each: bool = True
) -> list[str]:
    async def chunks() -> AsyncIterator[Chunk]:
        every = items(mails)
        for start in range(0, len(every), size):
            yield Chunk(every[start : start + size], checkpoint=start + size)

    outcomes: list[str] = []
    async for _chunk, done in inbound.record_chunks(
        "cobros", "INBOX", 1, chunks(), NOW, parallel=True, durable_each=durable_each
    ):
        outcomes += done
    return outcomes


def assert_same_store(expected: App, got: App) -> None:
    """Every table the recording writes holds the same rows in both stores."""
    want, have = dump(expected.store), dump(got.store)
    for table in TABLES:
        assert have[table] == want[table], table


def in_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mails: list[bytes]) -> App:
    pinned_ids(monkeypatch)
    app = open_app(tmp_path)
    every = items(mails)
    for start in range(0, len(every), 4):
        Inbound(app).process_many(
            "cobros", "INBOX", 1, every[start : start + 4], NOW, checkpoint=start + 4
        )
    return app


@pytest.mark.parametrize("size", [1, 4, 100])
def test_the_worker_path_records_what_one_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: Reader, size: int
) -> None:
    mails = mailbox(failing=False)
    alone = in_one_process(tmp_path / "alone", monkeypatch, mails)
    pinned_ids(monkeypatch)
    app = open_app(tmp_path / "paired")
    outcomes = asyncio.run(caught_up(Inbound(app, reader=reader), mails, size))
    assert {"stored", "duplicate", "quarantined", "unrelated"} <= set(outcomes)
    assert_same_store(alone, app)
    # Unreadable mail is quarantined with its bytes, whichever process read it.
    assert b"\x00\x01 not mail at all" in [
        app.store.get_blob(r[0]) for r in app.store.conn.execute(
            "SELECT raw_sha256 FROM inbound WHERE state = 'quarantined'"
        )
    ]  # fmt: skip
    assert app.store.verify_chain() is None
    for each in (alone, app):
        each.store.close()


def test_a_catch_up_waits_for_the_disk_once_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: Reader
) -> None:
    """Chunks followed by another commit without an fsync, the last one with it (which makes
    the earlier ones durable too); the records and the checkpoint are the same either way."""
    mails = mailbox(failing=False)
    pinned_ids(monkeypatch)
    each = open_app(tmp_path / "each")
    asyncio.run(caught_up(Inbound(each, reader=reader), mails, 4))
    commits: list[bool] = []
    transaction = Store.transaction

    def spy(self: Store, *, durable: bool = True) -> contextlib.AbstractContextManager[object]:
        if not self.conn.in_transaction:
            commits.append(durable)
        return transaction(self, durable=durable)

    pinned_ids(monkeypatch)
    app = open_app(tmp_path / "last")
    monkeypatch.setattr(Store, "transaction", spy)
    asyncio.run(caught_up(Inbound(app, reader=reader), mails, 4, durable_each=False))
    chunks = -(-len(mails) // 4)
    assert commits == [False] * (chunks - 1) + [True]
    # The connection is back to waiting for the disk after each quick commit.
    assert app.store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert_same_store(each, app)
    for done in (each, app):
        done.store.close()


def test_the_worker_reads_two_chunks_ahead_and_a_failed_fetch_records_them_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: Reader
) -> None:
    """While a chunk is recorded, the worker has the next two in hand (so neither process
    waits on the other's chunk-to-chunk pace); when fetching fails, what was fetched is
    recorded, in order, before the error is raised."""
    mails = mailbox(failing=False)
    pinned_ids(monkeypatch)
    app = open_app(tmp_path / "store")
    inbound = Inbound(app, reader=reader)
    every = items(mails)
    chunk_of = {id(every[start][1]): start // 4 for start in range(0, 20, 4)}  # by first mail
    steps: list[tuple[str, int]] = []
    submit, process_many = reader.submit, inbound.process_many

    def spy_submit(raws: list[bytes], today: object, ahead: float = 0.0) -> object:
        steps.append(("read", chunk_of[id(raws[0])]))
        return submit(raws, today, ahead)  # type: ignore[arg-type]

    def spy_record(*args: object, **kwargs: object) -> list[str]:
        steps.append(("record", chunk_of[id(args[3][0][1])]))  # type: ignore[index]
        return process_many(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "submit", spy_submit)
    monkeypatch.setattr(inbound, "process_many", spy_record)

    async def chunks() -> AsyncIterator[Chunk]:
        for start in range(0, 20, 4):
            yield Chunk(every[start : start + 4], checkpoint=start + 4)
        raise OSError("connection lost")

    async def run() -> list[int]:
        recorded = []
        async for chunk, _done in inbound.record_chunks(
            "cobros", "INBOX", 1, chunks(), NOW, parallel=True
        ):
            recorded.append(chunk.checkpoint or 0)
        return recorded

    with pytest.raises(OSError, match="connection lost"):
        asyncio.run(run())
    # Every chunk goes to the worker (what it has not started of the first one when that is
    # needed is read here), two ahead of the one recorded.
    assert steps == [
        ("read", 0), ("read", 1), ("read", 2), ("record", 0), ("read", 3), ("record", 1),
        ("read", 4), ("record", 2), ("record", 3), ("record", 4),
    ]  # fmt: skip
    assert store_inbound.checkpoint(app.store, "cobros", "INBOX").last_uid == 20  # type: ignore[union-attr]
    app.store.close()


def test_a_message_that_fails_in_the_recording_is_quarantined_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: Reader
) -> None:
    explode_on_marker(monkeypatch)
    app = open_app(tmp_path / "app")
    outcomes = asyncio.run(caught_up(Inbound(app, reader=reader), mailbox(failing=True), 4))
    assert "quarantined" in outcomes
    rows = app.store.conn.execute(
        "SELECT raw_sha256 FROM inbound WHERE error LIKE '%a bug met this message%'"
    ).fetchall()
    assert len(rows) == 1 and b"explode" in app.store.get_blob(rows[0][0])
    app.store.close()


def kill_workers() -> None:
    workers = multiprocessing.active_children()
    assert workers
    for worker in workers:
        os.kill(worker.pid or 0, signal.SIGKILL)
    for worker in workers:
        worker.join(10)


def test_a_worker_that_dies_mid_chunk_costs_time_not_mail() -> None:
    mails = mailbox(failing=False)
    today = NOW.date()
    reader = Reader()
    assert reader.start()
    try:
        future = reader.submit(mails * 50, today)
        kill_workers()
        got = asyncio.run(reader.result(future, mails * 50, today))
        assert got == [read(raw, today) for raw in mails * 50]
        assert reader._failures == 1  # one death, counted once (each of its parts failed)
        # The next chunk starts a new worker.
        again = reader.submit(mails, today, ahead=1.0)
        assert again is not None
        assert [r.c for r in asyncio.run(reader.result(again, mails, today))] == [
            classify(raw, today=today) for raw in mails
        ]
    finally:
        reader.close()
    assert not multiprocessing.active_children()


def test_parts_the_worker_was_not_given_are_read_here_and_a_dropped_chunk_is_not_read() -> None:
    mails = mailbox(failing=False)
    today = NOW.date()
    many = (mails * 40)[: PART * 6]
    reader = Reader()
    assert reader.start()
    try:
        first = reader.submit(many, today)
        assert first is not None
        # Holding the reader's lock, no part ends and gives the worker the next one: the
        # worker holds WINDOW parts of the first chunk, the rest wait in this process.
        with reader._lock:
            assert sum(p.future is not None for p in first.parts) == WINDOW
            second = reader.submit(mails, today)
            dropped = reader.submit(mails, today)
            assert second is not None and dropped is not None
            assert all(p.future is None for p in second.parts + dropped.parts)
            reader.drop(dropped)
            # Asked for while waiting, the second chunk is taken back and read here.
            got = asyncio.run(reader.result(second, mails, today))
            assert got == [read(raw, today) for raw in mails]
            assert all(p.taken and p.future is None for p in second.parts)
        got = asyncio.run(reader.result(first, many, today))
        assert got == [read(raw, today) for raw in many]
        # Each part of the first chunk was read once: by the worker, or here if it had not
        # been given to the worker when asked for.
        assert all((p.future is not None) != p.taken for p in first.parts)
        assert all(p.future is None for p in dropped.parts)  # never given to the worker
        assert not reader._waiting
        with pytest.raises(ValueError):
            asyncio.run(reader.result(reader.submit(mails, today), mails[:-1], today))
    finally:
        reader.close()


def test_a_worker_that_died_idle_is_replaced_at_the_next_chunk() -> None:
    mails = mailbox(failing=False)
    today = NOW.date()
    reader = Reader()
    assert reader.start()
    try:
        pool = reader._pool
        kill_workers()
        # The executor notices the death by itself; then giving it a part fails at once.
        wait_for(lambda: bool(getattr(pool, "_broken", False)), "the executor to see it")
        handed = reader.submit(mails, today)
        assert handed is not None
        assert asyncio.run(reader.result(handed, mails, today)) == [read(r, today) for r in mails]
        assert reader._failures == 1 and reader._pool is None  # recorded, and let go
        assert reader.start() and reader._pool is not None  # what the next chunk would do
        again = reader.submit(mails * 3, today)
        assert again is not None
        assert asyncio.run(reader.result(again, mails * 3, today)) == [
            read(r, today) for r in mails * 3
        ]
        assert any(p.future is not None and not p.taken for p in again.parts)  # a new worker
    finally:
        reader.close()
    assert not multiprocessing.active_children()


def test_a_dead_worker_costs_time_not_mail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mails = mailbox(failing=False)
    alone = in_one_process(tmp_path / "alone", monkeypatch, mails)
    pinned_ids(monkeypatch)
    app = open_app(tmp_path / "paired")
    reader = Reader()
    assert reader.start()
    kill_workers()
    try:
        asyncio.run(caught_up(Inbound(app, reader=reader), mails, 4))
    finally:
        reader.close()
    assert_same_store(alone, app)
    assert not multiprocessing.active_children()
    for each in (alone, app):
        each.store.close()


def test_no_worker_at_all_reads_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mails = mailbox(failing=False)
    alone = in_one_process(tmp_path / "alone", monkeypatch, mails)
    pinned_ids(monkeypatch)
    app = open_app(tmp_path / "paired")
    reader = Reader()
    reader.close()  # a closed reader starts nothing
    asyncio.run(caught_up(Inbound(app, reader=reader), mails, 4))
    assert not multiprocessing.active_children()
    assert_same_store(alone, app)
    for each in (alone, app):
        each.store.close()


def test_the_worker_makes_what_the_recording_would() -> None:
    mails = mailbox(failing=False)
    today = NOW.date()
    for raw, (digest, c, packed, row) in zip(mails, read_all(mails, today, ahead=5), strict=True):
        assert (digest, c) == read(raw, today)[:2]
        assert c == classify(raw, today=today)
        if packed is not None:
            assert packed == compress(raw) and row == encode_classification(c.to_json())
    assert sum(r.packed is not None for r in read_all(mails, today, ahead=5)) == 5


def test_closing_leaves_no_worker_and_an_orphan_exits() -> None:
    reader = Reader()
    assert reader.start()
    assert multiprocessing.active_children()
    reader.close()
    assert not multiprocessing.active_children()
    # A daemon killed outright (no close): its worker notices and exits on its own.
    script = (
        "import sys, multiprocessing\n"
        "from mailer.flows.reading import Reader\n"
        "if __name__ == '__main__':\n"
        "    r = Reader(); assert r.start()\n"
        "    print(*[p.pid for p in multiprocessing.active_children()], flush=True)\n"
        "    sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    ) as child:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert pids
        child.kill()
    end = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent, the killed child, is gone too).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_the_daemon_catches_up_with_a_worker_and_sigterm_leaves_none(
    tmp_path: Path, servers: LocalMailServers
) -> None:
    config = write_config(tmp_path, servers, grace_seconds=0)
    set_daemon(config, interval_seconds=1, reconcile_grace_seconds=0)
    import_ledger(config, ledger("D1"))
    settings = load_settings(config)
    # Mail that arrived while mailer was down, more than one chunk of it: a catch-up.
    inbox = servers.mailbox_path(IDENTITIES["cobros"][0])
    count = CHUNK + 50
    for n in range(count):
        deliver(
            inbox,
            (
                f"From: D1 <d1@debtor.example>\r\nTo: {IDENTITIES['cobros'][0]}\r\n"
                f"Subject: Re: factura {n}\r\nMessage-ID: <catch.{n}@debtor.example>\r\n"
                "Date: Tue, 06 Jan 2026 10:00:00 +0100\r\n\r\n"
                f"Pagaremos la factura el dia 20 ({n}).\r\n"
            ).encode(),
        )

    def stored() -> int:
        store = Store.open(settings.database)
        try:
            return int(store.conn.execute("SELECT count(*) FROM inbound").fetchone()[0])
        finally:
            store.close()

    workers: set[int] = set()
    with mailer_run(config, tmp_path / "run.log") as child:

        def caught_up() -> bool:
            workers.update(_children(child.pid))
            return stored() == count

        wait_for(caught_up, f"{count} messages recorded")
        assert workers, "the catch-up ran without the reader's worker"
        child.send_signal(signal.SIGTERM)
        assert child.wait(120) == 0
    assert not any(_alive(p) for p in workers)


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` and that are multiprocessing workers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text(encoding="ascii", errors="replace")
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in command:
            found.append(int(entry))
    return found
