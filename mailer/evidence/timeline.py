"""A case's events as a timeline in plain words, in Spanish or English, for someone new to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from mailer.evidence.record import CaseRecord, EventRow, Mail
from mailer.evidence.words import (
    COPY_FILED,
    EVENTS,
    FALLBACK,
    INTENT,
    MAIL_KIND,
    QUIET,
    REDACTED,
    VERDICT,
)
from mailer.render_format import format_money


@dataclass(frozen=True, slots=True)
class Entry:
    at: datetime
    event_id: int
    kind: str
    text: str
    file: str | None  # the .eml this line is about, inside the export


class _Blank(dict[str, Any]):
    """Format values; a name the event lacks reads as a dash rather than failing."""

    def __missing__(self, key: str) -> str:
        return "—"


def _money(value: Any, currency: str, lang: str) -> str:
    try:
        return format_money(Decimal(str(value)), currency, lang)
    except (InvalidOperation, ValueError, TypeError):
        return str(value)


def _day(value: Any) -> str:
    if isinstance(value, str) and len(value) >= 10:
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            return value
    return "—" if value is None else str(value)


def _receipt(receipt: Any) -> str:
    if not isinstance(receipt, dict):
        return "—"
    return f"{receipt.get('code', '')} {receipt.get('text', '')}".strip() or "—"


def _changes(changes: Any) -> str:
    if not isinstance(changes, dict):
        return "—"
    # Only [old, new] pairs: without a "changes" key the whole event body comes here, and its
    # other lists (a one-address "recipients") are not changes.
    return "; ".join(
        f"{k}: {v[0]} → {v[1]}" for k, v in changes.items() if isinstance(v, list) and len(v) == 2
    )


def _mail_what(data: dict[str, Any], lang: str) -> str:
    found = data.get("classification") or {}
    kind = str(found.get("kind") or "other")
    text = MAIL_KIND[lang].get(kind, kind)
    intent = found.get("intent")
    if intent:
        text += f" — {INTENT[lang].get(intent, intent)}"
    reply = str(found.get("reply_text") or "").strip()
    if reply:
        text += f": «{reply[:300]}»" if lang == "es" else f": “{reply[:300]}”"
    return text


def _values(event: EventRow, mail: Mail | None, currency: str, lang: str) -> dict[str, Any]:
    data = dict(event.data)
    values = _Blank(data)
    if mail is not None:
        values.setdefault("subject", mail.subject)
        values.setdefault("recipients", mail.party)
    for key in ("amount", "balance"):
        if key in data:
            values[key] = _money(data[key], str(data.get("currency") or currency), lang)
    for key in ("due_date", "paid_on", "until", "purge_on", "gen_time"):
        if key in data:
            values[key] = _day(data[key])
    if isinstance(data.get("recipients"), list):
        values["recipients"] = ", ".join(map(str, data["recipients"]))
    values["receipt"] = _receipt(data.get("receipt"))
    values["changes"] = _changes(data.get("changes") if "changes" in data else data)
    if isinstance(data.get("refusals"), list):
        values["refusals"] = "; ".join(
            f"{r.get('address')}: {r.get('code')} {r.get('text')}" for r in data["refusals"]
        )
    if event.kind == "mail_received":
        found = data.get("classification") or {}
        values["from_address"] = found.get("from_address") or "—"
        values["mail_subject"] = found.get("subject") or ""
        values["what"] = _mail_what(data, lang)
    if event.kind == "blocking_verdict":
        values["verdict"] = VERDICT[lang].get(str(data.get("verdict")), str(data.get("verdict")))
    values["kind"] = event.kind
    return values


def build(record: CaseRecord, lang: str) -> list[Entry]:
    """One line per event worth reading; sending steps fold into the line of the sent mail."""
    out = {m.row_id: m for m in record.mails if m.direction == "out"}
    inbound = {m.row_id: m for m in record.mails if m.direction == "in"}
    currency = record.invoices[0].currency if record.invoices else "EUR"
    filed = {e.message_id for e in record.events if e.kind == "sent_copy_filed"}
    entries: list[Entry] = []
    for event in record.events:
        if event.kind in QUIET:
            continue
        at = datetime.fromisoformat(event.at)
        if event.redacted_by is not None:
            entries.append(Entry(at, event.id, event.kind, REDACTED[lang], None))
            continue
        mail = out.get(event.message_id) if event.message_id is not None else None
        if event.kind.startswith(("mail_", "contact_")):
            found = inbound.get(int(event.data.get("inbound_id") or 0))
            mail = found if event.kind == "mail_received" else None
            target = found
        else:
            target = mail
        text = EVENTS[lang].get(event.kind, FALLBACK[lang])
        line = text.format_map(_values(event, mail, currency, lang))
        if event.kind == "message_sent" and event.message_id in filed:
            line += COPY_FILED[lang]
        file = target.file if target is not None and event.kind in _WITH_FILE else None
        entries.append(Entry(at, event.id, event.kind, line, file))
    return entries


_WITH_FILE = frozenset(
    {
        "message_sent", "mail_received", "mail_quarantined", "message_cancelled",
        "send_refused", "send_failed", "message_awaiting_approval",
    }
)  # fmt: skip
