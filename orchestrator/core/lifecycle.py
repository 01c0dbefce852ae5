"""The lifecycle: one pure function from (facts, policy, now) to a verdict.

This file is the whole answer to "when is a VPS suspended?": a ladder of
steps from the policy is laid on the anchors found in the facts, holds delay
or block the steps they cover, and the steps whose time has come decide the
phase. No I/O and no clock: ``now`` is a parameter, so a test can live
through sixty days in milliseconds and an operator can ask about 1 December.

The phases, from good to gone, and the step that moves a service into each::

    pending        (no step: the policy provisions only after the first payment)
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

Holds delay, they don't compress: a step a hold covers waits for its end, and
every later step of its ladder keeps its distance from the step before, so
an archive window is as long as the terms promise however late the hold
ends. A payment that comes after the data was already purged cannot bring
it back: the phase stays ``purged`` with ``attention`` saying so, until the
policy (``reprovision_after_purge: automatic``) or an operator asks for a
fresh machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from orchestrator.core.days import add_offset, start_of_day
from orchestrator.core.facts import Episode, Facts, Hold
from orchestrator.core.holds import blocking_hold, hold_end
from orchestrator.core.policy import (
    REVIEW_HOLD,
    Anchor,
    Ladder,
    Policy,
    Product,
    ProductKind,
    SuspendMethod,
)
from orchestrator.core.reasons import Reason
from orchestrator.core.reasons import reasons as find_reasons
from orchestrator.core.steps import StepKind

PAID_AFTER_PURGE = "paid after purge: the data is gone; needs a fresh provision"
UNDER_REVIEW = "unmatched payment under review: destructive steps held"


class Phase(StrEnum):
    PENDING = "pending"
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
    method: SuspendMethod | None = None
    automatic: bool = True
    planned_at: datetime | None = None
    blocked_by: str | None = None
    delayed_by: str | None = None
    if_paid: tuple[str, ...] = ()
    note: str | None = None

    @property
    def destructive(self) -> bool:
        return self.step.destructive


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reasons: tuple[Reason, ...]
    next_at: datetime | None
    timeline: tuple[Entry, ...]
    undo: tuple[str, ...]
    suspend_method: SuspendMethod | None
    good_standing: bool
    at: datetime
    attention: tuple[str, ...] = ()
    reprovision: bool = False

    @property
    def reached(self) -> tuple[Entry, ...]:
        """The steps whose time has come by ``at`` and that no hold blocks."""
        return tuple(e for e in self.timeline if e.blocked_by is None and e.at <= self.at)


def lifecycle(facts: Facts, policy: Policy, now: datetime) -> Verdict:
    """The phase of one service at ``now``, when it next changes, and its whole timeline."""
    product = policy.product(ProductKind(facts.product))
    if _awaiting_activation(facts, product, now):
        return _pending(facts, product, now)
    reprovision = _reprovision(facts, product, now)
    gone = None if reprovision else _gone(facts, policy, product)
    timeline = () if gone else _timeline(facts, policy, product)
    reached = [e for e in timeline if e.blocked_by is None and e.at <= now]
    reasons = find_reasons(facts, policy, reached, now)
    phase = _phase(gone, reached, reasons)
    attention = _attention(facts, policy)
    if _purged_for_good(facts, reprovision, now) and phase != Phase.PURGED:
        phase, attention = Phase.PURGED, (PAID_AFTER_PURGE, *attention)
    return Verdict(
        phase=phase,
        reasons=reasons,
        next_at=_next_at(facts, policy, timeline, reasons, now),
        timeline=timeline,
        undo=_undo(facts, policy, product, now),
        suspend_method=_suspend_method(product, reached),
        good_standing=phase in (Phase.ACTIVE, Phase.GRACE) and not reasons,
        at=now,
        attention=attention,
        reprovision=reprovision,
    )


def _awaiting_activation(facts: Facts, product: Product, now: datetime) -> bool:
    """An order billing calls unpaid waits for its first payment, where the policy says so."""
    if product.activation is None or product.activation.when == "on_create":
        return False
    if not facts.awaiting_payment:
        return False
    return facts.first_paid_at is None or facts.first_paid_at > now


def _pending(facts: Facts, product: Product, now: datetime) -> Verdict:
    """Not provisioned until the first payment: no ladder runs on a machine never made."""
    later = facts.first_paid_at if facts.first_paid_at and facts.first_paid_at > now else None
    return Verdict(
        phase=Phase.PENDING,
        reasons=(),
        next_at=later,
        timeline=(),
        undo=(),
        suspend_method=default_suspend_method(product),
        good_standing=True,
        at=now,
        attention=(),
    )


def _provisioned_episodes(facts: Facts, product: Product) -> list[Episode]:
    """Nonpayment before an order was first paid ran no ladder: nothing existed to act on."""
    if product.activation is None or not facts.awaiting_payment or facts.first_paid_at is None:
        return list(facts.episodes)
    return [e for e in facts.episodes if e.cleared_at > facts.first_paid_at]


def _reprovision(facts: Facts, product: Product, now: datetime) -> bool:
    """Whether a service whose data was purged is to get a fresh machine."""
    if facts.purged_at is None or facts.purged_at > now:
        return False
    if facts.reprovision_at is not None and facts.purged_at < facts.reprovision_at <= now:
        return True
    return product.undo.reprovision_after_purge == "automatic"


def _purged_for_good(facts: Facts, reprovision: bool, now: datetime) -> bool:
    return facts.purged_at is not None and facts.purged_at <= now and not reprovision


def _attention(facts: Facts, policy: Policy) -> tuple[str, ...]:
    reviews = [h for h in facts.holds if h.kind == REVIEW_HOLD and hold_end(h, policy) is None]
    return (UNDER_REVIEW,) if reviews else ()


def _anchors(facts: Facts, policy: Policy) -> dict[Anchor, datetime]:
    zone, found = policy.zone, {}
    if (due := facts.oldest_unpaid_due) is not None:
        found[Anchor.OLDEST_UNPAID_DUE] = start_of_day(due, zone)
    if facts.subscription_end is not None:
        found[Anchor.SUBSCRIPTION_END] = start_of_day(facts.subscription_end, zone)
    if (short := facts.deposit_short_at) is not None:
        found[Anchor.DEPOSIT_EXHAUSTED] = short
    if facts.closed_at is not None:
        found[Anchor.ACCOUNT_CLOSURE] = facts.closed_at
    return found


def _timeline(facts: Facts, policy: Policy, product: Product) -> tuple[Entry, ...]:
    anchors = _anchors(facts, policy)
    entries: list[Entry] = []
    for ladder in product.ladders:
        if ladder.anchor in anchors:
            planned = _ladder_entries(ladder, anchors[ladder.anchor], policy, product)
            floor = _reversal_floor(facts, policy, product, ladder.anchor)
            held = _apply_holds(planned, facts.holds, policy, floor)
            entries.extend(held + _relative_notices(ladder, held, policy))
    entries += _deposit_reminders(facts, product)
    return tuple(sorted(entries, key=lambda e: (e.at, SEVERITY[e.phase])))


def _ladder_entries(
    ladder: Ladder, anchor_at: datetime, policy: Policy, product: Product
) -> list[Entry]:
    """The ladder's steps counted from its anchor (notices counted from a step come later)."""
    work = policy.calendar.work_calendar()
    entries = [
        Entry(
            at=add_offset(anchor_at, step.after, work),
            step=step.step,
            # A reminder before the anchor (an invoice sent ahead) leaves the service active.
            phase=Phase.ACTIVE if step.after.negative else PHASE_AFTER[step.step],
            anchor=ladder.anchor,
            clause=step.clause,
            method=step.method,
            automatic=step.automatic,
            note=step.note,
        )
        for step in ladder.steps
        if step.relative_to is None
    ]
    entries.sort(key=lambda e: (e.at, SEVERITY[e.phase]))
    return [replace(e, planned_at=e.at, if_paid=_if_paid(e, entries, product)) for e in entries]


def _relative_notices(ladder: Ladder, entries: list[Entry], policy: Policy) -> list[Entry]:
    """Notices counted from a step (three days before terminate) move with that step;
    while the step is blocked, so is its notice."""
    work, found = policy.calendar.work_calendar(), []
    for step in ladder.steps:
        target = next((e for e in entries if e.step == step.relative_to), None)
        if step.relative_to is None or target is None or target.blocked_by is not None:
            continue
        notice = _notice(
            add_offset(target.at, step.after, work),
            ladder.anchor,
            step.clause,
            step.note or f"{step.after} from {target.step}",
        )
        planned = add_offset(target.planned_at or target.at, step.after, work)
        found.append(replace(notice, planned_at=planned, delayed_by=target.delayed_by))
    return found


def _notice(at: datetime, anchor: Anchor, clause: str, note: str) -> Entry:
    """A notice that does not sit at an offset of its own (billing sends it)."""
    return Entry(
        at=at,
        step=StepKind.NOTICE,
        phase=Phase.GRACE,
        anchor=anchor,
        clause=clause,
        planned_at=at,
        note=note,
    )


def _deposit_reminders(facts: Facts, product: Product) -> list[Entry]:
    """A reminder when the balance first falls to each share of the monthly bill, for
    as long as it stays there (a top-up above it ends that run)."""
    if product.deposit is None:
        return []
    found = []
    for percent in product.deposit.reminders:
        since = None
        for reading in facts.deposit:
            low = reading.monthly is not None and reading.balance * 100 <= (
                reading.monthly * percent
            )
            since = (since or reading.at) if low else None
        if since is not None:
            words = f"deposit at or below {percent}% of the monthly bill"
            found.append(_notice(since, Anchor.DEPOSIT_EXHAUSTED, product.deposit.clause, words))
    return found


def _reversal_floor(
    facts: Facts, policy: Policy, product: Product, anchor: Anchor
) -> datetime | None:
    """No step before the reversal's grace has passed, when a reopened invoice is the
    oldest unpaid one (its original due date anchors the ladder)."""
    oldest = facts.oldest_unpaid_due
    if anchor != Anchor.OLDEST_UNPAID_DUE or product.reversal is None or oldest is None:
        return None
    work = policy.calendar.work_calendar()
    ends = [
        add_offset(at, product.reversal.grace, work)
        for invoice, at in facts.reopened.items()
        if facts.invoices.get(invoice) == oldest
    ]
    return max(ends, default=None)


def _apply_holds(
    entries: list[Entry], holds: tuple[Hold, ...], policy: Policy, floor: datetime | None = None
) -> list[Entry]:
    """A hold delays the steps it covers to its end, or blocks them while it has none.

    The delay carries on: every later step of the ladder moves by at least as
    much, so each keeps its distance from the step before it (an archive kept
    seven days is kept seven days after a late release). ``floor`` is a time
    before which no destructive step may run (a reversal's grace).
    """
    out: list[Entry] = []
    shift, blocker, delayed_by = timedelta(0), None, None
    for entry in entries:
        at = entry.at + shift
        if floor is not None and entry.destructive and at < floor:
            shift, at, delayed_by = shift + (floor - at), floor, "a payment reversal's grace"
        while (found := blocking_hold(entry.step, at, holds, policy))[0] is not None:
            hold, end = found
            if end is None:
                blocker = blocker or f"{hold.kind} hold {hold.id}"  # type: ignore[union-attr]
                break
            shift, at = shift + (end - at), end
            delayed_by = f"{hold.kind} hold {hold.id} until {end.isoformat()}"  # type: ignore[union-attr]
        if blocker and entry.destructive:
            out.append(replace(entry, at=at, blocked_by=blocker))
            continue
        out.append(replace(entry, at=at, delayed_by=delayed_by if shift else None))
    return out


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


def _phase(gone: Phase | None, reached: list[Entry], reasons: tuple[Reason, ...]) -> Phase:
    if gone is not None:
        return gone
    phase = max((e.phase for e in reached), key=SEVERITY.__getitem__, default=Phase.ACTIVE)
    if any(r.terminates for r in reasons):
        phase = _worse(phase, Phase.TERMINATED)
    elif reasons:
        phase = _worse(phase, Phase.SUSPENDED)
    return phase


def _worse(a: Phase, b: Phase) -> Phase:
    return a if SEVERITY[a] >= SEVERITY[b] else b


def _gone(facts: Facts, policy: Policy, product: Product) -> Phase | None:
    """A past episode whose hand-over came before payment ended it: the hardware went to
    an operator for good. A purge is gone only once it ran (``facts.purged_at``, from the
    journal): a payment after the purge's date but before it ran keeps the data, and
    the customer gets it back."""
    for episode in _provisioned_episodes(facts, product):
        anchor_at = start_of_day(episode.anchor_day, policy.zone)
        for ladder in product.ladders:
            if ladder.anchor != Anchor.OLDEST_UNPAID_DUE:
                continue
            entries = _ladder_entries(ladder, anchor_at, policy, product)
            done = [e for e in entries if e.at <= episode.cleared_at]
            if any(e.phase == Phase.HANDED_OVER for e in done):
                return Phase.HANDED_OVER
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
    ends = [hold_end(h, policy) for h in facts.holds]
    moments += [end for end in ends if end is not None and end > now]
    moments += [h.placed_at for h in facts.holds if h.placed_at > now]
    moments += [at for _, at in facts.abuse if at > now]
    return min(moments, default=None)


def _undo(facts: Facts, policy: Policy, product: Product, now: datetime) -> tuple[str, ...]:
    """What the last payment turned back, for ``explain``."""
    past = [e for e in _provisioned_episodes(facts, product) if e.cleared_at <= now]
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
    if facts.purged_at is None:
        done.discard(StepKind.PURGE)  # its day came, but it never ran: the archive is there
    return undo_steps(done, product, purge_at)


def _suspend_method(product: Product, reached: list[Entry]) -> SuspendMethod | None:
    methods = [e.method for e in reached if e.step == StepKind.SUSPEND and e.method]
    if methods:
        return methods[-1]
    return default_suspend_method(product)


def default_suspend_method(product: Product) -> SuspendMethod | None:
    """Abuse and operator suspensions use the product's billing method."""
    for ladder in product.ladders:
        for step in ladder.steps:
            if step.method is not None:
                return step.method
    return None


def quarantine_end(product: Product, released_at: datetime, policy: Policy) -> datetime:
    return add_offset(released_at, product.ip_quarantine, policy.calendar.work_calendar())


__all__ = [
    "PHASE_AFTER",
    "Entry",
    "Phase",
    "Verdict",
    "default_suspend_method",
    "lifecycle",
    "quarantine_end",
    "undo_steps",
]
