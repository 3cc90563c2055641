"""Likely blocking, pure: signals → verdict, identity health, and the failover decision's guardrails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from mailer.domain.blocking import (
    BlockingRules,
    CaseState,
    IdentityProblem,
    Keep,
    Level,
    Review,
    Signal,
    SignalKind,
    Switch,
    Verdict,
    assess,
    decide,
    identity_health,
    signal_for,
    smtp_reason,
)
from mailer.domain.classify.model import Reason

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
A, B, C = "billing", "accounts", "office"
TO = "pay@debtor.example"
RULES = BlockingRules(silence_after=3)


def sig(kind: SignalKind, hours: int, identity: str | None = A, address: str = TO) -> Signal:
    return Signal(T0 + timedelta(hours=hours), kind, identity, address, "test")


def verdict(level: Level, identity: str = A) -> Verdict:
    return Verdict(identity, TO, level, "because")


# --- reading the server's words ------------------------------------------------------------


def test_smtp_refusals_that_name_the_sender_or_a_policy_are_refusals() -> None:
    for code, text, stage in [
        (550, "5.7.1 Sender blocked by recipient", "rcpt"),
        (554, "5.7.1 <billing@creditor.test>: Sender address rejected: Access denied", "rcpt"),
        (550, "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org", "rcpt"),
        (553, "sorry, your envelope sender is in my badmailfrom list", "mail"),
        (550, "5.7.1 Delivery not authorized, message refused", "data"),
    ]:
        reason, status = smtp_reason(code, text, stage)
        assert signal_for(reason, status) is SignalKind.REFUSED, (text, reason)


def test_an_unknown_address_is_not_a_block() -> None:
    reason, status = smtp_reason(550, "5.1.1 <nobody@debtor.example>: User unknown", "rcpt")
    assert reason is Reason.USER_UNKNOWN and status == "5.1.1"
    assert signal_for(reason, status) is None
    assert signal_for(Reason.MAILBOX_FULL, "4.2.2") is None


def test_spam_verdicts_are_weaker_and_authentication_points_at_the_identity() -> None:
    assert signal_for(Reason.SPAM_DETECTED, "5.7.1") is SignalKind.FILTERED
    assert signal_for(Reason.AUTH_FAILURE, "5.7.26") is SignalKind.MISCONFIGURED
    reason, status = smtp_reason(
        550, "5.7.26 Unauthenticated email is not accepted (DMARC)", "data"
    )
    assert signal_for(reason, status) is SignalKind.MISCONFIGURED


# --- the verdict -------------------------------------------------------------------------------


def test_one_refusal_is_likely_blocked_with_its_evidence() -> None:
    refusal = sig(SignalKind.REFUSED, 1)
    result = assess([sig(SignalKind.ACCEPTED, 0), refusal], A, TO, RULES)
    assert result.level is Level.LIKELY_BLOCKED and result.evidence == (refusal,)
    # The refusal is about A: B has no verdict against it.
    assert assess([refusal], B, TO, RULES).level is Level.OK
    # Addresses compare without case.
    assert assess([refusal], A, TO.upper(), RULES).level is Level.LIKELY_BLOCKED


def test_filtering_once_is_suspect_twice_likely() -> None:
    once = [sig(SignalKind.FILTERED, 1)]
    assert assess(once, A, TO, RULES).level is Level.SUSPECT
    assert assess([*once, sig(SignalKind.FILTERED, 30)], A, TO, RULES).level is (
        Level.LIKELY_BLOCKED
    )


def test_proof_of_arrival_clears_older_refusals() -> None:
    signals = [sig(SignalKind.REFUSED, 1), sig(SignalKind.REACHED, 2)]
    assert assess(signals, A, TO, RULES).level is Level.OK
    # ...but only proof for this identity (or none named) counts.
    signals = [sig(SignalKind.REFUSED, 1), sig(SignalKind.REACHED, 2, identity=B)]
    assert assess(signals, A, TO, RULES).level is Level.LIKELY_BLOCKED


def test_silence_counts_only_after_engagement() -> None:
    accepted = [sig(SignalKind.ACCEPTED, 24 * n) for n in range(1, 6)]
    assert assess(accepted, A, TO, RULES).level is Level.OK  # never answered: just ignoring us
    engaged = sig(SignalKind.ENGAGED, 0)
    two = [engaged, *accepted[:2]]
    three = [engaged, *accepted[:3]]
    assert assess([engaged, accepted[0]], A, TO, RULES).level is Level.OK
    assert assess(two, A, TO, RULES).level is Level.SUSPECT
    result = assess(three, A, TO, RULES)
    assert result.level is Level.LIKELY_BLOCKED
    assert result.evidence == (engaged, *accepted[:3])
    # An auto-reply after the second message proves arrival: the count starts again.
    alive = [engaged, *accepted[:2], sig(SignalKind.REACHED, 24 * 2 + 1), accepted[2]]
    assert assess(alive, A, TO, RULES).level is Level.OK


def test_silence_of_another_identity_is_not_this_ones() -> None:
    signals = [sig(SignalKind.ENGAGED, 0), *(sig(SignalKind.ACCEPTED, n, B) for n in (1, 2, 3))]
    assert assess(signals, B, TO, RULES).level is Level.LIKELY_BLOCKED
    assert assess(signals, A, TO, RULES).level is Level.OK


# --- identity health ----------------------------------------------------------------------------


def test_an_identity_refused_by_many_domains_is_the_problem() -> None:
    now = T0 + timedelta(days=1)
    refusals = [sig(SignalKind.REFUSED, n, A, f"x@d{n}.example") for n in range(3)]
    health = identity_health(A, refusals, RULES, now)
    assert health.problem and health.refusing == ("d0.example", "d1.example", "d2.example")
    # Many more domains accept it: a few refusals are about those debtors, not the identity.
    accepted = [sig(SignalKind.ACCEPTED, n, A, f"x@ok{n}.example") for n in range(10)]
    assert not identity_health(A, refusals + accepted, RULES, now).problem
    # Old refusals are outside the window.
    assert not identity_health(A, refusals, RULES, now + timedelta(days=30)).problem
    assert not identity_health(B, refusals, RULES, now).problem


# --- the decision -------------------------------------------------------------------------------


def state(**kw: object) -> CaseState:
    base: dict[str, object] = {"identity": A, "used": frozenset({A}), "switches": 0}
    base.update(kw)
    return CaseState(**base)  # type: ignore[arg-type]


def test_likely_blocked_switches_to_the_next_identity_of_the_pool() -> None:
    decision = decide(verdict(Level.LIKELY_BLOCKED), state(), (A, B, C), (), RULES)
    assert decision == Switch(B, "because")
    assert isinstance(decide(verdict(Level.SUSPECT), state(), (A, B), (), RULES), Keep)


def test_never_past_a_refusal_or_a_dispute() -> None:
    refused = decide(verdict(Level.LIKELY_BLOCKED), state(refusal="asked"), (A, B), (), RULES)
    assert isinstance(refused, Review) and "refused contact" in refused.reason
    disputed = decide(verdict(Level.LIKELY_BLOCKED), state(disputed=True), (A, B), (), RULES)
    assert isinstance(disputed, Review)


def test_caps_and_the_other_channel() -> None:
    used_up = decide(
        verdict(Level.LIKELY_BLOCKED, B), state(identity=B, used=frozenset({A, B}), switches=1),
        (A, B, C), (), RULES,
    )  # fmt: skip
    assert isinstance(used_up, Review) and "burofax" in used_up.suggestion
    # Only blocked or troubled identities left: a person, with a suggestion.
    blocked = decide(
        verdict(Level.LIKELY_BLOCKED), state(verdicts={B: Level.LIKELY_BLOCKED}), (A, B), (), RULES
    )
    assert isinstance(blocked, Review) and blocked.suggestion
    troubled = decide(verdict(Level.LIKELY_BLOCKED), state(), (A, B), (B,), RULES)
    assert isinstance(troubled, Review)


def test_a_troubled_identity_is_reported_not_routed_around() -> None:
    decision = decide(verdict(Level.LIKELY_BLOCKED), state(), (A, B), (A,), RULES)
    assert isinstance(decision, IdentityProblem) and decision.identity == A


names = st.sampled_from([A, B, C, "d"])


@given(
    current=names,
    used=st.frozensets(names, max_size=4),
    switches=st.integers(0, 3),
    refusal=st.sampled_from([None, "asked to stop"]),
    disputed=st.booleans(),
    blocked=st.frozensets(names),
    troubled=st.frozensets(names),
    pool=st.lists(names, unique=True, max_size=4),
    max_switches=st.integers(0, 2),
    max_identities=st.integers(1, 3),
    level=st.sampled_from(list(Level)),
)
def test_property_no_decision_breaks_a_guardrail(
    current: str,
    used: frozenset[str],
    switches: int,
    refusal: str | None,
    disputed: bool,
    blocked: frozenset[str],
    troubled: frozenset[str],
    pool: list[str],
    max_switches: int,
    max_identities: int,
    level: Level,
) -> None:
    rules = BlockingRules(max_switches=max_switches, max_identities=max_identities)
    case = state(
        identity=current, used=used | {current}, switches=switches, refusal=refusal,
        disputed=disputed, verdicts={n: Level.LIKELY_BLOCKED for n in blocked},
    )  # fmt: skip
    decision = decide(verdict(level, current), case, pool, troubled, rules)
    if not isinstance(decision, Switch):
        return
    assert level is Level.LIKELY_BLOCKED
    assert refusal is None and not disputed
    assert switches < max_switches
    assert decision.to in pool and decision.to != current
    assert decision.to not in blocked and decision.to not in troubled and current not in troubled
    assert len(case.used | {decision.to}) <= max(max_identities, len(case.used))


@given(
    verdicts=st.lists(st.sampled_from(list(Level)), min_size=1, max_size=12),
    max_switches=st.integers(0, 3),
    max_identities=st.integers(1, 4),
)
def test_property_a_case_never_exceeds_its_caps(
    verdicts: list[Level], max_switches: int, max_identities: int
) -> None:
    """Whatever verdicts come, applying every decision keeps within both caps."""
    rules = BlockingRules(max_switches=max_switches, max_identities=max_identities)
    pool = (A, B, C, "d", "e")
    case = state()
    for level in verdicts:
        decision = decide(verdict(level, case.identity), case, pool, (), rules)
        if isinstance(decision, Review):
            break
        if isinstance(decision, Switch):
            case = state(
                identity=decision.to, used=case.used | {decision.to}, switches=case.switches + 1
            )
    assert case.switches <= max_switches
    assert len(case.used) <= max_identities
