"""Delivery signals in the database: recorded as they are observed, read back per case and per identity."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from mailer.domain.blocking import BlockingRules, Health, Signal, SignalKind, identity_health
from mailer.domain.models import ContactStatus
from mailer.store.db import Store, iso


def record(
    store: Store, signal: Signal, case_id: int | None, message_row: int | None = None
) -> None:
    """Keep one observation (inside the caller's transaction, if any)."""
    store.conn.execute(
        "INSERT INTO delivery_signals (at, case_id, message_id, identity, address, domain, kind,"
        " source, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            iso(signal.at), case_id, message_row, signal.identity, signal.address.lower(),
            signal.domain, signal.kind.value, signal.source, signal.detail[:500],
        ),
    )  # fmt: skip


def _recorded(rows: Iterable[tuple[str, str, str | None, str, str, str]]) -> list[Signal]:
    return [
        Signal(datetime.fromisoformat(at), SignalKind(kind), identity, address, source, detail)
        for at, kind, identity, address, source, detail in rows
    ]


def _accepted(rows: Iterable[tuple[str, str, str, str]]) -> list[Signal]:
    """Messages the receiving server took, as ACCEPTED signals (one per recipient)."""
    return [
        Signal(datetime.fromisoformat(at), SignalKind.ACCEPTED, identity, address, "outbox", mid)
        for at, identity, recipients, mid in rows
        for address in json.loads(recipients)
    ]


def case_signals(store: Store, case_id: int) -> list[Signal]:
    """Everything known about delivery for one case, oldest first."""
    recorded = store.conn.execute(
        "SELECT at, kind, identity, address, source, detail FROM delivery_signals"
        " WHERE case_id = ? ORDER BY at, id",
        (case_id,),
    ).fetchall()
    sent = store.conn.execute(
        # SMTP only: a Mailchimp campaign is not mail from the identity's own server.
        "SELECT sent_at, identity, recipients, message_id FROM messages WHERE case_id = ?"
        " AND state = 'sent' AND channel = 'smtp' AND sent_at IS NOT NULL ORDER BY sent_at, id",
        (case_id,),
    ).fetchall()
    return sorted(_recorded(recorded) + _accepted(sent), key=lambda s: s.at)


def identity_signals(store: Store, identity: str, since: datetime) -> list[Signal]:
    """One signal per (domain, kind) for ``identity`` since ``since``: all its health needs."""
    recorded = store.conn.execute(
        "SELECT max(at), kind, identity, min(address), 'summary', '' FROM delivery_signals"
        " WHERE identity = ? AND at >= ? GROUP BY domain, kind",
        (identity, iso(since)),
    ).fetchall()
    accepted = store.conn.execute(
        "SELECT max(m.sent_at), lower(j.value) FROM messages m, json_each(m.recipients) j"
        " WHERE m.identity = ? AND m.state = 'sent' AND m.channel = 'smtp' AND m.sent_at >= ?"
        " GROUP BY lower(substr(j.value, instr(j.value, '@') + 1))",
        (identity, iso(since)),
    ).fetchall()
    return _recorded(recorded) + [
        Signal(datetime.fromisoformat(at), SignalKind.ACCEPTED, identity, address, "outbox")
        for at, address in accepted
    ]


def health(store: Store, identity: str, rules: BlockingRules, now: datetime) -> Health:
    """The identity's health over the rules' window, from what the store holds."""
    signals = identity_signals(store, identity, now - rules.problem_window)
    return identity_health(identity, signals, rules, now)


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """What the failover decision needs to know of a case beyond its signals."""

    identity: str | None  # the case's identity (None: the pool's first)
    switches: int
    used: frozenset[str]  # identities with a message in the case
    refusal: str | None
    disputed: bool


def case_record(store: Store, case_id: int) -> CaseRecord | None:
    row = store.conn.execute(
        "SELECT identity, identity_switches, debtor_id FROM cases WHERE id = ?", (case_id,)
    ).fetchone()
    if row is None:
        return None
    used = frozenset(
        r[0]
        for r in store.conn.execute(
            "SELECT DISTINCT identity FROM messages WHERE case_id = ? AND state != 'cancelled'",
            (case_id,),
        )
    )
    opted_out = store.conn.execute(
        "SELECT address, coalesce(status_reason, '') FROM contacts"
        " WHERE debtor_id = ? AND status = ? LIMIT 1",
        (row[2], ContactStatus.OPTED_OUT.value),
    ).fetchone()
    intents = {
        r[0]
        for r in store.conn.execute(
            "SELECT CASE kind WHEN 'feedback' THEN 'complaint'"
            " ELSE json_extract(classification, '$.intent') END"
            " FROM inbound WHERE case_id = ? AND state = 'handled'"
            " AND kind IN ('human_reply', 'feedback')",
            (case_id,),
        )
    }
    refusal = None
    if "complaint" in intents:
        refusal = "spam complaint"
    elif "stop_contact" in intents:
        refusal = "asked not to be written to"
    elif opted_out is not None:
        refusal = f"{opted_out[0]} opted out: {opted_out[1]}".rstrip(": ")
    return CaseRecord(
        identity=row[0],
        switches=int(row[1]),
        used=used,
        refusal=refusal,
        disputed="dispute" in intents,
    )


@dataclass(frozen=True, slots=True)
class Unjudged:
    case_id: int
    identity: str
    address: str
    message_row: int | None  # the refused message, when known (the latest, if several)


def unjudged(store: Store, limit: int = 500) -> list[Unjudged]:
    """Cases with refusals the failover has not judged yet: one entry per case, its latest."""
    rows = store.conn.execute(
        "SELECT case_id, identity, address, message_id, max(id) FROM delivery_signals"
        " WHERE judged_at IS NULL AND kind IN ('refused', 'filtered', 'misconfigured')"
        " AND case_id IS NOT NULL AND identity IS NOT NULL GROUP BY case_id ORDER BY case_id"
        " LIMIT ?",
        (limit,),
    ).fetchall()
    return [Unjudged(int(r[0]), r[1], r[2], r[3]) for r in rows]


def mark_judged(store: Store, case_id: int, now: datetime) -> None:
    store.conn.execute(
        "UPDATE delivery_signals SET judged_at = ? WHERE case_id = ? AND judged_at IS NULL"
        " AND kind IN ('refused', 'filtered', 'misconfigured')",
        (iso(now), case_id),
    )


def switch_identity(store: Store, case_id: int, to: str) -> None:
    store.conn.execute(
        "UPDATE cases SET identity = ?, identity_switches = identity_switches + 1 WHERE id = ?",
        (to, case_id),
    )


def engaged_cases(store: Store, case_ids: Iterable[int]) -> set[int]:
    """Those of ``case_ids`` whose debtor ever answered: only they can go silent."""
    wanted = list(case_ids)
    found: set[int] = set()
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        found.update(
            int(r[0])
            for r in store.conn.execute(
                "SELECT DISTINCT case_id FROM delivery_signals WHERE kind = 'engaged'"
                f" AND case_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class IdentityCounts:
    identity: str
    sent: int
    accepted: int
    bounced: int
    refused: int  # policy refusals (SMTP time or DSN): refused, filtered, misconfigured
    likely_blocks: int
    switched_away: int


def identity_counts(store: Store) -> dict[str, IdentityCounts]:
    """Per identity, for `mailer identities`: what it sent and how that went."""
    out: dict[str, dict[str, int]] = {}

    def bump(name: str, key: str, n: int) -> None:
        out.setdefault(name, {}).setdefault(key, 0)
        out[name][key] += n

    for name, state, n in store.conn.execute(
        "SELECT identity, state, count(*) FROM messages GROUP BY identity, state"
    ):
        if state in ("sent", "failed", "sending"):
            bump(name, "sent", n)  # attempted
        if state == "sent":
            bump(name, "accepted", n)
    for name, n in store.conn.execute(
        "SELECT m.identity, count(*) FROM inbound i JOIN messages m ON m.id = i.related_message"
        " WHERE i.kind = 'bounce' GROUP BY m.identity"
    ):
        bump(name, "bounced", n)
    for name, n in store.conn.execute(
        "SELECT identity, count(*) FROM delivery_signals"
        " WHERE kind IN ('refused', 'filtered', 'misconfigured') GROUP BY identity"
    ):
        bump(name or "", "refused", n)
    for sql, key in (
        (
            "SELECT json_extract(body, '$.data.identity'), count(*) FROM events"
            " WHERE kind = 'blocking_verdict'"
            " AND json_extract(body, '$.data.verdict') = 'likely_blocked' GROUP BY 1",
            "likely_blocks",
        ),
        (
            "SELECT json_extract(body, '$.data.from'), count(*) FROM events"
            " WHERE kind = 'identity_switched' GROUP BY 1",
            "switched_away",
        ),
    ):
        for name, n in store.conn.execute(sql):
            bump(name or "", key, n)
    return {
        name: IdentityCounts(
            name,
            v.get("sent", 0),
            v.get("accepted", 0),
            v.get("bounced", 0),
            v.get("refused", 0),
            v.get("likely_blocks", 0),
            v.get("switched_away", 0),
        )
        for name, v in out.items()
        if name
    }


def held_for_identity(store: Store, identity: str) -> list[int]:
    """Open cases in review because ``identity`` itself was the problem (refused by many
    domains, see flows.blocking), and sent to review for nothing else since."""
    rows = store.conn.execute(
        "SELECT e.case_id, e.kind, json_extract(e.body, '$.data.identity') FROM events e"
        " JOIN cases c ON c.id = e.case_id"
        " WHERE c.status = 'review' AND c.closed_at IS NULL"
        " AND e.kind IN ('identity_problem', 'case_review') ORDER BY e.id"
    )
    cause: dict[int, str | None] = {}  # why each case went to review the last time
    problem: dict[int, str | None] = {}  # an identity_problem just before that
    for case_id, kind, name in rows:
        if kind == "identity_problem":
            problem[case_id] = name
        else:
            cause[case_id] = problem.pop(case_id, None)
    return sorted(case_id for case_id, name in cause.items() if name == identity)
