"""Pure decisions on incoming mail: is it ours to read, which case it is about, what it changes."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import StrEnum

from mailer.domain.blocking import SignalKind, signal_for
from mailer.domain.calendar import local_wall_to_utc, zone
from mailer.domain.classify import mime
from mailer.domain.classify.model import Classification, FailedRecipient, Intent, Kind
from mailer.domain.models import CaseStatus, ContactStatus, DebtorKind

MAX_RESENDS = 2  # a step is sent again at most this many times (other address, or soft bounce)
_REPORT_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "bounce")


# --- screening: from the header block alone, before fetching a body -------------------------


@dataclass(frozen=True, slots=True)
class Headers:
    """What screening needs of a message's header block."""

    message_id: str | None
    refs: tuple[str, ...]  # In-Reply-To and References, in order
    from_address: str | None
    maybe_report: bool  # could be a DSN, an ARF report or a bounce in prose: read the body


class Relevance(StrEnum):
    OWN = "own"  # one of our own messages (the receipt copy): already in the outbox
    RELATED = "related"  # answers one of our messages, or comes from a debtor's address
    CANDIDATE = "candidate"  # a report that may be about our messages: classify to tell
    UNRELATED = "unrelated"  # the person's own mail: neither stored nor logged


def read_headers(header_block: bytes) -> Headers:
    """Parse a raw header block; raises ValueError when it is not one."""
    msg = BytesHeaderParser(policy=compat32).parsebytes(header_block)
    if not msg.keys():
        raise ValueError("no header fields")
    ids = [bracketed(m) for m in mime.message_ids(str(msg.get("Message-ID", "")))]
    refs: list[str] = []
    for name in ("In-Reply-To", "References"):
        for ref in map(bracketed, mime.message_ids(" ".join(map(str, msg.get_all(name, []))))):
            if ref not in refs:
                refs.append(ref)
    sender = mime.first_address(str(msg.get("From", ""))) if msg.get("From") else None
    content_type = str(msg.get("Content-Type", "")).lower()
    auto = str(msg.get("Auto-Submitted", "")).lower().strip()
    maybe_report = (
        "multipart/report" in content_type
        or "message/feedback-report" in content_type
        or msg.get("X-Failed-Recipients") is not None
        or (sender is not None and sender.split("@", 1)[0] in _REPORT_SENDERS)
        or sender is None
        or (auto not in ("", "no") and not refs)
    )
    return Headers(ids[0] if ids else None, tuple(refs), sender, maybe_report)


def screen(headers: Headers, ours: Container[str], contacts: Container[str]) -> Relevance:
    """Decide from headers alone; ``ours`` holds our Message-IDs, ``contacts`` debtor addresses."""
    if headers.message_id is not None and headers.message_id in ours:
        return Relevance.OWN
    if any(ref in ours for ref in headers.refs):
        return Relevance.RELATED
    if headers.from_address is not None and headers.from_address in contacts:
        return Relevance.RELATED
    if headers.maybe_report:
        return Relevance.CANDIDATE
    return Relevance.UNRELATED


def bracketed(message_id: str) -> str:
    """A Message-ID in its header form, ``<local@domain>``: the classifier gives it bare."""
    text = message_id.strip()
    return text if text.startswith("<") else f"<{text}>"


def cited_ids(c: Classification) -> list[str]:
    """Every Message-ID a classified message cites, the one it reports on first."""
    ids = [bracketed(m) for m in (c.original_message_id, *reversed(c.references)) if m]
    return list(dict.fromkeys(ids))


# --- matching: which case a classified message is about ---------------------------------------


@dataclass(frozen=True, slots=True)
class SentRef:
    """One of our outgoing messages, as the inbound side needs to know it."""

    row_id: int
    case_id: int
    message_id: str
    step: int
    resend: int
    recipients: tuple[str, ...]
    identity: str = ""  # the identity it was sent from


@dataclass(frozen=True, slots=True)
class Match:
    case_id: int
    message: SentRef | None  # the message this answers or reports on, when known


def match(
    c: Classification,
    sent: Mapping[str, SentRef],
    case_of_contact: Mapping[str, int],
) -> Match | None:
    """The case a message concerns: by the message it answers, else by a debtor's address."""
    for ref in cited_ids(c):
        if ref in sent:
            return Match(sent[ref].case_id, sent[ref])
    addresses = [r.address.lower() for r in c.recipients]
    if c.kind is not Kind.BOUNCE and c.from_address:
        addresses.insert(0, c.from_address.lower())
    for address in addresses:
        if address in case_of_contact:
            return Match(case_of_contact[address], None)
    return None


# --- deciding: what a message changes on its case ---------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseFacts:
    case_id: int
    status: CaseStatus
    paused_until: datetime | None
    debtor_kind: DebtorKind
    timezone: str
    contacts: tuple[tuple[str, ContactStatus, int], ...]  # address, status, soft bounces

    def contact(self, address: str) -> tuple[str, ContactStatus, int] | None:
        for entry in self.contacts:
            if entry[0].lower() == address.lower():
                return entry
        return None


@dataclass(frozen=True, slots=True)
class InboundRules:
    promise_grace_days: int = 3
    soft_bounce_limit: int = 3
    soft_retry: timedelta = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Pause:
    """Pause the case until ``until`` (aware UTC), or until a person acts when None."""

    until: datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class ToReview:
    """Stop the sequence: a person must decide (dispute, refusal, nowhere left to write)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Queue:
    """An item in the review queue for a person to read."""

    reason: str
    intent: Intent | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class SetContact:
    address: str
    status: ContactStatus
    reason: str


@dataclass(frozen=True, slots=True)
class SoftBounce:
    """Count one more consecutive soft bounce for this address."""

    address: str


@dataclass(frozen=True, slots=True)
class Resend:
    """Send the bounced message's step again, to ``to``, at ``at``."""

    message: SentRef
    to: str
    at: datetime
    why: str


@dataclass(frozen=True, slots=True)
class Blocked:
    """The receiving side refused mail as coming from the sender: the failover judges it."""

    message: SentRef | None
    address: str
    kind: SignalKind
    why: str


@dataclass(frozen=True, slots=True)
class Note:
    """Nothing changes; the evidence log records what arrived and why nothing was done."""

    what: str


Effect = Pause | ToReview | Queue | SetContact | SoftBounce | Resend | Blocked | Note

_REPLY_REASONS = {
    Intent.PROMISE_TO_PAY: "promises to pay",
    Intent.PAID_ALREADY: "says it is already paid: check the payments",
    Intent.DISPUTE: "disputes the claim",
    Intent.HARDSHIP: "asks for more time or instalments",
    Intent.STOP_CONTACT: "asks not to be written to",
    Intent.OTHER: "wrote a reply to read",
}


def decide(
    c: Classification,
    facts: CaseFacts,
    about: SentRef | None,
    rules: InboundRules,
    now: datetime,
) -> tuple[Effect, ...]:
    """What a classified message changes on its case. Never loosens a stricter state."""
    if c.kind is Kind.HUMAN_REPLY:
        return _reply(c, facts, rules)
    if c.kind is Kind.AUTOREPLY:
        if c.return_date is None:
            return (Note("auto-reply without a return date"),)
        until = _local_midnight(c.return_date, facts.timezone)
        if until <= now:
            return (Note(f"auto-reply: back on {c.return_date.isoformat()}, already past"),)
        return (Pause(until, f"out of office until {c.return_date.isoformat()}"),)
    if c.kind is Kind.BOUNCE:
        return bounce(c.recipients, facts, about, rules, now)
    if c.kind is Kind.FEEDBACK:
        addresses = [r.address for r in c.recipients] or ([about.recipients[0]] if about else [])
        effects: list[Effect] = [
            SetContact(a, ContactStatus.OPTED_OUT, "spam complaint") for a in addresses
        ]
        effects.append(ToReview("spam complaint: no more email; consider another channel"))
        effects.append(Queue("marked our email as spam", None, ""))
        return tuple(effects)
    if c.kind is Kind.DELIVERED:
        return (Note("delivery confirmed"),)
    return (Note("case-related message of no known kind"),)


def _reply(c: Classification, facts: CaseFacts, rules: InboundRules) -> tuple[Effect, ...]:
    intent = c.intent or Intent.OTHER
    queue = Queue(_REPLY_REASONS[intent], intent, c.reply_text)
    if intent is Intent.PROMISE_TO_PAY and c.promised_date is not None:
        day = c.promised_date + timedelta(days=rules.promise_grace_days)
        until = _local_midnight(day, facts.timezone)
        return (Pause(until, f"promised to pay on {c.promised_date.isoformat()}"), queue)
    if intent is Intent.DISPUTE:
        return (ToReview("dispute"), queue)
    if intent is Intent.STOP_CONTACT:
        if facts.debtor_kind is DebtorKind.CONSUMER and c.from_address:
            # A consumer's refusal ends email to that address; the case waits for a person
            # rather than writing to another address of the same person (never routed around).
            return (
                SetContact(c.from_address, ContactStatus.OPTED_OUT, "asked not to be written to"),
                ToReview("asked to stop contact"),
                queue,
            )
        return (Pause(None, "asked to stop contact"), queue)
    return (Pause(None, _REPLY_REASONS[intent]), queue)


def bounce(
    recipients: Sequence[FailedRecipient],
    facts: CaseFacts,
    about: SentRef | None,
    rules: InboundRules,
    now: datetime,
) -> tuple[Effect, ...]:
    """What failed recipients change, from a DSN or from the server's refusal while sending."""
    effects: list[Effect] = []
    lost: set[str] = set()
    for failed in recipients:
        known = facts.contact(failed.address)
        if known is None:
            effects.append(Note(f"bounce for {failed.address}, not a contact of this debtor"))
            continue
        address, status, soft_count = known
        if status is not ContactStatus.ACTIVE:
            effects.append(Note(f"bounce for {address}, already {status.value}"))
            continue
        if failed.hard:
            effects.append(SetContact(address, ContactStatus.UNDELIVERABLE, _why(failed)))
            lost.add(address.lower())
        elif (kind := signal_for(failed.reason, failed.status)) is not None:
            # The receiving side refuses this sender, not the address: the failover judges it.
            effects.append(Blocked(about, address, kind, _why(failed)))
        elif not failed.permanent and not failed.status.startswith("5"):
            effects.append(Note(f"delivery delayed, the server keeps trying: {_why(failed)}"))
        elif soft_count + 1 >= rules.soft_bounce_limit:
            effects.append(
                SetContact(
                    address,
                    ContactStatus.UNDELIVERABLE,
                    f"{soft_count + 1} soft bounces in a row, last: {_why(failed)}",
                )
            )
            lost.add(address.lower())
        else:
            effects.append(SoftBounce(address))
            if about is not None and about.resend < MAX_RESENDS:
                effects.append(
                    Resend(about, address, now + rules.soft_retry, f"soft bounce: {_why(failed)}")
                )
    if not lost:
        return tuple(effects)
    left = [
        a
        for a, status, _n in facts.contacts
        if status is ContactStatus.ACTIVE and a.lower() not in lost
    ]
    if not left:
        effects.append(ToReview("no deliverable address left"))
        effects.append(Queue("every address bounced: find another way to reach the debtor"))
    elif about is not None and about.resend < MAX_RESENDS:
        was_sent_to = {r.lower() for r in about.recipients}
        if any(r in lost for r in was_sent_to):
            effects.append(Resend(about, left[0], now, "the address bounced: the next one"))
    return tuple(effects)


def _why(failed: FailedRecipient) -> str:
    parts = [failed.reason.value, failed.status, failed.diagnostic[:200]]
    return " ".join(p for p in parts if p)


def _local_midnight(day: date, tz: str) -> datetime:
    return local_wall_to_utc(day, time(0, 0), zone(tz))


def stricter_pause(
    status: CaseStatus, current: datetime | None, new: Pause
) -> tuple[CaseStatus, datetime | None] | None:
    """The case's status and pause after ``new``; None when the case stays as it is.

    A case a person must look at (review, or paused with no end) is never loosened into a
    timed pause; between two timed pauses the later end wins.
    """
    if status in (CaseStatus.ACTIVE, CaseStatus.INSTALMENTS):
        return CaseStatus.PAUSED, new.until
    if status is not CaseStatus.PAUSED or current is None:
        return None
    if new.until is None:
        return CaseStatus.PAUSED, None
    return (CaseStatus.PAUSED, new.until) if new.until > current else None
