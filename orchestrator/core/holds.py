"""Holds: which steps a hold keeps back, and until when.

Read by the lifecycle (a hold delays the steps it covers), by the reasons
(a hold that suspends) and by the guard right before a step runs, so all
three read a hold the same way.
"""

from __future__ import annotations

from datetime import datetime

from orchestrator.core.days import add_offset
from orchestrator.core.facts import Hold
from orchestrator.core.policy import Policy
from orchestrator.core.steps import StepKind


def blocking_hold(
    step: StepKind, at: datetime, holds: tuple[Hold, ...], policy: Policy
) -> tuple[Hold | None, datetime | None]:
    """The hold in force at ``at`` that covers ``step``, and when it ends (None: open-ended)."""
    for hold in holds:
        if not covers(hold, step, policy):
            continue
        end = hold_end(hold, policy)
        if hold.placed_at <= at and (end is None or end > at):
            return hold, end
    return None, None


def covers(hold: Hold, step: StepKind, policy: Policy) -> bool:
    """What a hold keeps back is what its kind blocks (a legal one at least every step
    that takes data or hardware away: the policy model refuses less)."""
    kind = policy.hold_kind(hold.kind)
    return kind is not None and step in kind.blocks


def hold_end(hold: Hold, policy: Policy) -> datetime | None:
    """A release ends a hold; else an explicit end; else the kind's fixed length
    (a dispute's 5x24 h); else it lasts until released."""
    kind = policy.hold_kind(hold.kind)
    end = hold.until
    if end is None and kind is not None and kind.lasts is not None:
        end = add_offset(hold.placed_at, kind.lasts, policy.calendar.work_calendar())
    if hold.released_at is not None and (end is None or hold.released_at < end):
        return hold.released_at
    return end
