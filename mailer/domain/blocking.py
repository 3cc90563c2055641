"""Pure judgement of likely blocking: delivery signals → a verdict → keep, switch identity, or ask a person."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from mailer.domain.classify.diagnosis import decide_reason
from mailer.domain.classify.model import Reason
from mailer.domain.classify.reasons import status_in_text


class Level(StrEnum):
    OK = "ok"
    SUSPECT = "suspect"
    LIKELY_BLOCKED = "likely_blocked"


class SignalKind(StrEnum):
    """What one observation says about mail from one identity to one address."""

    REFUSED = "refused"  # refused as coming from this sender, or by the receiver's policy
    FILTERED = "filtered"  # refused as spam or by a filter: weaker, the content may be at fault
    MISCONFIGURED = "misconfigured"  # the identity's own setup failed (authentication, PTR, relay)
    ENGAGED = "engaged"  # the debtor answered (or opened, through Mailchimp)
    REACHED = "reached"  # proof the mail arrives: an auto-reply, a delivery report
    ACCEPTED = "accepted"  # the receiving server took the message (from the outbox)


# Sisimai reasons by what they say about the sender. Blocked/rejected/policy/reputation name the
# sender or its server; spam and filter verdicts may be about the words; the last group points at
# the identity's own configuration, which another identity of the same business may share.
_REFUSED = frozenset(
    {Reason.BLOCKED, Reason.REJECTED, Reason.POLICY_VIOLATION, Reason.BAD_REPUTATION}
)
_FILTERED = frozenset({Reason.SPAM_DETECTED, Reason.FILTERED, Reason.NOT_COMPLIANT_RFC})
_MISCONFIGURED = frozenset({Reason.AUTH_FAILURE, Reason.REQUIRE_PTR, Reason.NO_RELAYING})


def signal_for(reason: Reason | None, status: str = "") -> SignalKind | None:
    """The blocking signal a failure reason is, or None when it is about the address itself.

    X.7.1 with words that name no cause ("delivery not authorized") is a refusal of this sender:
    RFC 3463 gives it for exactly that, and it is what sender-block tables answer.
    """
    if reason in _REFUSED:
        return SignalKind.REFUSED
    if reason in _FILTERED:
        return SignalKind.FILTERED
    if reason in _MISCONFIGURED:
        return SignalKind.MISCONFIGURED
    if reason is Reason.SECURITY_ERROR:
        return SignalKind.REFUSED if status[2:] == "7.1" else SignalKind.MISCONFIGURED
    return None


def smtp_reason(code: int, text: str, stage: str) -> tuple[Reason | None, str]:
    """The reason and enhanced status of a refusal met while sending (``stage``: mail/rcpt/data)."""
    status = status_in_text(text) or (f"{str(code)[0]}.0.0" if 400 <= code < 600 else "")
    context = {"mail": "in reply to MAIL FROM", "rcpt": "in reply to RCPT TO"}.get(stage, "")
    reason = decide_reason(text, status, context)
    if reason is None and stage == "mail":
        reason = Reason.REJECTED  # the sender itself was refused
    return reason, status


@dataclass(frozen=True, slots=True)
class Signal:
    """One observation: mail from ``identity`` (None: not tied to one) to ``address``."""

    at: datetime
    kind: SignalKind
    identity: str | None
    address: str
    source: str  # smtp, dsn, reply, autoreply, report, mailchimp, outbox
    detail: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "kind": self.kind.value,
            "identity": self.identity,
            "address": self.address,
            "source": self.source,
            "detail": self.detail[:300],
        }


@dataclass(frozen=True, slots=True)
class BlockingRules:
    """Config [blocking]: when silence counts, and how far failover may go."""

    silence_after: int = 3  # accepted, unanswered messages after earlier engagement
    max_switches: int = 1  # identity switches per case
    max_identities: int = 2  # identities that may ever write to one case
    pool: tuple[str, ...] = ()  # identity names in order of use; () = every configured identity
    problem_domains: int = 3  # an identity refused by this many domains at once is the problem
    problem_window: timedelta = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Verdict:
    identity: str
    address: str
    level: Level
    why: str
    evidence: tuple[Signal, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "address": self.address,
            "verdict": self.level.value,
            "why": self.why,
            "evidence": [s.to_json() for s in self.evidence],
        }


def assess(signals: Iterable[Signal], identity: str, address: str, rules: BlockingRules) -> Verdict:
    """Is mail from ``identity`` to ``address`` likely blocked, on this evidence?

    Only what happened since the address last proved it receives this identity's mail (a reply,
    an auto-reply, a delivery report) counts. Then: one refusal naming the sender or a policy is
    enough; a spam/filter verdict twice (once is suspect); the identity's own misconfiguration
    is suspect (it is the identity's problem, see ``identity_health``). Silence counts only for
    a debtor who engaged before: ``silence_after`` messages in a row that the debtor's server
    accepted, with no answer, no auto-reply and no bounce since.
    """
    target = address.lower()
    mine = sorted(
        (s for s in signals if s.address.lower() == target), key=lambda s: (s.at, s.kind.value)
    )
    proof = [
        s
        for s in mine
        if s.kind in (SignalKind.ENGAGED, SignalKind.REACHED) and s.identity in (None, identity)
    ]
    since = proof[-1].at if proof else None
    recent = [s for s in mine if s.identity == identity and (since is None or s.at > since)]
    refused = [s for s in recent if s.kind is SignalKind.REFUSED]
    filtered = [s for s in recent if s.kind is SignalKind.FILTERED]
    broken = [s for s in recent if s.kind is SignalKind.MISCONFIGURED]
    if refused:
        return Verdict(
            identity, address, Level.LIKELY_BLOCKED, "refused as from this sender", tuple(refused)
        )
    if len(filtered) >= 2:
        return Verdict(
            identity,
            address,
            Level.LIKELY_BLOCKED,
            "filtered as spam again and again",
            tuple(filtered),
        )
    if filtered:
        return Verdict(identity, address, Level.SUSPECT, "filtered as spam once", tuple(filtered))
    if broken:
        return Verdict(
            identity, address, Level.SUSPECT, "the identity's own setup was refused", tuple(broken)
        )
    engaged = [s for s in mine if s.kind is SignalKind.ENGAGED]
    if not engaged or rules.silence_after < 1:
        return Verdict(identity, address, Level.OK, "no refusal")
    # Silence: accepted messages in a row from this identity since the debtor last showed life.
    last_life = max(s.at for s in mine if s.kind in (SignalKind.ENGAGED, SignalKind.REACHED))
    unanswered = [s for s in recent if s.kind is SignalKind.ACCEPTED and s.at > last_life]
    evidence = (engaged[-1], *unanswered)
    if len(unanswered) >= rules.silence_after:
        why = f"answered before, then {len(unanswered)} accepted messages in a row went unanswered"
        return Verdict(identity, address, Level.LIKELY_BLOCKED, why, evidence)
    if rules.silence_after > 1 and len(unanswered) == rules.silence_after - 1:
        why = f"answered before, then {len(unanswered)} accepted messages went unanswered"
        return Verdict(identity, address, Level.SUSPECT, why, evidence)
    return Verdict(identity, address, Level.OK, "no refusal; the debtor has answered")


@dataclass(frozen=True, slots=True)
class Health:
    """Is the identity itself refused by many receivers at once (reputation, configuration)?"""

    identity: str
    problem: bool
    refusing: tuple[str, ...]  # domains that refused it in the window
    accepting: tuple[str, ...]  # domains that only accepted it in the window
    why: str

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "problem": self.problem,
            "refusing": list(self.refusing),
            "accepting": list(self.accepting),
            "why": self.why,
        }


_REFUSALS = (SignalKind.REFUSED, SignalKind.FILTERED, SignalKind.MISCONFIGURED)


def identity_health(
    identity: str, signals: Iterable[Signal], rules: BlockingRules, now: datetime
) -> Health:
    """Refused by ``problem_domains`` or more domains in the window, and by at least as many as
    accepted it without a refusal: the cause is the identity, not its debtors."""
    start = now - rules.problem_window
    refusing: set[str] = set()
    accepting: set[str] = set()
    for s in signals:
        if s.identity != identity or s.at < start or s.at > now:
            continue
        if s.kind in _REFUSALS:
            refusing.add(s.domain)
        elif s.kind is SignalKind.ACCEPTED:
            accepting.add(s.domain)
    accepting -= refusing
    problem = len(refusing) >= rules.problem_domains and len(refusing) >= len(accepting)
    why = (
        f"refused by {len(refusing)} domains in {rules.problem_window.days} days"
        f" (accepted without refusal by {len(accepting)}): its reputation or configuration"
        if problem
        else f"refused by {len(refusing)} of {len(refusing) + len(accepting)} domains"
    )
    return Health(identity, problem, tuple(sorted(refusing)), tuple(sorted(accepting)), why)


# --- the decision --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseState:
    """What the failover decision needs of a case."""

    identity: str  # the identity writing now
    used: frozenset[str]  # every identity that has written to the case, the current one included
    switches: int  # identity switches made so far
    refusal: str | None = None  # an explicit refusal (stop request, unsubscribe, spam complaint)
    disputed: bool = False
    verdicts: Mapping[str, Level] = field(default_factory=dict)  # other identities → same address


@dataclass(frozen=True, slots=True)
class Keep:
    why: str


@dataclass(frozen=True, slots=True)
class Switch:
    to: str
    why: str


@dataclass(frozen=True, slots=True)
class Review:
    reason: str
    suggestion: str = ""


@dataclass(frozen=True, slots=True)
class IdentityProblem:
    """The identity is the problem: report it, switch nothing (other identities stay unburnt)."""

    identity: str
    why: str


Decision = Keep | Switch | Review | IdentityProblem

OTHER_CHANNEL = (
    "another channel: a registered letter or burofax, a phone call, or a collection agency"
)


def decide(
    verdict: Verdict,
    case: CaseState,
    pool: Sequence[str],
    troubled: Collection[str],
    rules: BlockingRules,
) -> Decision:
    """What a case does about ``verdict`` on its current identity.

    ``pool`` lists the creditor's identities allowed for failover, in order; ``troubled`` those
    whose health is a problem. Never a switch after an explicit refusal or a dispute, never past
    ``max_switches`` or ``max_identities``, never to an identity outside the pool or already
    likely blocked for this address.
    """
    if verdict.level is not Level.LIKELY_BLOCKED:
        return Keep(verdict.why)
    if case.refusal:
        return Review(f"likely blocked, but the debtor refused contact ({case.refusal}): no switch")
    if case.disputed:
        return Review("likely blocked, but the claim is disputed: a person decides", OTHER_CHANNEL)
    if case.identity in troubled:
        return IdentityProblem(case.identity, f"{case.identity} is refused widely: fix it first")
    if case.switches >= rules.max_switches:
        return Review(
            f"likely blocked ({verdict.why}) and the case has used its {rules.max_switches}"
            " identity switch(es)",
            OTHER_CHANNEL,
        )
    room = len(case.used | {case.identity}) < rules.max_identities
    for name in pool:
        if name == case.identity or name in troubled:
            continue
        if case.verdicts.get(name) is Level.LIKELY_BLOCKED:
            continue
        if name in case.used or room:
            return Switch(name, verdict.why)
    return Review(
        f"likely blocked ({verdict.why}) and every identity allowed for this case is used or"
        " blocked",
        OTHER_CHANNEL,
    )
