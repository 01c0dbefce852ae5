"""Backups as the policies want them: who is backed up, in which window, what is kept.

The rules live in each product's ``backups`` (policy.py); the week's plan is
``backup_schedule.schedule_week``'s; which copies stay is ``prune.prune``'s.
This module joins them to services: a service's backup job (host, storage,
window on its policy's clock, length), whether a backup or restore may run
in the service's phase (cybernet: none while suspended for late payment),
and the retention decisions for the copies a driver lists, in which the
archive kept after termination never counts and is never pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from drivers.base import BackupCopy
from orchestrator.core.backup_schedule import BackupJob, Frequency, Slot, Window
from orchestrator.core.facts import Facts
from orchestrator.core.inventory import HostVars
from orchestrator.core.lifecycle import Phase, Verdict
from orchestrator.core.policy import Backups, Policy, ProductKind, ReasonOwner
from orchestrator.core.prune import Backup, Decision, KeepRules, prune
from orchestrator.core.reconcile import StepSpec
from orchestrator.core.steps import Action

# Phases in which the machine exists and is the customer's to back up.
LIVE_PHASES = frozenset({Phase.ACTIVE, Phase.GRACE, Phase.SUSPENDED, Phase.IPS_RECLAIMED})
SUSPENDED_PHASES = frozenset({Phase.SUSPENDED, Phase.IPS_RECLAIMED})


def rules_of(facts: Facts, policy: Policy) -> Backups:
    return policy.product(ProductKind(facts.product)).backups


def frequency(facts: Facts, policy: Policy) -> Frequency | None:
    """Weekly or daily, or None when the product has no backups."""
    rules = rules_of(facts, policy)
    if rules.frequency == "none":
        return None
    if rules.daily_addon and facts.spec.get("daily_backups"):
        return "daily"
    return rules.frequency


def refusal(verdict: Verdict, rules: Backups) -> str | None:
    """Why no backup or restore may run in this phase, or None when one may."""
    if verdict.phase not in LIVE_PHASES:
        return f"the service is {verdict.phase.value}: there is no machine to back up"
    unpaid = any(r.owner == ReasonOwner.BILLING for r in verdict.reasons)
    if verdict.phase in SUSPENDED_PHASES and unpaid and not rules.while_suspended:
        return f"suspended for nonpayment, and the policy takes no backup then ({rules.clause})"
    return None


def window_of(rules: Backups, policy: Policy) -> Window:
    start, end = rules.window_times()
    return Window(start, end, policy.zone)


def job_for(
    facts: Facts,
    policy: Policy,
    host_name: str,
    host: HostVars,
    measured: timedelta | None,
) -> BackupJob | None:
    """The service's backup job for the week, or None when it has none."""
    how_often = frequency(facts, policy)
    if how_often is None:
        return None
    length = measured if measured is not None else timedelta(minutes=host.backup_minutes)
    return BackupJob(
        facts.service_id,
        host_name,
        host.backup_storage or host_name,
        max(length, timedelta(minutes=1)),
        how_often,
        window_of(rules_of(facts, policy), policy),
    )


def estimate(seconds: float | None) -> timedelta | None:
    """A measured backup's length with a margin, rounded up to whole minutes."""
    if seconds is None:
        return None
    minutes = int(seconds * 1.25 // 60) + 1
    return timedelta(minutes=minutes)


def slot_key(slot: Slot, week_start: date) -> str:
    """One backup per service per week (weekly) or per night (daily): planning twice is safe."""
    when = slot.day if slot.job.frequency == "daily" else week_start
    return f"{slot.job.service_id}:backup:{slot.job.frequency}:{when.isoformat()}"


def step_for(slot: Slot, week_start: date) -> StepSpec:
    """The journal step of one planned backup; it carries its window's end, so that a
    backup that could not run in time knows it missed its window."""
    window = slot.job.window
    closes = slot.end if window is None else window.on(slot.day)[1]
    params = {
        "slot": slot.start.isoformat(),
        "window_closes": closes.isoformat(),
        "frequency": slot.job.frequency,
    }
    why = f"{slot.job.frequency} backup, window {window}" if window else "backup"
    return StepSpec(
        slot.job.service_id, Action.BACKUP, slot_key(slot, week_start), True, params, why
    )


def retention(copies: Sequence[BackupCopy], rules: KeepRules) -> list[Decision]:
    """Which copies stay, newest first; the termination archive is kept outside the rules."""
    kept_apart = [
        Decision(c.backup_id, "protected", "the archive kept after termination")
        for c in copies
        if c.archive
    ]
    ordinary = [Backup(c.backup_id, c.taken_at, c.protected) for c in copies if not c.archive]
    decided = {d.backup_id: d for d in [*prune(ordinary, rules), *kept_apart]}
    newest_first = sorted(copies, key=lambda c: c.taken_at, reverse=True)
    return [decided[c.backup_id] for c in newest_first]


__all__ = [
    "frequency",
    "job_for",
    "refusal",
    "retention",
    "rules_of",
    "slot_key",
    "step_for",
    "window_of",
]
