"""Recording case-related mail, a chunk at a time: match, store the raw bytes, log and act, one commit."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mailer.app import App
from mailer.domain.blocking import Signal, SignalKind
from mailer.domain.classify import Classification, Kind
from mailer.domain.inbound import (
    Blocked,
    CaseFacts,
    InboundRules,
    Match,
    Resend,
    SentRef,
    SoftBounce,
    cited_ids,
    decide,
    match,
)
from mailer.flows.effects import CaseEffects
from mailer.flows.reading import Read
from mailer.flows.reading import read as read_one
from mailer.store import blocking as store_blocking
from mailer.store import inbound as store_inbound
from mailer.store.db import Canonical, Store
from mailer.store.inbound import encode_classification

log = logging.getLogger(__name__)
_EVENT_REPLY_TEXT = 4000  # characters of a reply kept in its mail_received event


@dataclass
class Recorder:
    """Records a chunk of an identity's folder: each message classified (or read beforehand),
    matched to its case, its bytes and events stored, the decided effects carried out."""

    app: App
    effects: CaseEffects = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.effects = CaseEffects(self.app)

    def process_many(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        items: Sequence[tuple[int | None, bytes, bool]],
        now: datetime,
        *,
        checkpoint: int | None = None,
        read: Sequence[Read] | None = None,
        durable: bool = True,
    ) -> list[str]:
        """``process`` for a chunk of (uid, raw, readable), committed together: one fsync per
        chunk, not per message. One message that fails is rolled back alone and quarantined,
        and the rest of the chunk stands. With ``checkpoint`` (and ``validity``), the folder's
        checkpoint moves there in the same commit. ``read``: each item's SHA-256 and
        classification, when already made (by the reader's worker); else they are made here.
        ``durable`` False: committed without waiting for the disk (``record_chunks``).

        The messages are classified before the write lock is taken (classifying is pure), and
        what the chunk needs from the store is read once. The chunk is recorded in one savepoint,
        its events written together at the end (same ids, hashes and order); only if a message
        fails is it all rolled back and recorded again one message at a time, each in a
        savepoint of its own, as every chunk was before: the same outcome for one savepoint a
        chunk instead of one a message.
        """
        store = self.app.store
        rules = self.effects.rules
        if read is None:
            read = [read_one(raw, now.date()) for _uid, raw, _readable in items]
        mails = [
            _Mail(uid, raw, readable, r.digest, r.c, r.packed, r.row)
            for (uid, raw, readable), r in zip(items, read, strict=True)
        ]
        with store.transaction(durable=durable):
            try:
                with store.savepoint(), store.batched_events():
                    known = _Known.load(store, mails)
                    done = [
                        self._record(identity, folder, validity, mail, known, rules, now)
                        for mail in mails
                    ]
            except Exception:
                log.info("inbound chunk failed: recording %s/%s one by one", identity, folder)
                done = []
                known = _Known.load(store, mails)
                for mail in mails:
                    try:
                        with store.savepoint():
                            done.append(
                                self._record(identity, folder, validity, mail, known, rules, now)
                            )
                    except Exception as exc:  # one bad message never stops the pass
                        log.exception(
                            "inbound message failed: %s/%s uid %s", identity, folder, mail.uid
                        )
                        self._quarantine(
                            identity, folder, validity, mail.uid, mail.raw, None, repr(exc), now
                        )
                        known.digests.add(mail.digest)
                        # What the failed message's savepoint took back may have been cached.
                        known.forget(mail.found.case_id if mail.found else None)
                        done.append(("quarantined", None, repr(exc)))
            if checkpoint is not None and validity is not None:
                store_inbound.save_checkpoint(store, identity, folder, validity, checkpoint, now)
        # Logged once the chunk stands: a chunk recorded again logs each message once.
        for mail, (outcome, case_id, why) in zip(mails, done, strict=True):
            _log_outcome(identity, folder, mail.uid, mail.c, outcome, case_id, why)
        return [outcome for outcome, _case, _why in done]

    # --- one message -----------------------------------------------------------------------

    def process(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        uid: int | None,
        raw: bytes,
        now: datetime,
        *,
        readable: bool = True,
    ) -> str:
        """Classify, match and act on one message: 'stored', 'duplicate', 'quarantined' or
        'unrelated' (a report about someone else's mail: dropped, not even logged)."""
        r = read_one(raw, now.date())
        mail = _Mail(uid, raw, readable, r.digest, r.c, r.packed, r.row)
        known = _Known.load(self.app.store, [mail])
        outcome, case_id, why = self._record(
            identity, folder, validity, mail, known, self.effects.rules, now
        )
        _log_outcome(identity, folder, uid, mail.c, outcome, case_id, why)
        return outcome

    def _record(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        mail: _Mail,
        known: _Known,
        rules: InboundRules,
        now: datetime,
    ) -> tuple[str, int | None, str]:
        """Match and act on one classified message; (outcome, case id, why quarantined)."""
        store = self.app.store
        uid, raw, digest, c = mail.uid, mail.raw, mail.digest, mail.c
        message_id = c.message_id
        if digest in known.digests or (message_id is not None and message_id in known.message_ids):
            return "duplicate", None, ""
        if not mail.readable or c.errors:
            case = self._case_hint(c)
            why = "; ".join(c.errors) or "unreadable header"
            self._quarantine(identity, folder, validity, uid, raw, case, why, now)
            known.digests.add(digest)
            return "quarantined", case, why
        if message_id is not None and message_id in mail.cited and message_id in known.sent:
            return "unrelated", None, ""  # our own receipt copy, caught after a header-only miss
        found = mail.found
        if found is None:
            return "unrelated", None, ""
        facts = known.case_facts(store, found.case_id)
        if facts is None:
            return "unrelated", None, ""
        effects = decide(c, facts, found.message, rules, now)
        with store.transaction():
            store.put_blob(raw, digest, mail.packed)
            classification = mail.row or encode_classification(c.to_json())
            row = store_inbound.insert(
                store, identity=identity, folder=folder, uidvalidity=validity, uid=uid,
                message_id=message_id, sha256=digest, state="handled", kind=c.kind.value,
                case_id=facts.case_id,
                related_message=found.message.row_id if found.message else None,
                from_address=c.from_address, subject=c.subject,
                classification=classification,
                error=None, now=now,
            )  # fmt: skip
            store.append_event(
                now,
                "mail_received",
                {
                    "inbound_id": row,
                    "identity": identity,
                    "folder": folder,
                    "uid": uid,
                    "uidvalidity": validity,
                    "message_id": message_id,
                    "sha256": digest,
                    "size": len(raw),
                    "classification": _summary(c, classification),
                    "in_reply_to": found.message.message_id if found.message else None,
                },
                case_id=facts.case_id,
                message_id=found.message.row_id if found.message else None,
            )
            fresh = True  # facts still say what the store says (their reading is skipped)
            if (
                c.kind in (Kind.HUMAN_REPLY, Kind.AUTOREPLY)
                and c.from_address
                and c.from_address.lower() in known.soft_bounced
            ):
                # Proof the address receives mail: soft bounces were not "in a row".
                store.conn.execute(
                    "UPDATE contacts SET soft_bounces = 0 WHERE address = ?", (c.from_address,)
                )
                known.forget_address(c.from_address)
                fresh = False
            self._signal(c, facts.case_id, found.message, now)
            for effect in effects:
                changed = self.effects.apply(
                    effect, facts, now, identity=identity, inbound_id=row, fresh=fresh,
                    withdraw=facts.case_id in known.pending,
                )  # fmt: skip
                if isinstance(effect, SoftBounce):
                    known.soft_bounced.add(effect.address.lower())
                if isinstance(effect, (Resend, Blocked)):
                    known.pending.add(facts.case_id)  # a message may now wait to go
                if isinstance(changed, CaseFacts):  # what the case is now: no need to read it
                    facts, fresh = changed, True
                    known.facts[facts.case_id] = facts
                    # A pause or a review withdrew whatever waited to go (the states
                    # cases_with_pending reads): the case's next messages need not look.
                    known.pending.discard(facts.case_id)
                elif changed:
                    fresh = False
                    known.forget(facts.case_id)
        known.digests.add(digest)
        if message_id is not None:
            known.message_ids.add(message_id)
        return "stored", facts.case_id, ""

    def _case_hint(self, c: Classification) -> int | None:
        store = self.app.store
        sent = store_inbound.sent_refs(store, cited_ids(c))
        if sent:
            return next(iter(sent.values())).case_id
        if c.from_address:
            return store_inbound.contact_cases(store, [c.from_address]).get(c.from_address.lower())
        return None

    def _quarantine(
        self,
        identity: str,
        folder: str,
        validity: int | None,
        uid: int | None,
        raw: bytes,
        case_id: int | None,
        why: str,
        now: datetime,
    ) -> None:
        store = self.app.store
        digest = hashlib.sha256(raw).hexdigest()
        with store.transaction():
            if store_inbound.already_stored(store, digest, None):
                return
            store.put_blob(raw)
            row = store_inbound.insert(
                store, identity=identity, folder=folder, uidvalidity=validity, uid=uid,
                message_id=None, sha256=digest, state="quarantined", kind="quarantined",
                case_id=case_id, related_message=None, from_address=None, subject="",
                classification={}, error=why[:1000], now=now,
            )  # fmt: skip
            store.append_event(
                now,
                "mail_quarantined",
                {"inbound_id": row, "identity": identity, "folder": folder, "uid": uid,
                 "sha256": digest, "size": len(raw), "error": why[:1000]},
                case_id=case_id,
            )  # fmt: skip
            if case_id is not None:
                store_inbound.open_review(
                    store, case_id, row, "a message about this case could not be read", None,
                    "", now,
                )  # fmt: skip

    # --- acting on the case ----------------------------------------------------------------

    def _signal(
        self, c: Classification, case_id: int, about: SentRef | None, now: datetime
    ) -> None:
        """What the message proves about delivery, for the blocking judgement: an answer is
        engagement with the conversation (keyed by the address we wrote to), an auto-reply or
        a delivery report proves our mail arrives."""
        store = self.app.store
        sender = about.identity if about else None
        if c.kind in (Kind.HUMAN_REPLY, Kind.AUTOREPLY):
            address = about.recipients[0] if about and about.recipients else c.from_address
            if address:
                kind = SignalKind.ENGAGED if c.kind is Kind.HUMAN_REPLY else SignalKind.REACHED
                signal = Signal(now, kind, sender, address, c.kind.value, c.subject[:200])
                store_blocking.record(store, signal, case_id, about.row_id if about else None)
        elif c.kind is Kind.DELIVERED:
            for r in c.recipients:
                signal = Signal(now, SignalKind.REACHED, sender, r.address, "report", r.status)
                store_blocking.record(store, signal, case_id, about.row_id if about else None)


def _summary(c: Classification, row: str) -> Canonical | dict[str, object]:
    """The classification as recorded in the event log (reply text kept: it is the evidence,
    up to 4,000 characters). ``row`` is the inbound row's (``encode_classification``): the
    same text, unless the reply is longer."""
    if len(c.reply_text) <= _EVENT_REPLY_TEXT:
        return Canonical(row)
    return {**c.to_json(), "reply_text": c.reply_text[:_EVENT_REPLY_TEXT]}


@dataclass(slots=True)
class _Mail:
    """One message of a chunk: as fetched, what the pure reading made of it, and (once the
    chunk's store reads are done) what it cites and the case it matches."""

    uid: int | None
    raw: bytes
    readable: bool
    digest: str
    c: Classification
    packed: bytes | None
    row: str | None
    cited: list[str] = field(default_factory=list)
    found: Match | None = None


@dataclass
class _Known:
    """What recording a chunk needs from the store, read once for all its messages and kept
    up to date as they are recorded: the same answers as asking the store each time."""

    digests: set[str]  # of mail on file (dedupe by content)
    message_ids: set[str]  # of mail on file (dedupe by Message-ID)
    sent: dict[str, SentRef]  # our messages the chunk cites
    # Senders of the chunk (lower case) with soft bounces counted: the only addresses whose
    # count an answer has to reset.
    soft_bounced: set[str]
    # Facts of the cases the chunk's messages match, dropped as soon as something may change
    # them (then read again): most messages of a catch-up find their case as the one before
    # left it.
    facts: dict[int, CaseFacts]
    # Cases with messages waiting to go (the only ones a pause, a review or a lost address
    # withdraws).
    pending: set[int]

    @classmethod
    def load(cls, store: Store, mails: Sequence[_Mail]) -> _Known:
        """Read what the chunk needs, and match each message to its case (what matching reads,
        our messages and the debtors' addresses, recording the chunk does not change)."""
        digests, message_ids = store_inbound.stored_keys(
            store, [m.digest for m in mails], [m.c.message_id for m in mails]
        )
        for m in mails:
            m.cited = cited_ids(m.c)
        sent = store_inbound.sent_refs(store, [ref for m in mails for ref in m.cited])
        senders = [m.c.from_address for m in mails if m.c.from_address]
        addresses = [r.address for m in mails for r in m.c.recipients] + senders
        contacts = store_inbound.contact_cases(store, addresses)
        for m in mails:
            m.found = match(m.c, {ref: sent[ref] for ref in m.cited if ref in sent}, contacts)
        cases = {m.found.case_id for m in mails if m.found is not None}
        return cls(
            digests,
            message_ids,
            sent,
            store_inbound.soft_bounced(store, senders),
            store_inbound.cases_facts(store, cases),
            store_inbound.cases_with_pending(store, cases),
        )

    def case_facts(self, store: Store, case_id: int) -> CaseFacts | None:
        """The case's facts as the store has them now (read again once dropped)."""
        facts = self.facts.get(case_id)
        if facts is None:
            facts = store_inbound.case_facts(store, case_id)
            if facts is not None:
                self.facts[case_id] = facts
        return facts

    def forget(self, case_id: int | None) -> None:
        if case_id is not None:
            self.facts.pop(case_id, None)

    def forget_address(self, address: str) -> None:
        """Drop the facts of every case with this contact address (its row changed)."""
        lower = address.lower()
        for case_id in [
            k for k, f in self.facts.items() if any(a.lower() == lower for a, *_ in f.contacts)
        ]:
            del self.facts[case_id]


def _log_outcome(
    identity: str,
    folder: str,
    uid: int | None,
    c: Classification,
    outcome: str,
    case_id: int | None,
    why: str,
) -> None:
    if outcome == "stored" and log.isEnabledFor(logging.INFO):
        log.info(
            "case %s: %s%s from %s", case_id, c.kind.value,
            f" ({c.intent.value})" if c.intent else "", c.from_address or "?",
            extra={"case_id": case_id, "message_id": c.message_id},
        )  # fmt: skip
    elif outcome == "quarantined":
        log.warning("quarantined %s/%s uid %s: %s", identity, folder, uid, why[:200])
