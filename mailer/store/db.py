"""The SQLite database: opening it (WAL), migrations in code, and the append-only event chain."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pwd
import secrets
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from mailer.errors import ConfigError
from mailer.store.chain import GENESIS, ChainBreak, event_hash, first_break, sha256_hex
from mailer.store.schema import MIGRATIONS

__all__ = ["GENESIS", "EventItem", "Store", "canonical", "event_hash", "iso"]

# (kind, data, case_id, message_id, debtor_id)
EventItem = tuple[str, dict[str, Any], int | None, int | None, str | None]


@functools.lru_cache(maxsize=256)  # a pass stamps every row and event with the same `now`
def iso(moment: datetime) -> str:
    """Aware datetimes are stored as UTC ISO 8601 text, which sorts as time."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: mailer stores aware UTC times only")
    return moment.astimezone(UTC).isoformat(timespec="seconds")


_STORED_BELOW = 1024  # bytes; see compress

# sqlite3 binds int, float and str directly, but looks every other value (None, bytes, bool)
# up as something to adapt: a registry miss, then two failed attribute look-ups that raise
# and clear an AttributeError, about a microsecond a value. Registered as adapting to
# themselves, they bind exactly as before (NULL, BLOB, 0/1) after one registry hit.
sqlite3.register_adapter(type(None), {}.get)  # type: ignore[arg-type]  # {}.get(None) is None
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b
sqlite3.register_adapter(bool, int)

# The canonical form is json.dumps(data, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False, default=str). orjson writes that same text 4-6x faster (an event's JSON
# was a sixth of recording a message); the json module writes what orjson refuses (rare).
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)
# Subclasses of str, int, dict and list, dates and dataclasses go to _as_json_writes_it, so
# that they come out as the json module writes them, not as orjson would on its own.
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _as_json_writes_it(value: Any) -> Any:
    """``value`` as the json module encodes it: a str or int subclass by its str or int value,
    a dict or list subclass as a dict or list, anything else as ``str(value)`` (Decimal, date,
    datetime, dataclass). (Enums never come here: orjson writes a StrEnum's or IntEnum's value
    itself, as the json module does.)"""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return str(value)


def canonical(data: Any) -> str:
    """The JSON form that is hashed: sorted keys, no spaces, non-ASCII kept, Decimals as text.

    (For floats and plain Enum members orjson's text is its own: the shortest repr with no
    "+" in exponents, NaN as null; the enum's value. Events carry neither; a body is checked by
    its stored text, never by encoding its data again.)"""
    try:
        return orjson.dumps(data, default=_as_json_writes_it, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError: keys not str, ints past 64 bits, surrogates
        return _CANONICAL.encode(data)


# What ``canonical`` writes in place of a ``Canonical`` value (an unknown type: its ``str``): a
# string no data can hold by chance, since it carries a nonce drawn when the process starts.
_MARK = f"\x00canonical:{secrets.token_hex(16)}\x00"
_MARK_JSON = canonical(_MARK)


class Canonical:
    """A value of an event's data given as its ``canonical`` text, made earlier (the inbound
    reader makes a classification's once, for its row and its event): placed in the event's
    body as is instead of being encoded again. Only as a top-level value of the data."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return _MARK


def _body(envelope: dict[str, Any], data: dict[str, Any]) -> str:
    """``canonical(envelope)`` (whose "data" is ``data``) with ``Canonical`` values in place."""
    body = canonical(envelope)
    if _MARK_JSON in body:
        # The marks stand in the body in the order of the sorted keys, one per value.
        for _key, value in sorted(data.items()):
            if isinstance(value, Canonical):
                body = body.replace(_MARK_JSON, value.text, 1)
        if _MARK_JSON in body:
            raise TypeError("a Canonical value below the top level of an event's data")
    return body


def compress(data: bytes) -> bytes:
    """A zlib stream (what ``zlib.decompress`` reads), compressed unless ``data`` is small.

    ``zlib.compress`` always sets up a 32 KiB window and ~256 KiB of state; for the usual mail of
    a few KiB that setup, and the page faults of memory malloc hands back to the system after
    each call, cost more than the compression (~65 µs against ~7 µs for 1 KiB). A window as
    large as the data finds every match the full one would. Below ``_STORED_BELOW`` deflating
    costs ~25 µs to save a few hundred bytes: such data goes in stored (uncompressed) blocks.
    """
    wbits = max(9, min(15, (len(data) - 1).bit_length()))
    level = 6 if len(data) >= _STORED_BELOW else 0
    packer = zlib.compressobj(level, zlib.DEFLATED, wbits, max(1, min(8, wbits - 6)))
    return packer.compress(data) + packer.flush()


def _chain_rows(
    at: datetime, items: list[EventItem], last: int, prev: str
) -> tuple[list[tuple[Any, ...]], tuple[int, str]]:
    """The rows of ``items`` following event ``last`` whose hash is ``prev``; the new tail."""
    stamp = iso(at)
    rows = []
    for kind, data, case_id, message_id, debtor_id in items:
        body = _body(
            {
                "at": stamp,
                "kind": kind,
                "case_id": case_id,
                "message_id": message_id,
                "debtor_id": debtor_id,
                "data": data,
            },
            data,
        )
        body_sha = sha256_hex(body)
        digest = event_hash(prev, body_sha)
        # Ids given, not left to SQLite: the write lock is held, so last + 1 is free, and the
        # caller learns the id without reading the table again.
        last += 1
        rows.append(
            (last, stamp, kind, case_id, message_id, debtor_id, body, body_sha, prev, digest)
        )
        prev = digest
    return rows, (last, prev)


WAL_PAGES = 16384  # see Store.open


def rows_in(
    conn: sqlite3.Connection,
    sql: str,
    values: Sequence[Any],
    args: tuple[Any, ...] = (),
    size: int = 500,
) -> Iterator[Any]:
    """The rows of ``sql`` for ``values`` taken ``size`` at a time (memory and the number of
    bound parameters stay bounded): ``{marks}`` in ``sql`` becomes a chunk's placeholders,
    bound after ``args``."""
    for start in range(0, len(values), size):
        part = values[start : start + size]
        yield from conn.execute(sql.format(marks=", ".join("?" * len(part))), (*args, *part))


def _not_as_root(path: Path) -> None:
    """Refuse to open, as root, a database that belongs to another user (the service's).

    SQLite would create its -wal and -shm files as root, and the daemon, running as that
    user, could then no longer write its own database.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            owner = file.stat().st_uid
        except FileNotFoundError:
            continue
        if owner != 0:
            try:
                name = pwd.getpwuid(owner).pw_name
            except KeyError:
                name = str(owner)
            raise ConfigError(
                [
                    f"{file}: belongs to user {name}: run mailer as that user"
                    f" (sudo -u {name} mailer …); as root it would leave files {name} cannot"
                    " write, and the daemon would stop"
                ]
            )


class Store:
    """One open database. Writes go through ``transaction()``; events are only ever appended."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.conn: sqlite3.Connection = db.conn
        # While events are batched (``batched_events``): the rows not yet written, and the
        # chain's last id and hash counting them (None: read them from the table).
        self._pending: list[tuple[Any, ...]] | None = None
        self._tail: tuple[int, str] | None = None
        # what a durable commit uses (FULL for a file, what SQLite has for :memory:)
        self._synchronous = int(self.conn.execute("PRAGMA synchronous").fetchone()[0])

    @classmethod
    def open(cls, path: Path | str | None) -> Store:
        """Open (creating if needed) and migrate. ``None`` opens an in-memory database."""
        # isolation_level=None: no implicit transactions; every write says where it begins.
        if path is None:
            db = sqlite_utils.Database(sqlite3.connect(":memory:", isolation_level=None))
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _not_as_root(Path(path))
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            db = sqlite_utils.Database(conn)
            # WAL lets the review page and `mailer status` read while the daemon writes;
            # synchronous=FULL because a committed "sent" must survive a power cut.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # Copying the WAL back into the database (a checkpoint) every 1,000 pages, SQLite's
            # default, lands in the middle of a catch-up or a planning pass, a third of each
            # commit's cost there; the daemon checkpoints between ticks instead (``checkpoint``)
            # and this is the backstop (64 MB of 4 KiB pages).
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            # A savepoint's undo copies (the inbound chunk's: ~1 MB) in memory: past 64 KiB
            # SQLite otherwise spills them to a temporary file, created and unlinked per
            # savepoint, one write per page.
            db.execute("PRAGMA temp_store=MEMORY")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        store = cls(db)
        store.migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database, as far as readers allow (never waits
        for them): the daemon's housekeeping between ticks."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def transaction(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT: all or nothing, and the write lock taken up front.

        ``durable=False`` commits without waiting for the disk (WAL, synchronous=NORMAL): the
        commit survives the process being killed, not a power cut, until the next durable
        commit (the WAL is written in order, so its fsync makes every earlier commit durable
        too). For writes that are made again if lost, such as a planning pass's plans, whose
        messages are claimed durably before a byte is sent. A nested use joins the outer
        transaction, whatever it asks (the common case: each message of an inbound chunk, each
        store function it calls).
        """
        if self.conn.in_transaction:
            return nullcontext(self.conn)
        return self._transaction(durable)

    @contextmanager
    def _transaction(self, durable: bool) -> Iterator[sqlite3.Connection]:
        if not durable:
            self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        finally:
            if not durable:
                self.conn.execute(f"PRAGMA synchronous={self._synchronous}")

    @contextmanager
    def savepoint(self) -> Iterator[sqlite3.Connection]:
        """Inside a transaction: all of this block or none of it, the rest of it unharmed."""
        with self.transaction() as conn:
            self._write_pending()  # what is batched so far stands whatever this block does
            conn.execute("SAVEPOINT item")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK TO item")
                conn.execute("RELEASE item")
                if self._pending is not None:
                    # Events batched inside the block go with it, and the chain's tail is the
                    # table's again.
                    self._pending.clear()
                    self._tail = None
                raise
            conn.execute("RELEASE item")

    # --- migrations -----------------------------------------------------------------------

    def schema_version(self) -> int:
        if not self.db["migrations"].exists():
            return 0
        row = self.conn.execute("SELECT max(version) FROM migrations").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> list[int]:
        """Apply pending migrations, each in one transaction together with its record."""
        applied: list[int] = []
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        # By the record of each version, not the highest: migrations written side by side land
        # in any order, and each must run exactly once.
        done = {int(r[0]) for r in self.conn.execute("SELECT version FROM migrations")}
        for version, name, statements in sorted(MIGRATIONS, key=lambda m: m[0]):
            if version in done:
                continue
            with self.transaction() as conn:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO migrations (version, name, applied_at) "
                    "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                    (version, name),
                )
            applied.append(version)
        return applied

    # --- the event chain --------------------------------------------------------------------

    def append_event(
        self,
        at: datetime,
        kind: str,
        data: dict[str, Any] | None = None,
        *,
        case_id: int | None = None,
        message_id: int | None = None,
        debtor_id: str | None = None,
    ) -> int:
        """Append one event whose hash covers the previous event's hash (a hash chain)."""
        return self._append(at, [(kind, data or {}, case_id, message_id, debtor_id)])

    def append_events(self, at: datetime, items: list[EventItem]) -> None:
        """Append events in order, each hash covering the one before; one statement for many.

        The hash covers the SHA-256 of the body (see ``mailer.store.chain``), so a body can be
        withheld from an export or redacted by a recorded purge without breaking a link.
        """
        if items:
            self._append(at, items)

    def _append(self, at: datetime, items: list[EventItem]) -> int:
        """Insert ``items`` after the chain's last event; the id of the last one inserted."""
        if self._pending is not None and self._tail is not None:
            # Batching (inside a transaction, see batched_events): the tail is known.
            rows, self._tail = _chain_rows(at, items, *self._tail)
            self._pending.extend(rows)
            return self._tail[0]
        with self.transaction() as conn:
            row = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            rows, tail = _chain_rows(at, items, *((int(row[0]), row[1]) if row else (0, GENESIS)))
            if self._pending is not None:
                self._pending.extend(rows)
                self._tail = tail
            else:
                self._insert_events(rows)
        return tail[0]

    def _insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(
            "INSERT INTO events (id, at, kind, case_id, message_id, debtor_id, body, body_sha256,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _write_pending(self) -> None:
        if self._pending:
            self._insert_events(self._pending)
            self._pending.clear()  # the tail stays: it is now the table's

    @contextmanager
    def batched_events(self) -> Iterator[None]:
        """Inside a transaction: the events appended in this block are written together at its
        end, in one statement, with the ids, hashes and order they would have had one by one.

        Only for blocks that read no events from the table (they are not there until the end:
        wrap such a part in ``unbatched``). A savepoint inside writes what is batched first,
        and a savepoint rolled back takes its events with it. If the block raises, its batched
        events are dropped: the caller's transaction or savepoint rolls the rest back.
        """
        if self._pending is not None:
            yield  # already batching: the outer block writes them
            return
        if not self.conn.in_transaction:
            raise RuntimeError("batched_events needs a transaction")
        self._pending, self._tail = [], None
        try:
            yield
            self._write_pending()
        finally:
            self._pending, self._tail = None, None

    @contextmanager
    def unbatched(self) -> Iterator[None]:
        """Inside ``batched_events``: a part that reads events, with every event in the table."""
        if self._pending is None:
            yield
            return
        self._write_pending()
        pending, self._pending = self._pending, None
        try:
            yield
        finally:
            # Events it appended went straight to the table: read the tail again.
            self._pending, self._tail = pending, None

    def events(self, case_id: int | None = None) -> list[dict[str, Any]]:
        self._write_pending()
        sql = "SELECT id, at, kind, case_id, message_id, debtor_id, body FROM events"
        args: tuple[Any, ...] = ()
        if case_id is not None:
            sql += " WHERE case_id = ?"
            args = (case_id,)
        rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [
            {
                "id": r[0],
                "at": r[1],
                "kind": r[2],
                "case_id": r[3],
                "message_id": r[4],
                "debtor_id": r[5],
                "data": json.loads(r[6])["data"],
            }
            for r in rows
        ]

    def verify_chain(self) -> int | None:
        """Id of the first event whose hash or link does not hold, or None when all hold."""
        found = self.chain_break()
        return None if found is None else found.event_id

    def chain_break(self) -> ChainBreak | None:
        """The first event where the chain does not hold, with where and why."""
        self._write_pending()
        return first_break(self.conn)

    # --- content-addressed raw messages -------------------------------------------------------

    def put_blob(self, data: bytes, digest: str | None = None, packed: bytes | None = None) -> str:
        """Store ``data`` once under its SHA-256 (compressed); returns the hex digest.

        ``digest`` and ``packed``, when the caller has them already (made in another process),
        must be ``sha256(data).hexdigest()`` and ``compress(data)``.
        """
        if digest is None:
            digest = hashlib.sha256(data).hexdigest()
        self.conn.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
            (digest, len(data), compress(data) if packed is None else packed),
        )
        return digest

    def get_blob(self, digest: str) -> bytes:
        """The bytes stored under ``digest``; KeyError if unknown or emptied by a purge."""
        row = self.conn.execute(
            "SELECT data, purged_by FROM blobs WHERE sha256 = ?", (digest,)
        ).fetchone()
        if row is None:
            raise KeyError(digest)
        if row[1] is not None:
            raise KeyError(f"{digest} was purged by event {row[1]}")
        return zlib.decompress(row[0])

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        cursor = self.conn.execute(sql, args)
        cursor.row_factory = sqlite3.Row
        return cursor.fetchall()
