"""Health at a glance: one snapshot of the store and the watchers, for metrics and `mailer status`.

``collect`` only reads (the store, and the mailbox state it is given) and takes ``now``: the
same snapshot feeds the Prometheus page (mailer/metrics.py) and the terminal table. Mailbox
connections live in the daemon's memory, so the daemon also writes a small status file beside
the database, atomically, after every tick; `mailer status` runs in another process and
reads it, saying how old it is (the daemon may be down).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from mailer.config import Settings
from mailer.domain.classify.model import Intent
from mailer.domain.models import CaseStatus, MessageState
from mailer.errors import MailerError
from mailer.store.db import Store, iso

STATUS_VERSION = 1
WAITING = (MessageState.QUEUED, MessageState.DEFERRED, MessageState.SENDING)


@dataclass(frozen=True, slots=True)
class MailboxState:
    """What a watcher knows of its mailbox (mailer/mailbox/watcher.py)."""

    connected: bool
    last_contact: datetime | None  # the last pass through the mailbox that completed
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class EventTally:
    """Counts over the event chain up to event ``last_id``; events are only ever appended, so
    the daemon adds the new ones at each scrape instead of reading the whole chain again."""

    last_id: int = 0
    deferrals: int = 0  # temporary send failures, each retried later
    likely_blocks: Mapping[str, int] = field(default_factory=dict)  # identity → verdicts


@dataclass(frozen=True, slots=True)
class IdentityHealth:
    name: str
    address: str
    watched: bool  # mailer reads this identity's mailbox
    connected: bool | None  # None: no word from a running daemon
    last_imap_contact: datetime | None
    last_smtp_send: datetime | None
    sent: int
    likely_blocks: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: datetime
    messages: Mapping[str, int]  # every MessageState → messages in it now
    deferrals: int
    cases: Mapping[str, int]  # every CaseStatus → cases in it now
    inbound: Mapping[str, int]  # classifier kind → case-related mail handled
    quarantined: int  # mail that could not be read, kept for a person
    bounces: Mapping[str, int]  # "hard" (the address is dead) / "soft"
    replies: Mapping[str, int]  # every Intent → human replies
    open_reviews: int
    identities: tuple[IdentityHealth, ...]

    @property
    def queue_depth(self) -> int:
        return sum(self.messages.get(s.value, 0) for s in WAITING)

    @property
    def mailboxes(self) -> tuple[int, int]:
        """(connected, watched) mailboxes."""
        watched = [i for i in self.identities if i.watched]
        return sum(1 for i in watched if i.connected), len(watched)

    def summary(self) -> str:
        """The one line systemd shows in `systemctl status mailer`."""
        connected, watched = self.mailboxes
        return (
            f"{self.cases.get(CaseStatus.ACTIVE.value, 0)} cases active, "
            f"queue {self.queue_depth}, mailboxes {connected}/{watched} connected, "
            f"{self.open_reviews} to review"
        )


def tally_events(store: Store, since: EventTally | None = None) -> EventTally:
    """``since`` plus the events appended after it."""
    since = since or EventTally()
    (last,) = store.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    deferrals = since.deferrals
    blocks = dict(since.likely_blocks)
    # Bounded by ``last``: a row committed meanwhile is counted next time, never twice.
    rows = store.conn.execute(
        "SELECT kind, coalesce(json_extract(body, '$.data.identity'), ''), count(*) FROM events"
        " WHERE id > ? AND id <= ? AND (kind = 'send_deferred' OR (kind = 'blocking_verdict'"
        " AND json_extract(body, '$.data.verdict') = 'likely_blocked')) GROUP BY 1, 2",
        (since.last_id, last),
    )
    for kind, identity, count in rows:
        if kind == "send_deferred":
            deferrals += count
        else:
            blocks[identity] = blocks.get(identity, 0) + count
    return EventTally(int(last), deferrals, blocks)


def collect(
    store: Store,
    settings: Settings,
    now: datetime,
    mailboxes: Mapping[str, MailboxState],
    tally: EventTally,
) -> Snapshot:
    """Everything the metrics page and `mailer status` show, read in one go."""
    conn = store.conn
    messages = {s.value: 0 for s in MessageState}
    messages.update(conn.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall())
    cases = {s.value: 0 for s in CaseStatus}
    cases.update(conn.execute("SELECT status, count(*) FROM cases GROUP BY status").fetchall())
    inbound = dict(
        conn.execute(
            "SELECT kind, count(*) FROM inbound WHERE state = 'handled' GROUP BY kind"
        ).fetchall()
    )
    (quarantined,) = conn.execute(
        "SELECT count(*) FROM inbound WHERE state = 'quarantined'"
    ).fetchone()
    # Hard when the classifier found a dead address among the report's recipients.
    bounces = {"hard": 0, "soft": 0}
    bounces.update(
        conn.execute(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM json_each(i.classification, '$.recipients') r"
            " WHERE json_extract(r.value, '$.hard')) THEN 'hard' ELSE 'soft' END, count(*)"
            " FROM inbound i WHERE i.kind = 'bounce' AND i.state = 'handled' GROUP BY 1"
        ).fetchall()
    )
    replies = {i.value: 0 for i in Intent}
    for intent, count in conn.execute(
        "SELECT coalesce(json_extract(classification, '$.intent'), 'other'), count(*)"
        " FROM inbound WHERE kind = 'human_reply' AND state = 'handled' GROUP BY 1"
    ):
        replies[intent] = replies.get(intent, 0) + count
    (open_reviews,) = conn.execute(
        "SELECT count(*) FROM reviews WHERE resolved_at IS NULL"
    ).fetchone()
    sends = {
        name: (int(sent or 0), last)
        for name, sent, last in conn.execute(
            "SELECT identity, sum(state = 'sent'), max(sent_at) FROM messages GROUP BY identity"
        )
    }
    identities = []
    for ident in settings.identities:
        sent, last_send = sends.get(ident.name, (0, None))
        box = mailboxes.get(ident.name)
        identities.append(
            IdentityHealth(
                name=ident.name,
                address=ident.address,
                watched=ident.imap_host is not None,
                connected=box.connected if box else None,
                last_imap_contact=box.last_contact if box else None,
                last_smtp_send=datetime.fromisoformat(last_send) if last_send else None,
                sent=sent,
                likely_blocks=tally.likely_blocks.get(ident.name, 0),
                last_error=box.last_error if box else None,
            )
        )
    return Snapshot(
        at=now,
        messages=messages,
        deferrals=tally.deferrals,
        cases=cases,
        inbound=inbound,
        quarantined=int(quarantined),
        bounces=bounces,
        replies=replies,
        open_reviews=int(open_reviews),
        identities=tuple(identities),
    )


def open_readonly(database: Path) -> Store:
    """The database for reading only: never created, never migrated, never written.

    Each reader thread opens its own (SQLite connections stay in their thread); WAL lets it
    read while the daemon writes.
    """
    if not database.is_file():
        raise MailerError(f"no database at {database} (has `mailer run` or an import run yet?)")
    owner = database.stat().st_uid
    if owner != os.geteuid() and not database.with_name(f"{database.name}-shm").exists():
        # Reading a WAL database creates its -wal and -shm files when nobody has it open;
        # made by another user (root), they would keep the service from opening it.
        raise MailerError(
            f"{database} belongs to another user and nothing has it open: run this as its"
            f" owner (uid {owner}; e.g. sudo -u mailer mailer …)"
        )
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return Store(sqlite_utils.Database(conn))


# --- the daemon's status file ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What the running daemon alone knows, for `mailer status` in another process."""

    pid: int
    state: str  # "running" or "stopped"
    written_at: datetime
    started_at: datetime
    ticks: int
    interval_seconds: float
    last_tick: Mapping[str, Any]  # the last TickReport's counts and errors
    mailboxes: Mapping[str, MailboxState]
    rules_loaded_at: datetime | None = None
    reload_error: str | None = None  # the last reload was refused: why (old rules in force)
    metrics: str | None = None  # "host:port" of the metrics page, when served

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = STATUS_VERSION
        for key in ("written_at", "started_at", "rules_loaded_at"):
            data[key] = iso(data[key]) if data[key] else None
        data["mailboxes"] = {
            name: {
                "connected": box.connected,
                "last_contact": iso(box.last_contact) if box.last_contact else None,
                "last_error": box.last_error,
            }
            for name, box in self.mailboxes.items()
        }
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DaemonStatus:
        def moment(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        written, started = moment(data["written_at"]), moment(data["started_at"])
        assert written is not None and started is not None
        return cls(
            pid=int(data["pid"]),
            state=str(data["state"]),
            written_at=written,
            started_at=started,
            ticks=int(data["ticks"]),
            interval_seconds=float(data["interval_seconds"]),
            last_tick=dict(data.get("last_tick") or {}),
            mailboxes={
                name: MailboxState(
                    bool(box["connected"]), moment(box["last_contact"]), box.get("last_error")
                )
                for name, box in (data.get("mailboxes") or {}).items()
            },
            rules_loaded_at=moment(data.get("rules_loaded_at")),
            reload_error=data.get("reload_error"),
            metrics=data.get("metrics"),
        )


def status_path(settings: Settings) -> Path:
    """Beside the database (the one directory the service may write to): mailer.status.json."""
    return settings.database.with_name(f"{settings.database.stem}.status.json")


def write_status(path: Path, status: DaemonStatus) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status.to_json(), ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def read_status(path: Path) -> DaemonStatus | None:
    """The daemon's last word, or None when it never wrote one (or it cannot be read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != STATUS_VERSION:
        return None
    try:
        return DaemonStatus.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None
