"""Opening the database: who may open it, and how commits reach the disk."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.errors import ConfigError
from mailer.store.db import Store

NOW = datetime(2026, 1, 7, 9, 30, tzinfo=UTC)
NOBODY = 65534  # the conventional "nobody": any user but root will do


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_may_not_open_the_service_users_database(tmp_path: Path) -> None:
    path = tmp_path / "mailer.db"
    Store.open(path).close()
    for file in tmp_path.iterdir():
        os.chown(file, NOBODY, NOBODY)
    before = sorted((f.name, f.stat().st_uid) for f in tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"mailer\.db: belongs to user \S+: run mailer as that"):
        Store.open(path)
    # Refused before SQLite touched anything: no file of root's next to the database.
    assert sorted((f.name, f.stat().st_uid) for f in tmp_path.iterdir()) == before
    # Root's own database (a test, a one-user install) opens as always.
    Store.open(tmp_path / "root.db").close()


def _synchronous(store: Store) -> int:
    return int(store.conn.execute("PRAGMA synchronous").fetchone()[0])


def test_a_commit_that_need_not_wait_for_the_disk_leaves_the_next_one_durable(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "mailer.db")
    assert _synchronous(store) == 2  # FULL: a committed claim survives a power cut
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    with store.transaction(durable=False):
        store.append_event(NOW, "planned")
        with store.transaction():  # nested: joins the outer one, whatever it asks
            store.append_event(NOW, "nested")
    assert seen[0] == "PRAGMA synchronous=NORMAL" and seen[-1] == "PRAGMA synchronous=2"
    assert seen.count("COMMIT") == 1
    assert _synchronous(store) == 2
    # Also after a rollback.
    with pytest.raises(RuntimeError), store.transaction(durable=False):
        store.append_event(NOW, "lost")
        raise RuntimeError("boom")
    assert _synchronous(store) == 2
    assert [e["kind"] for e in store.events()] == ["planned", "nested"]
    assert store.verify_chain() is None


def test_the_wal_is_copied_back_when_the_daemon_says_not_every_thousand_pages(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "mailer.db")
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 16384
    with store.transaction():
        for n in range(3000):  # well past SQLite's default 1,000 pages of WAL
            store.put_blob(os.urandom(2048) + str(n).encode())
    database = tmp_path / "mailer.db"
    # Written to the WAL, not yet copied back: the database file has not grown.
    assert database.stat().st_size < 1_000_000
    store.checkpoint()
    assert database.stat().st_size > 6_000_000  # all of it in the database now
