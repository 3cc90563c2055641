"""Acting on a case: the effects the inbound decisions return, whatever brought the news (a
reply, a report, an SMTP refusal, a channel's webhook), carried out in the caller's transaction."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailer.app import App
from mailer.compose import new_message_id
from mailer.config import is_address
from mailer.domain.blocking import Signal
from mailer.domain.inbound import (
    Blocked,
    CaseFacts,
    Effect,
    InboundRules,
    Note,
    Pause,
    Queue,
    Resend,
    SetContact,
    SoftBounce,
    ToReview,
    stricter_pause,
)
from mailer.domain.models import CaseStatus, MessageState
from mailer.flows.blocking import Failover
from mailer.flows.staff import REVIEWABLE, set_case_status, to_review
from mailer.store import inbound as store_inbound
from mailer.store import outbox
from mailer.store.db import iso


@dataclass
class CaseEffects:
    """Carries out effects on cases (``apply``), under the configured inbound rules."""

    app: App

    @property
    def rules(self) -> InboundRules:
        s = self.app.settings.inbound
        return InboundRules(
            promise_grace_days=s.promise_grace_days,
            soft_bounce_limit=s.soft_bounce_limit,
            soft_retry=timedelta(hours=s.soft_retry_hours),
        )

    def apply(
        self,
        effect: Effect,
        facts: CaseFacts,
        now: datetime,
        *,
        identity: str,
        inbound_id: int | None = None,
        source: str = "dsn",
        fresh: bool = False,
        withdraw: bool = True,
    ) -> bool | CaseFacts:
        """Carry out one decided effect on the case (in the caller's transaction); whether it
        may have changed the case's facts (status, pause, contacts): False, True, or the
        facts as they are now when the effect tells them (a pause, a review).

        ``identity`` is the mailbox the news came through (the sender, when the message it is
        about is unknown); ``source`` says how a refusal was seen: "dsn" or "smtp". ``fresh``
        says ``facts`` were read in this transaction and nothing changed the case since, so
        they need not be read again. ``withdraw`` False says the caller knows the case has no
        message waiting to go, so a pause, a review or a lost address has nothing to withdraw.
        """
        store = self.app.store
        case_id = facts.case_id
        if isinstance(effect, Pause):
            current = facts if fresh else store_inbound.case_facts(store, case_id)
            assert current is not None
            change = stricter_pause(current.status, current.paused_until, effect)
            if change is None:
                store.append_event(
                    now, "case_unchanged", {"wanted": "pause", "reason": effect.reason,
                                            "status": current.status.value}, case_id=case_id,
                )  # fmt: skip
                return False
            status, until = change
            set_case_status(store, case_id, status, now, "mailer", effect.reason[:500], until)
            if withdraw:
                outbox.cancel_pending(
                    store, case_id, now, {"reason": f"case paused: {effect.reason}"}
                )
            # As the store reads it back: UTC, to the second.
            until = datetime.fromisoformat(iso(until)) if until is not None else None
            return dataclasses.replace(current, status=status, paused_until=until)
        elif isinstance(effect, ToReview):
            current = facts if fresh else store_inbound.case_facts(store, case_id)
            assert current is not None
            to_review(store, case_id, current.status, now, effect.reason, withdraw=withdraw)
            if current.status in REVIEWABLE:
                return dataclasses.replace(current, status=CaseStatus.REVIEW, paused_until=None)
            return current
        elif isinstance(effect, Queue):
            store_inbound.open_review(
                store, case_id, inbound_id, effect.reason,
                effect.intent.value if effect.intent else None, effect.text, now,
            )  # fmt: skip
            return False
        elif isinstance(effect, SetContact):
            store.conn.execute(
                "UPDATE contacts SET status = ?, status_reason = ?, updated_at = ?"
                " WHERE address = ? AND debtor_id = (SELECT debtor_id FROM cases WHERE id = ?)",
                (effect.status.value, effect.reason[:500], iso(now), effect.address, case_id),
            )
            store.append_event(
                now, "contact_status",
                {"address": effect.address, "status": effect.status.value,
                 "reason": effect.reason[:500]},
                case_id=case_id,
            )  # fmt: skip
            if withdraw:
                outbox.cancel_pending(
                    store, case_id, now,
                    {"reason": f"{effect.address} {effect.status.value}"}, only_to=effect.address,
                )  # fmt: skip
            self._look_now(case_id, now)
        elif isinstance(effect, SoftBounce):
            store.conn.execute(
                "UPDATE contacts SET soft_bounces = soft_bounces + 1, updated_at = ?"
                " WHERE address = ? AND debtor_id = (SELECT debtor_id FROM cases WHERE id = ?)",
                (iso(now), effect.address, case_id),
            )
            store.append_event(now, "soft_bounce", {"address": effect.address}, case_id=case_id)
        elif isinstance(effect, Resend):
            self._resend(effect, case_id, now)
        elif isinstance(effect, Blocked):
            sender = effect.message.identity if effect.message else identity
            signal = Signal(now, effect.kind, sender, effect.address, source, effect.why)
            with store.unbatched():  # the failover reads earlier verdicts from the events
                Failover(self.app).observe(case_id, signal, effect.message, now)
        elif isinstance(effect, Note):
            store.append_event(now, "mail_noted", {"note": effect.what[:500]}, case_id=case_id)
            return False
        return True

    def _look_now(self, case_id: int, now: datetime) -> None:
        self.app.store.conn.execute(
            "UPDATE cases SET next_action_at = ? WHERE id = ? AND status IN ('active', 'paused')",
            (iso(now), case_id),
        )

    def _resend(self, effect: Resend, case_id: int, now: datetime) -> None:
        """The bounced message again, to ``effect.to``: same words, new Message-ID and Date."""
        store = self.app.store
        original = outbox.get(store, effect.message.row_id)
        if original is None or not is_address(effect.to):
            return
        current = store_inbound.case_facts(store, case_id)
        if current is None or current.status not in (CaseStatus.ACTIVE, CaseStatus.PAUSED):
            return
        settings = self.app.settings
        identity = settings.identity(original.identity)
        row = store.conn.execute(
            "SELECT coalesce(max(resend), 0) + 1 FROM messages WHERE case_id = ? AND step = ?",
            (case_id, original.step),
        ).fetchone()
        number = int(row[0])
        message_id = new_message_id(identity, case_id, original.step)
        data = readdress(outbox.raw(store, original), effect.to, message_id, now)
        outbox.enqueue(
            store,
            case_id=case_id,
            step=original.step,
            step_name=original.step_name,
            channel=original.channel,
            identity=original.identity,
            message_id=message_id,
            recipients=[effect.to],
            subject=original.subject,
            raw=data,
            in_reply_to=original.in_reply_to,
            state=MessageState.QUEUED,
            now=now,
            deadline=effect.at + timedelta(hours=settings.retry_deadline_hours),
            resend=number,
            not_before=effect.at,
        )
        store.append_event(
            now, "message_resend_planned",
            {"of": original.message_id, "message_id": message_id, "to": effect.to,
             "at": iso(effect.at), "why": effect.why[:500]},
            case_id=case_id, message_id=original.id,
        )  # fmt: skip


def readdress(raw: bytes, to: str, message_id: str, when: datetime) -> bytes:
    """The same message for another recipient: To, Message-ID and Date replaced, body unchanged."""
    if not is_address(to):
        raise ValueError(f"not an address: {to!r}")
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    for name, value in (
        ("To", to),
        ("Message-ID", message_id),
        ("Date", email.utils.format_datetime(when)),
    ):
        del msg[name]
        msg[name] = value
    return msg.as_bytes(policy=email.policy.SMTP)
