"""The event chain's hashing rules and its check, link by link, redactions included.

Since schema 3 an event's ``hash`` is ``sha256(prev_hash + "\\n" + body_sha256)`` where
``body_sha256 = sha256(body)``: the chain covers the hash of each body, not the body itself.
So a body can be withheld (a chain segment exported for one case shows other debtors' events as
hashes only) or redacted (a retention purge) and every link can still be recomputed. Events
written before schema 3 have no ``body_sha256`` and keep the original rule,
``sha256(prev_hash + "\\n" + body)``; they verify as before but cannot be redacted.

A redacted event keeps its ``body_sha256`` and ``hash``; its body becomes a stub and
``redacted_by`` names the ``retention_purged`` event that did it. That event, appended before
any row is redacted and itself never redacted, carries the count and the SHA-256 of the list of
ids it redacts, so a redaction nobody recorded, or one that reaches further than recorded, is a
break like any other.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = "0" * 64
PURGE_KIND = "retention_purged"


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def event_hash(prev_hash: str, covered: str) -> str:
    """``covered`` is the body's SHA-256 (schema 3 on) or, for older events, the body itself."""
    return hashlib.sha256(f"{prev_hash}\n{covered}".encode()).hexdigest()


def id_list_digest(ids: Iterable[int | str]) -> str:
    """SHA-256 of the sorted ids, one a line: how a purge names what it redacted or emptied."""
    return sha256_hex("".join(f"{i}\n" for i in sorted(ids)))


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first event where the chain does not hold, and why."""

    event_id: int
    at: str
    kind: str
    case_id: int | None
    what: str

    def __str__(self) -> str:
        case = f", case {self.case_id}" if self.case_id is not None else ""
        return f"event {self.event_id} ({self.at}, {self.kind}{case}): {self.what}"


_ROWS = (
    "SELECT id, at, kind, case_id, message_id, debtor_id, body, body_sha256, prev_hash, hash,"
    " redacted_by FROM events ORDER BY id"
)
_ENVELOPE = ("at", "kind", "case_id", "message_id", "debtor_id")


def first_break(conn: sqlite3.Connection) -> ChainBreak | None:
    """Walk the whole chain; the first event that does not hold, or None when all hold."""
    expected = GENESIS
    pending: dict[int, list[int]] = defaultdict(list)  # purge event id -> ids it redacted
    for row in conn.execute(_ROWS):
        event_id, at, kind, case_id = row[0], row[1], row[2], row[3]
        body, digest, redacted_by = row[6], row[9], row[10]
        problem = _link_problem(row, expected)
        if problem is None and redacted_by is not None:
            pending[int(redacted_by)].append(int(event_id))
        if problem is None and (event_id in pending or kind == PURGE_KIND):
            problem = _purge_problem(body, redacted_by, pending.pop(event_id, []))
        if problem is not None:
            return ChainBreak(event_id, at, kind, case_id, problem)
        expected = digest
    for purge, ids in pending.items():
        row = conn.execute(
            "SELECT id, at, kind, case_id FROM events WHERE id = ?", (ids[0],)
        ).fetchone()
        what = f"redacted by event {purge}, which does not exist"
        return ChainBreak(row[0], row[1], row[2], row[3], what)
    return None


def _link_problem(row: tuple[object, ...], expected: str) -> str | None:
    event_id = row[0]
    body, body_sha, prev_hash, digest, redacted_by = row[6:]
    assert isinstance(body, str) and isinstance(prev_hash, str)
    if prev_hash != expected:
        return "its link to the previous event does not match (an event removed or inserted?)"
    if body_sha is None:  # written before schema 3: the hash covers the body itself
        if redacted_by is not None:
            return "an event from before schema 3 cannot be redacted"
        if event_hash(prev_hash, body) != digest:
            return "its hash does not match its content"
        return _envelope_problem(row)
    assert isinstance(body_sha, str)
    if event_hash(prev_hash, body_sha) != digest:
        return "its hash does not match the recorded hash of its body"
    if redacted_by is not None:
        assert isinstance(redacted_by, int) and isinstance(event_id, int)
        if redacted_by <= event_id:
            return f"redacted by event {redacted_by}, which is not a later purge"
        return None
    if sha256_hex(body) != body_sha:
        return "its body has changed since it was written"
    return _envelope_problem(row)


def _envelope_problem(row: tuple[object, ...]) -> str | None:
    """The indexed columns must say what the hashed body says (queries select by them)."""
    try:
        data = json.loads(str(row[6]))
    except ValueError:
        return "its body is not JSON"
    for name, value in zip(_ENVELOPE, row[1:6], strict=True):
        if data.get(name) != value:
            return (
                f"its {name} column ({value!r}) differs from its hashed body ({data.get(name)!r})"
            )
    return None


def _purge_problem(body: str, redacted_by: int | None, ids: list[int]) -> str | None:
    if redacted_by is not None:
        return "a purge record must never be redacted"
    try:
        data = json.loads(body)
    except ValueError:
        return "its body is not JSON"
    kind = data.get("kind")
    if kind != PURGE_KIND:
        return f"events name this {kind} event as their redaction, but it is no purge"
    recorded = (data.get("data") or {}).get("events")
    if not isinstance(recorded, dict):
        return "a purge that does not say what it redacted"
    if recorded.get("count") != len(ids) or recorded.get("ids_sha256") != id_list_digest(ids):
        return (
            f"the events redacted in its name ({len(ids)}) are not the ones it recorded "
            f"({recorded.get('count')})"
        )
    return None
