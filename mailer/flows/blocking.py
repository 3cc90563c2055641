"""Failover: judge likely blocking from the recorded signals and act (switch identity, or ask a person)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from mailer.app import App
from mailer.domain.blocking import CaseState as BlockingState
from mailer.domain.blocking import (
    Decision,
    Health,
    IdentityProblem,
    Keep,
    Level,
    Signal,
    Switch,
    Verdict,
    assess,
    decide,
)
from mailer.domain.inbound import SentRef
from mailer.domain.instalments import STEP_BASE
from mailer.domain.models import Case, CaseStatus
from mailer.errors import NeedsReviewError
from mailer.flows.staff import to_review
from mailer.flows.stage import stage
from mailer.store import blocking as store_blocking
from mailer.store import inbound as store_inbound
from mailer.store import outbox
from mailer.store.cases import load_cases
from mailer.store.db import iso

log = logging.getLogger(__name__)


@dataclass
class Failover:
    """Each method is one business operation in one transaction (joined, if one is open)."""

    app: App

    def observe(self, case_id: int, signal: Signal, about: SentRef | None, now: datetime) -> None:
        """Record a refusal; the next failover pass judges it, with every other one seen by
        then (so an identity refused everywhere is seen as the problem before cases move)."""
        store = self.app.store
        with store.transaction():
            store_blocking.record(store, signal, case_id, about.row_id if about else None)
            # The case is looked at again at once: its next step may now come from elsewhere.
            store.conn.execute(
                "UPDATE cases SET next_action_at = ? WHERE id = ? AND closed_at IS NULL",
                (iso(now), case_id),
            )

    def judge_pending(self, now: datetime) -> int:
        """Judge every case with refusals not judged yet; returns how many were judged. On a
        switch the refused message's step goes again, from the new identity."""
        store = self.app.store
        judged = 0
        for item in store_blocking.unjudged(store):
            try:
                with store.transaction():
                    store_blocking.mark_judged(store, item.case_id, now)
                    refused = outbox.get(store, item.message_row) if item.message_row else None
                    self.judge(item.case_id, item.identity, item.address, now, again=refused)
                judged += 1
            except Exception as exc:  # one bad case never stops the pass
                log.exception("judging refusals failed", extra={"case_id": item.case_id})
                with store.transaction():
                    store_blocking.mark_judged(store, item.case_id, now)
                    store.append_event(
                        now, "case_error", {"error": repr(exc)[:500]}, case_id=item.case_id
                    )
        return judged

    def before_send(self, case: Case, identity: str, now: datetime) -> str | None:
        """Before a step goes to a debtor who answered before: has ``identity`` gone silent?
        Returns the identity to write from, or None when the case went to a person."""
        addresses = case.debtor.active_addresses
        if not addresses:
            return identity
        decision = self.judge(case.id, identity, addresses[0], now)
        if isinstance(decision, Switch):
            return decision.to
        if isinstance(decision, Keep):
            return identity
        return None

    def judge(
        self,
        case_id: int,
        identity: str,
        address: str,
        now: datetime,
        again: outbox.OutboxMessage | None = None,
    ) -> Decision:
        store = self.app.store
        settings = self.app.settings
        rules = settings.blocking
        signals = store_blocking.case_signals(store, case_id)
        verdict = assess(signals, identity, address, rules)
        if verdict.level is Level.OK:
            return Keep(verdict.why)
        record = store_blocking.case_record(store, case_id)
        if record is None:
            return Keep("no such case")
        pool = settings.failover_pool()
        others = {
            name: assess(signals, name, address, rules).level for name in pool if name != identity
        }
        troubled = {name for name in {identity, *pool} if self.health(name, now).problem}
        state = BlockingState(
            identity=identity,
            used=record.used | {identity},
            switches=record.switches,
            refusal=record.refusal,
            disputed=record.disputed,
            verdicts=others,
        )
        decision = decide(verdict, state, pool, troubled, rules)
        with store.transaction():
            self._apply(case_id, verdict, decision, now, again)
        return decision

    def health(self, identity: str, now: datetime) -> Health:
        return store_blocking.health(self.app.store, identity, self.app.settings.blocking, now)

    # --- acting ---------------------------------------------------------------------------

    def _apply(
        self,
        case_id: int,
        verdict: Verdict,
        decision: Decision,
        now: datetime,
        again: outbox.OutboxMessage | None,
    ) -> None:
        store = self.app.store
        store.append_event(
            now,
            "blocking_verdict",
            {**verdict.to_json(), "decision": _describe(decision)},
            case_id=case_id,
        )
        context = {"case_id": case_id}
        if isinstance(decision, Keep):
            if verdict.level is not Level.OK:
                log.info("case %s: %s is %s (%s)", case_id, verdict.identity,
                         verdict.level.value, verdict.why, extra=context)  # fmt: skip
            return
        if isinstance(decision, Switch):
            store_blocking.switch_identity(store, case_id, decision.to)
            store.append_event(
                now,
                "identity_switched",
                {"from": verdict.identity, "to": decision.to, "address": verdict.address,
                 "why": decision.why},
                case_id=case_id,
            )  # fmt: skip
            log.warning("case %s: %s likely blocked by %s (%s): writing from %s from now on",
                        case_id, verdict.identity, verdict.address, verdict.why, decision.to,
                        extra=context)  # fmt: skip
            if again is not None:
                self._again(case_id, again, decision.to, now)
            return
        if isinstance(decision, IdentityProblem):
            store.append_event(
                now,
                "identity_problem",
                {"identity": decision.identity, "why": decision.why,
                 "health": self.health(decision.identity, now).to_json()},
                case_id=case_id,
            )  # fmt: skip
            log.error("identity %s is refused by many domains: check its reputation and"
                      " authentication (SPF, DKIM, DMARC); no case switches away from it",
                      decision.identity, extra=context)  # fmt: skip
            self._to_person(
                case_id, f"{decision.why}; resume once the identity works again", "", now
            )
            return
        self._to_person(case_id, decision.reason, decision.suggestion, now)

    def _to_person(self, case_id: int, reason: str, suggestion: str, now: datetime) -> None:
        store = self.app.store
        facts = store_inbound.case_facts(store, case_id)
        if facts is None:
            return
        to_review(store, case_id, facts.status, now, reason)
        text = f"Suggestion: {suggestion}." if suggestion else ""
        store_inbound.open_review(store, case_id, None, reason[:500], None, text, now)

    def _again(
        self, case_id: int, refused: outbox.OutboxMessage, identity_name: str, now: datetime
    ) -> None:
        """The refused step once more, from ``identity_name`` (re-rendered: new From, and the
        layout names the address the earlier messages came from)."""
        store = self.app.store
        if refused.step >= STEP_BASE:
            return  # an instalment reminder: the plan's next one comes from the new identity
        cases = list(load_cases(store, [case_id]))
        if not cases or cases[0].status is not CaseStatus.ACTIVE:
            return
        case = cases[0]
        steps = [s for s in self.app.campaign_for(case).steps if s.index == refused.step]
        if not steps:
            return
        row = store.conn.execute(
            "SELECT coalesce(max(resend), 0) + 1 FROM messages WHERE case_id = ? AND step = ?",
            (case_id, refused.step),
        ).fetchone()
        identity = self.app.settings.identity(identity_name)
        try:
            staged = stage(self.app, case, steps[0], identity, now, resend=int(row[0]))
        except NeedsReviewError as exc:
            self._to_person(case_id, str(exc), "", now)
            return
        if staged is not None:
            store.append_event(
                now, "message_resend_planned",
                {"of": refused.message_id, "message_id": staged[1], "to": case.debtor.active_addresses[0],
                 "at": iso(now), "why": f"sent again from {identity.address}"},
                case_id=case_id, message_id=refused.id,
            )  # fmt: skip


def _describe(decision: Decision) -> dict[str, str]:
    if isinstance(decision, Keep):
        return {"action": "keep", "why": decision.why}
    if isinstance(decision, Switch):
        return {"action": "switch", "to": decision.to}
    if isinstance(decision, IdentityProblem):
        return {"action": "identity_problem", "identity": decision.identity}
    return {"action": "review", "reason": decision.reason, "suggestion": decision.suggestion}
