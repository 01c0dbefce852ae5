"""Why a service is suspended, and who may lift it: billing's ladder, abuse, an
operator, a hold that suspends. A payment lifts only billing's reasons."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from orchestrator.core.days import add_offset
from orchestrator.core.facts import Facts
from orchestrator.core.holds import hold_end
from orchestrator.core.policy import AbuseRung, Policy, ReasonOwner
from orchestrator.core.steps import StepKind

if TYPE_CHECKING:
    from orchestrator.core.lifecycle import Entry


@dataclass(frozen=True)
class Reason:
    """Why a service is suspended, and who may lift it."""

    owner: ReasonOwner
    detail: str
    since: datetime
    until: datetime | None = None
    # An abuse rung that ends the service outright (the policy's ``action: terminate``).
    terminates: bool = False


def reasons(
    facts: Facts, policy: Policy, reached: list[Entry], now: datetime
) -> tuple[Reason, ...]:
    reasons = list(_billing_reasons(reached))
    reasons += _abuse_reasons(facts, policy, now)
    reasons += [
        Reason(ReasonOwner(owner), "operator suspension", at)
        for owner, at in facts.admin_suspensions
    ]
    reasons += _hold_reasons(facts, policy, now)
    return tuple(reasons)


def _billing_reasons(reached: list[Entry]) -> list[Reason]:
    suspends = [e for e in reached if e.step == StepKind.SUSPEND]
    return [Reason(ReasonOwner.BILLING, f"{e.anchor.value}: {e.clause}", e.at) for e in suspends]


def _abuse_reasons(facts: Facts, policy: Policy, now: datetime) -> list[Reason]:
    reasons, strikes = [], dict[str, int]()
    work = policy.calendar.work_calendar()
    for category, at in facts.abuse:
        strikes[category] = strikes.get(category, 0) + 1
        rung = _rung(policy, category, strikes[category])
        if rung is None or at > now:
            continue
        if rung.action == "terminate":
            detail = f"terminate: {rung.clause}"
            reasons.append(Reason(ReasonOwner.ABUSE, detail, at, terminates=True))
            continue
        until = add_offset(at, rung.lasts, work) if rung.lasts else None
        if until is None or until > now:
            reasons.append(
                Reason(
                    ReasonOwner.ABUSE, f"{category} #{strikes[category]}: {rung.clause}", at, until
                )
            )
    return reasons


def _rung(policy: Policy, category: str, strike: int) -> AbuseRung | None:
    rungs = [r for r in policy.abuse.get(category, []) if r.strike <= strike]
    return max(rungs, key=lambda r: r.strike, default=None)


def _hold_reasons(facts: Facts, policy: Policy, now: datetime) -> list[Reason]:
    reasons = []
    for hold in facts.holds:
        kind = policy.hold_kind(hold.kind)
        if kind is None or not kind.suspends or hold.placed_at > now:
            continue
        until = hold_end(hold, policy)
        if until is None or until > now:
            detail = f"{hold.kind} hold {hold.id}: {kind.clause}"
            reasons.append(Reason(kind.owner, detail, hold.placed_at, until))
    return reasons
