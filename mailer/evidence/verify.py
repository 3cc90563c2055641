"""`mailer evidence verify`: re-hash every stored message and event, check chain and time-stamps.

Read-only. Checks, in this order, and reports each problem with where it is:
1. the event chain, link by link (``mailer.store.chain``): the first break, its event and case;
2. every blob: its bytes hash to its name and have its size; an emptied blob is one a recorded
   purge names (count and SHA-256 of the list of names);
3. the tables point at what the chain recorded: each outgoing message's and incoming mail's
   bytes are the ones its ``message_queued`` / ``mail_received`` event names, and are stored;
4. every time-stamp: its token is stored, stamps the hash the chain has at that event, and
   ``openssl ts -verify`` accepts its signature against the configured CA.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

from mailer.config import EvidenceSettings
from mailer.evidence.tsa import EVENT as STAMP_EVENT
from mailer.evidence.tsa import check_token
from mailer.store.chain import PURGE_KIND, id_list_digest, sha256_hex
from mailer.store.db import Store

_QUEUED = ("message_queued", "message_awaiting_approval")


@dataclass(frozen=True, slots=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    events: int = 0
    redacted: int = 0
    blobs: int = 0
    purged_blobs: int = 0
    timestamps: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(
    store: Store, evidence: EvidenceSettings, *, check_stamps: bool = True
) -> VerifyReport:
    """Every check above; ``report.problems[0]`` is the first break found."""
    report = VerifyReport()
    conn = store.conn
    report.events, report.redacted = conn.execute(
        "SELECT count(*), count(redacted_by) FROM events"
    ).fetchone()
    broken = store.chain_break()
    if broken is not None:
        report.problems.append(Problem(f"event {broken.event_id}", str(broken)))
    _check_blobs(store, report)
    _check_references(store, report)
    if check_stamps:
        _check_stamps(store, evidence, report)
    return report


def _blob_owner(store: Store, digest: str) -> str:
    """Where a blob is used, for a problem's location."""
    for table, label in (("messages", "outgoing message"), ("inbound", "incoming mail")):
        row = store.conn.execute(
            f"SELECT id, case_id FROM {table} WHERE raw_sha256 = ? LIMIT 1", (digest,)
        ).fetchone()
        if row is not None:
            return f"{label} {row[0]}, case {row[1]}"
    return "not referenced by a message"


def _check_blobs(store: Store, report: VerifyReport) -> None:
    purged: dict[int, list[str]] = defaultdict(list)
    for digest, size, data, purged_by in store.conn.execute(
        "SELECT sha256, size, data, purged_by FROM blobs ORDER BY rowid"
    ):
        report.blobs += 1
        if purged_by is not None:
            report.purged_blobs += 1
            purged[int(purged_by)].append(digest)
            if data:
                report.problems.append(
                    Problem(f"blob {digest}", "marked purged but still holds data")
                )
            continue
        try:
            raw = zlib.decompress(data)
        except zlib.error:
            raw = None
        if raw is None or sha256_hex(raw) != digest or len(raw) != size:
            where = f"blob {digest} ({_blob_owner(store, digest)})"
            report.problems.append(Problem(where, "its bytes no longer hash to its name"))
    for purge_id, digests in purged.items():
        row = store.conn.execute(
            "SELECT kind, body, redacted_by FROM events WHERE id = ?", (purge_id,)
        ).fetchone()
        recorded = _purge_blobs(row)
        if recorded != (len(digests), id_list_digest(digests)):
            report.problems.append(
                Problem(
                    f"blob {digests[0]}",
                    f"emptied in the name of event {purge_id}, which did not record "
                    f"purging these {len(digests)} blob(s)",
                )
            )


def _purge_blobs(row: tuple[str, str, int | None] | None) -> tuple[int, str] | None:
    if row is None or row[0] != PURGE_KIND or row[2] is not None:
        return None
    try:
        blobs = json.loads(row[1])["data"]["blobs"]
        return int(blobs["count"]), str(blobs["names_sha256"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_references(store: Store, report: VerifyReport) -> None:
    """The mutable tables must point at the bytes the chain recorded, and those must exist."""
    conn = store.conn
    known = {r[0] for r in conn.execute("SELECT sha256 FROM blobs")}
    recorded: dict[tuple[str, int], tuple[int, str]] = {}
    marks = ", ".join("?" * (len(_QUEUED) + 1))
    for event_id, kind, message_id, body in conn.execute(
        f"SELECT id, kind, message_id, body FROM events WHERE kind IN ({marks})"
        " AND redacted_by IS NULL ORDER BY id",
        (*_QUEUED, "mail_received"),
    ):
        data = json.loads(body)["data"]
        if kind == "mail_received":
            recorded[("inbound", int(data["inbound_id"]))] = (event_id, data["sha256"])
        elif message_id is not None:
            recorded[("messages", int(message_id))] = (event_id, data["sha256"])
    for table, label in (("messages", "outgoing message"), ("inbound", "incoming mail")):
        for row_id, case_id, digest in conn.execute(
            f"SELECT id, case_id, raw_sha256 FROM {table} ORDER BY id"
        ):
            where = f"{label} {row_id} (case {case_id})"
            if digest is not None and digest not in known:
                report.problems.append(Problem(where, f"its stored bytes {digest} are missing"))
            event = recorded.get((table, int(row_id)))
            if event is not None and event[1] != digest:
                report.problems.append(
                    Problem(where, f"points at {digest}, but event {event[0]} recorded {event[1]}")
                )


def _check_stamps(store: Store, evidence: EvidenceSettings, report: VerifyReport) -> None:
    conn = store.conn
    for event_id, body in conn.execute(
        "SELECT id, body FROM events WHERE kind = ? AND redacted_by IS NULL ORDER BY id",
        (STAMP_EVENT,),
    ):
        report.timestamps += 1
        data = json.loads(body)["data"]
        where = f"time-stamp event {event_id} (chain head {data['head_id']})"
        head = conn.execute("SELECT hash FROM events WHERE id = ?", (data["head_id"],)).fetchone()
        if head is None or head[0] != data["head_hash"]:
            report.problems.append(Problem(where, "the chain no longer has the stamped hash"))
            continue
        try:
            token = store.get_blob(data["token_sha256"])
        except KeyError:
            report.problems.append(Problem(where, "its token is missing"))
            continue
        _info, problem = check_token(
            token, data["head_hash"], evidence.tsa_ca_file, evidence.tsa_certs_file
        )
        if problem is not None:
            report.problems.append(Problem(where, problem))
