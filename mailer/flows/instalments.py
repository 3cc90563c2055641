"""One bounded pass over the cases on an instalment plan: remind of each instalment, or review."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailer.app import App
from mailer.domain.instalments import (
    COMPLETE,
    MISSED_REVIEW,
    Instalment,
    paid_toward,
    plan_instalments,
    seq_of,
    template_values,
)
from mailer.domain.models import ZERO, Case, HistoryEntry, Idle, SendStep
from mailer.errors import NeedsReviewError
from mailer.flows.outbound import Outbound
from mailer.store.cases import load_cases, load_history
from mailer.store.db import iso
from mailer.store.inbound import open_review
from mailer.store.instalments import active_plans

log = logging.getLogger(__name__)
ERROR_EVENT_EVERY = timedelta(hours=1)  # a case that keeps failing is recorded once an hour


@dataclass
class Instalments:
    """Cases on a plan are this flow's, not the campaign's (the planner leaves them idle).

    Every pass plans each of them afresh: there are few, and a payment import between two
    passes must stop a reminder at once. A due reminder is rendered, composed and stored by
    the outbound flow's own ``enqueue`` and sent by its normal send path on the next pass;
    UNIQUE (case, step) in the outbox makes a second pass over the same step a no-op.
    """

    app: App

    def tick(self, now: datetime) -> int:
        """Plan every case on a plan; how many reminders were stored for sending."""
        store = self.app.store
        rows = store.conn.execute(
            "SELECT id, identity FROM cases WHERE status = 'instalments' AND closed_at IS NULL"
            " ORDER BY id"
        ).fetchall()
        if not rows:
            return 0
        identities = {r[0]: r[1] for r in rows}
        ids = list(identities)
        plans = active_plans(store, ids, self.app.settings.creditor.timezone)
        history = load_history(store, ids)
        outbound = Outbound(self.app, {})
        stored = 0
        for case in load_cases(store, ids):
            context = {"case_id": case.id}
            try:
                if self._case(
                    outbound, case, identities[case.id], plans.get(case.id, []),
                    history.get(case.id, []), now,
                ):  # fmt: skip
                    stored += 1
            except NeedsReviewError as exc:
                self._to_review(case, now, str(exc))
            except Exception as exc:
                # One bad case never stops the others, nor the daemon's tick.
                log.exception("instalment planning failed", extra=context)
                self._record_error(case.id, now, exc)
        return stored

    def _case(
        self,
        outbound: Outbound,
        case: Case,
        identity: str | None,
        plan: list[Instalment],
        history: list[HistoryEntry],
        now: datetime,
    ) -> bool:
        calendar = self.app.calendar(case.debtor.country, case.debtor.region)
        policy = self.app.campaign_for(case).policy
        action = plan_instalments(case, plan, history, calendar, policy, now)
        if isinstance(action, SendStep):
            if action.at > now:
                return False
            seq = seq_of(action.step.index)
            assert seq is not None
            values = template_values(plan, seq, paid_toward(case, plan))
            return outbound.enqueue(case, action, identity, now, instalment=values) is not None
        if isinstance(action, Idle):
            if action.reason == MISSED_REVIEW:
                last = max(plan, key=lambda i: i.seq)
                self._to_review(
                    case, now, f"instalment plan: the last instalment (due {last.due_date}) missed"
                )
            elif action.reason == COMPLETE and case.balance > ZERO:
                # Invoices added after the plan was agreed: a person decides what comes next.
                self._to_review(case, now, f"instalment plan complete; {case.balance} still owed")
        return False

    def _to_review(self, case: Case, now: datetime, reason: str) -> None:
        store = self.app.store
        with store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE cases SET status = 'review', status_reason = ?, next_action_at = NULL"
                " WHERE id = ? AND status = 'instalments' AND closed_at IS NULL",
                (reason[:500], case.id),
            )
            if cursor.rowcount != 1:
                return  # a person or an import got there first
            store.append_event(now, "case_review", {"reason": reason[:500]}, case_id=case.id)
            open_review(store, case.id, None, reason, None, "", now)
        log.info("case %s to review: %s", case.id, reason, extra={"case_id": case.id})

    def _record_error(self, case_id: int, now: datetime, exc: Exception) -> None:
        store = self.app.store
        recent = store.conn.execute(
            "SELECT 1 FROM events WHERE case_id = ? AND kind = 'case_error' AND at > ? LIMIT 1",
            (case_id, iso(now - ERROR_EVENT_EVERY)),
        ).fetchone()
        if recent is None:
            with store.transaction():
                store.append_event(
                    now, "case_error", {"error": repr(exc), "flow": "instalments"}, case_id=case_id
                )
