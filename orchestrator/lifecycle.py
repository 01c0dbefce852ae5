"""The lifecycle: one pure function from (facts, policy, now) to a verdict.

This file is the whole answer to "when is a VPS suspended?": a ladder of
steps from the policy is laid on the anchors found in the facts, holds delay
or block the steps they cover, and the steps whose time has come decide the
phase. No I/O and no clock: ``now`` is a parameter, so a test can live
through sixty days in milliseconds and an operator can ask about 1 December.

The phases, from good to gone, and the step that moves a service into each::

    active         (no step: billing in good standing)
    grace          notice      a reminder went out; the service still runs
    suspended      suspend     the policy's method: pause, shut down, cut network,
                               power off, port down; also any abuse, admin,
                               dispute or legal suspension reason
    ips_reclaimed  reclaim_ips addresses go to quarantine, not to another customer
    terminated     terminate   the machine goes, its data is archived
    handed_over    hand_over   colocation hardware goes to an operator, never wiped
    purged         purge       every copy of the data is destroyed

Paying ends a billing ladder. What was done is then undone by reconcile
(level-triggered, from the difference between this verdict and the real
state); ``Verdict.undo`` says in words what that will be.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from orchestrator.days import add_offset, start_of_day
from orchestrator.facts import Facts, Hold
from orchestrator.policy import (
    DESTRUCTIVE_STEPS,
    AbuseRung,
    Anchor,
    Ladder,
    Policy,
    Product,
    ProductKind,
    ReasonOwner,
    StepKind,
)


class Phase(StrEnum):
    ACTIVE = "active"
    GRACE = "grace"
    SUSPENDED = "suspended"
    IPS_RECLAIMED = "ips_reclaimed"
    TERMINATED = "terminated"
    HANDED_OVER = "handed_over"
    PURGED = "purged"


# The one table of transitions: which phase a step moves a service into.
PHASE_AFTER: dict[StepKind, Phase] = {
    StepKind.NOTICE: Phase.GRACE,
    StepKind.SUSPEND: Phase.SUSPENDED,
    StepKind.RECLAIM_IPS: Phase.IPS_RECLAIMED,
    StepKind.TERMINATE: Phase.TERMINATED,
    StepKind.HAND_OVER: Phase.HANDED_OVER,
    StepKind.PURGE: Phase.PURGED,
}
SEVERITY: dict[Phase, int] = {phase: rank for rank, phase in enumerate(Phase)}


@dataclass(frozen=True)
class Entry:
    """One dated step of a service's timeline."""

    at: datetime
    step: StepKind
    phase: Phase
    anchor: Anchor
    clause: str
    method: str | None = None
    automatic: bool = True
    planned_at: datetime | None = None
    blocked_by: str | None = None
    if_paid: tuple[str, ...] = ()
    note: str | None = None

    @property
    def destructive(self) -> bool:
        return self.step in DESTRUCTIVE_STEPS


@dataclass(frozen=True)
class Reason:
    """Why a service is suspended, and who may lift it."""

    owner: ReasonOwner
    detail: str
    since: datetime
    until: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reasons: tuple[Reason, ...]
    next_at: datetime | None
    timeline: tuple[Entry, ...]
    undo: tuple[str, ...]
    suspend_method: str | None
    good_standing: bool
    at: datetime

    @property
    def reached(self) -> tuple[Entry, ...]:
        """The steps whose time has come by ``at`` and that no hold blocks."""
        return tuple(e for e in self.timeline if e.blocked_by is None and e.at <= self.at)


def lifecycle(facts: Facts, policy: Policy, now: datetime) -> Verdict:
    """The phase of one service at ``now``, when it next changes, and its whole timeline."""
    product = policy.product(ProductKind(facts.product))
    gone = _gone(facts, policy, product)
    timeline = () if gone else _timeline(facts, policy, product)
    reached = [e for e in timeline if e.blocked_by is None and e.at <= now]
    reasons = _reasons(facts, policy, reached, now)
    phase = _phase(gone, reached, reasons)
    return Verdict(
        phase=phase,
        reasons=reasons,
        next_at=_next_at(facts, policy, timeline, reasons, now),
        timeline=timeline,
        undo=_undo(facts, policy, product, now),
        suspend_method=_suspend_method(product, reached),
        good_standing=phase in (Phase.ACTIVE, Phase.GRACE) and not reasons,
        at=now,
    )


def _anchors(facts: Facts, policy: Policy) -> dict[Anchor, datetime]:
    zone, found = policy.zone, {}
    if (due := facts.oldest_unpaid_due) is not None:
        found[Anchor.OLDEST_UNPAID_DUE] = start_of_day(due, zone)
    if facts.subscription_end is not None:
        found[Anchor.SUBSCRIPTION_END] = start_of_day(facts.subscription_end, zone)
    if facts.deposit_exhausted_at is not None:
        found[Anchor.DEPOSIT_EXHAUSTED] = facts.deposit_exhausted_at
    if facts.closed_at is not None:
        found[Anchor.ACCOUNT_CLOSURE] = facts.closed_at
    return found


def _timeline(facts: Facts, policy: Policy, product: Product) -> tuple[Entry, ...]:
    anchors = _anchors(facts, policy)
    entries: list[Entry] = []
    for ladder in product.ladders:
        if ladder.anchor in anchors:
            planned = _ladder_entries(ladder, anchors[ladder.anchor], policy, product)
            entries.extend(_apply_holds(planned, facts.holds, policy))
    return tuple(sorted(entries, key=lambda e: (e.at, SEVERITY[e.phase])))


def _ladder_entries(
    ladder: Ladder, anchor_at: datetime, policy: Policy, product: Product
) -> list[Entry]:
    work = policy.calendar.work_calendar()
    entries = [
        Entry(
            at=add_offset(anchor_at, step.after, work),
            step=step.step,
            phase=PHASE_AFTER[step.step],
            anchor=ladder.anchor,
            clause=step.clause,
            method=step.method.value if step.method else None,
            automatic=step.automatic,
            note=step.note,
        )
        for step in ladder.steps
    ]
    entries.sort(key=lambda e: (e.at, SEVERITY[e.phase]))
    return [replace(e, planned_at=e.at, if_paid=_if_paid(e, entries, product)) for e in entries]


def _apply_holds(entries: list[Entry], holds: tuple[Hold, ...], policy: Policy) -> list[Entry]:
    """A hold delays the steps it covers to its end, or blocks them while it has none.

    Steps keep their order: once one is held, the later ones of the same ladder
    cannot overtake it.
    """
    out: list[Entry] = []
    floor: datetime | None = None
    blocker: str | None = None
    for entry in entries:
        at = max(entry.at, floor) if floor else entry.at
        hold, end = _blocking_hold(entry.step, at, holds, policy)
        if hold is not None and end is None:
            blocker = blocker or f"{hold.kind} hold {hold.id}"
        elif end is not None:
            at = end
        if blocker and entry.destructive:
            out.append(replace(entry, at=at, blocked_by=blocker))
            continue
        floor = at
        out.append(replace(entry, at=at))
    return out


def _blocking_hold(
    step: StepKind, at: datetime, holds: tuple[Hold, ...], policy: Policy
) -> tuple[Hold | None, datetime | None]:
    """The hold in force at ``at`` that covers ``step``, and when it ends (None: open-ended)."""
    for hold in holds:
        kind = policy.holds.get(hold.kind)
        if kind is None or step not in _blocked_steps(kind.owner, kind.blocks):
            continue
        end = hold_end(hold, policy)
        if hold.placed_at <= at and (end is None or end > at):
            return hold, end
    return None, None


def hold_end(hold: Hold, policy: Policy) -> datetime | None:
    """An explicit end wins; else the hold kind's fixed length (a dispute's 5x24 h)."""
    kind = policy.holds.get(hold.kind)
    if hold.until is not None or kind is None or kind.lasts is None:
        return hold.until
    return add_offset(hold.placed_at, kind.lasts, policy.calendar.work_calendar())


def _blocked_steps(owner: ReasonOwner, blocks: list[StepKind]) -> frozenset[StepKind]:
    """A legal hold blocks every destructive step, whatever the file says."""
    return DESTRUCTIVE_STEPS if owner == ReasonOwner.LEGAL else frozenset(blocks)


def _if_paid(entry: Entry, ladder: list[Entry], product: Product) -> tuple[str, ...]:
    """What paying after ``entry`` (and before the next step) would undo."""
    purge = next((e for e in ladder if e.step == StepKind.PURGE), None)
    done = {
        e.step for e in ladder if e.at <= entry.at and SEVERITY[e.phase] <= SEVERITY[entry.phase]
    }
    return undo_steps(done, product, purge.at if purge else None)


def undo_steps(done: set[StepKind], product: Product, purge_at: datetime | None) -> tuple[str, ...]:
    """The undo, in an operator's words, for the set of steps already done."""
    if StepKind.PURGE in done:
        return ("fresh provision only: the data was purged",)
    if StepKind.HAND_OVER in done:
        return ("hardware already handed to an operator: nothing to undo automatically",)
    actions: list[str] = []
    if StepKind.TERMINATE in done:
        if not product.undo.restore_from_archive:
            return ("fresh provision only: the policy does not restore terminated services",)
        until = f" (archive kept until {purge_at.isoformat()})" if purge_at else ""
        actions.append(f"restore from archive{until}")
    elif StepKind.SUSPEND in done:
        actions.append("unsuspend")
    if StepKind.RECLAIM_IPS in done:
        actions.append(_ip_undo(product))
    return tuple(actions)


def _ip_undo(product: Product) -> str:
    if product.undo.same_ip_within_quarantine:
        return f"same IP if still in quarantine ({product.ip_quarantine.words()}), else a new IP"
    return "a new IP"


def _reasons(
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
            reasons.append(Reason(ReasonOwner.ABUSE, f"terminate: {rung.clause}", at))
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
        kind = policy.holds.get(hold.kind)
        if kind is None or not kind.suspends or hold.placed_at > now:
            continue
        until = hold_end(hold, policy)
        if until is None or until > now:
            detail = f"{hold.kind} hold {hold.id}: {kind.clause}"
            reasons.append(Reason(kind.owner, detail, hold.placed_at, until))
    return reasons


def _phase(gone: Phase | None, reached: list[Entry], reasons: tuple[Reason, ...]) -> Phase:
    if gone is not None:
        return gone
    phase = max((e.phase for e in reached), key=SEVERITY.__getitem__, default=Phase.ACTIVE)
    if any(r.detail.startswith("terminate:") for r in reasons):
        phase = _worse(phase, Phase.TERMINATED)
    elif reasons:
        phase = _worse(phase, Phase.SUSPENDED)
    return phase


def _worse(a: Phase, b: Phase) -> Phase:
    return a if SEVERITY[a] >= SEVERITY[b] else b


def _gone(facts: Facts, policy: Policy, product: Product) -> Phase | None:
    """A past episode that reached purge or hand-over before payment ended it for good."""
    for episode in facts.episodes:
        anchor_at = start_of_day(episode.anchor_day, policy.zone)
        for ladder in product.ladders:
            if ladder.anchor != Anchor.OLDEST_UNPAID_DUE:
                continue
            entries = _ladder_entries(ladder, anchor_at, policy, product)
            done = [e for e in entries if e.at <= episode.cleared_at]
            final = [e.phase for e in done if e.phase in (Phase.PURGED, Phase.HANDED_OVER)]
            if final:
                return max(final, key=SEVERITY.__getitem__)
    return None


def _next_at(
    facts: Facts,
    policy: Policy,
    timeline: tuple[Entry, ...],
    reasons: tuple[Reason, ...],
    now: datetime,
) -> datetime | None:
    moments = [e.at for e in timeline if e.at > now and e.blocked_by is None]
    moments += [r.until for r in reasons if r.until is not None and r.until > now]
    moments += [h.until for h in facts.holds if h.until is not None and h.until > now]
    moments += [h.placed_at for h in facts.holds if h.placed_at > now]
    moments += [at for _, at in facts.abuse if at > now]
    return min(moments, default=None)


def _undo(facts: Facts, policy: Policy, product: Product, now: datetime) -> tuple[str, ...]:
    """What the last payment turned back, for ``explain``."""
    past = [e for e in facts.episodes if e.cleared_at <= now]
    if not past:
        return ()
    episode = past[-1]
    anchor_at = start_of_day(episode.anchor_day, policy.zone)
    done: set[StepKind] = set()
    purge_at = None
    for ladder in product.ladders:
        if ladder.anchor == Anchor.OLDEST_UNPAID_DUE:
            entries = _ladder_entries(ladder, anchor_at, policy, product)
            done |= {e.step for e in entries if e.at <= episode.cleared_at}
            purge_at = next((e.at for e in entries if e.step == StepKind.PURGE), None)
    return undo_steps(done, product, purge_at)


def _suspend_method(product: Product, reached: list[Entry]) -> str | None:
    methods = [e.method for e in reached if e.step == StepKind.SUSPEND and e.method]
    if methods:
        return methods[-1]
    return default_suspend_method(product)


def default_suspend_method(product: Product) -> str | None:
    """Abuse and operator suspensions use the product's billing method."""
    for ladder in product.ladders:
        for step in ladder.steps:
            if step.method is not None:
                return step.method.value
    return None


def quarantine_end(product: Product, released_at: datetime, policy: Policy) -> datetime:
    return add_offset(released_at, product.ip_quarantine, policy.calendar.work_calendar())


__all__ = [
    "PHASE_AFTER",
    "Entry",
    "Phase",
    "Reason",
    "Verdict",
    "default_suspend_method",
    "hold_end",
    "lifecycle",
    "quarantine_end",
    "undo_steps",
]
