"""The words for what is done to a service, each defined once with what it implies.

A policy's ladder speaks of step kinds (notice, suspend, ... purge); reconcile
and the journal speak of actions, which add the undoing and provisioning
work (create, resume, assign addresses) and the scheduled backups. Every
ladder step is carried out by the action of the same name, so whether a
step is destructive, which action runs it and whether a legal hold must keep
it back are answered here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """What the run asks of a driver or of the store. The order is the order of work:
    undo first (bring back, readdress, resume), then the ladder's order."""

    CREATE = "create"
    RESTORE = "restore"
    ASSIGN_IPS = "assign_ips"
    RESUME = "resume"
    RESIZE = "resize"
    NOTICE = "notice"
    SUSPEND = "suspend"
    RECLAIM_IPS = "reclaim_ips"
    TERMINATE = "terminate"
    HAND_OVER = "hand_over"
    PURGE = "purge"
    # Journaled by the backup schedule or an operator, never by reconcile.
    BACKUP = "backup"
    VERIFY_BACKUP = "verify_backup"
    RESTORE_BACKUP = "restore_backup"

    @property
    def destructive(self) -> bool:
        """Takes something from the customer: guarded, approved, counted by the breaker."""
        return self in DESTRUCTIVE_ACTIONS

    @property
    def scheduled(self) -> bool:
        """Journaled for a time of its own, not asked for by reconcile: a newer plan never
        supersedes it, and one waiting for its night does not keep a phase from settling."""
        return self in SCHEDULED_ACTIONS

    @property
    def step(self) -> StepKind | None:
        """The ladder step this action carries out, if it is one."""
        return StepKind(self.value) if self.value in StepKind._value2member_map_ else None


class StepKind(StrEnum):
    """A rung of a policy's ladder."""

    NOTICE = "notice"
    SUSPEND = "suspend"
    RECLAIM_IPS = "reclaim_ips"
    TERMINATE = "terminate"
    PURGE = "purge"
    HAND_OVER = "hand_over"

    @property
    def action(self) -> Action:
        return Action(self.value)

    @property
    def destructive(self) -> bool:
        return self.action.destructive

    @property
    def takes_data(self) -> bool:
        """Data or hardware is gone from the customer after it: a legal hold must keep it
        back, whatever else the policy lets that hold block."""
        return self in (StepKind.TERMINATE, StepKind.PURGE, StepKind.HAND_OVER)


DESTRUCTIVE_ACTIONS = frozenset(
    {Action.SUSPEND, Action.RECLAIM_IPS, Action.TERMINATE, Action.HAND_OVER, Action.PURGE}
)
SCHEDULED_ACTIONS = frozenset({Action.BACKUP, Action.VERIFY_BACKUP, Action.RESTORE_BACKUP})

# The order a ladder's destructive steps must keep (hand_over, where a ladder has
# it instead of terminate and purge, comes after the suspension).
LADDER_ORDER = (StepKind.SUSPEND, StepKind.RECLAIM_IPS, StepKind.TERMINATE, StepKind.PURGE)
