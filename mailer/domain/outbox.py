"""The outbox state machine and retry schedule: every allowed transition lives here, pure."""

from __future__ import annotations

from datetime import datetime, timedelta

from mailer.domain.models import MessageState as S

# h11-style: the only transitions there are. Anything else is a bug, refused by the store.
TRANSITIONS: dict[S, frozenset[S]] = {
    S.AWAITING_APPROVAL: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.SENDING, S.CANCELLED}),
    S.DEFERRED: frozenset({S.SENDING, S.FAILED, S.CANCELLED}),
    # From SENDING only the outcome of the attempt, or reconciliation after a crash.
    S.SENDING: frozenset({S.SENT, S.DEFERRED, S.FAILED, S.QUEUED}),
    S.SENT: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

# First retry after 1 minute, doubling, never more than 4 hours apart.
FIRST_RETRY = timedelta(minutes=1)
LONGEST_WAIT = timedelta(hours=4)


def sources(new: S) -> tuple[S, ...]:
    """Every state a message may be in to move to ``new``."""
    return tuple(old for old, targets in TRANSITIONS.items() if new in targets)


def retry_at(attempts: int, now: datetime, deadline: datetime | None) -> datetime | None:
    """When to try again after ``attempts`` failed tries, or None once past the deadline."""
    wait: timedelta = min(FIRST_RETRY * 2 ** min(max(attempts - 1, 0), 20), LONGEST_WAIT)
    at: datetime = now + wait
    if deadline is not None and at > deadline:
        return None
    return at
