"""Guards: the last checks before a destructive step touches anything.

Plans can be minutes old; billing is not. Right before a destructive step
runs, the executor asks ``check``: is the step still warranted by billing as
it stands now, is a hold covering it, has an operator approved it (or does
the policy make it automatic), and is the blast-radius breaker closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.core.facts import Facts
from orchestrator.core.lifecycle import Phase, Verdict, covers, hold_end
from orchestrator.core.policy import Policy, StepKind
from orchestrator.core.reconcile import DESIRED, Action, Machine
from orchestrator.state import audit, journal
from orchestrator.state.models import MetaRow, ServiceRow

log = logging.getLogger("orchestrator.run.guards")
BREAKER_KEY = "breaker"

# Which phases still call for each destructive action.
WARRANTED: dict[Action, frozenset[Phase]] = {
    Action.SUSPEND: frozenset(p for p, (m, _) in DESIRED.items() if m == Machine.SUSPENDED),
    Action.RECLAIM_IPS: frozenset(p for p, (_, keep) in DESIRED.items() if not keep),
    Action.TERMINATE: frozenset(
        p for p, (m, _) in DESIRED.items() if m in (Machine.ARCHIVED, Machine.PURGED)
    ),
    Action.PURGE: frozenset({Phase.PURGED}),
    Action.HAND_OVER: frozenset({Phase.HANDED_OVER}),
}
STEP_OF: dict[Action, StepKind] = {
    Action.SUSPEND: StepKind.SUSPEND,
    Action.RECLAIM_IPS: StepKind.RECLAIM_IPS,
    Action.TERMINATE: StepKind.TERMINATE,
    Action.PURGE: StepKind.PURGE,
    Action.HAND_OVER: StepKind.HAND_OVER,
}


def still_warranted(action: Action, verdict: Verdict) -> bool:
    """Billing re-checked: a destructive action only for a phase that calls for it."""
    return not verdict.good_standing and verdict.phase in WARRANTED[action]


def covering_hold(action: Action, facts: Facts, policy: Policy, now: datetime) -> str | None:
    """A hold in force now that covers the action (the lifecycle's own reading of it)."""
    step = STEP_OF[action]
    for hold in facts.holds:
        if hold.placed_at > now or not covers(hold, step, policy):
            continue
        end = hold_end(hold, policy)
        if end is None or end > now:
            return f"{hold.kind} hold {hold.id}"
    return None


@dataclass(frozen=True)
class BreakerSettings:
    window: timedelta = timedelta(hours=1)
    max_share: float = 0.2
    min_count: int = 10


class Breaker:
    """Pauses destructive work when an unusual share of services turns destructive at once.

    A billing glitch that marks every invoice unpaid must not wipe a
    provider: once tripped, the breaker stays open until an operator resets it.
    """

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings

    def is_open(self, session: Session) -> bool:
        return session.get(MetaRow, BREAKER_KEY) is not None

    def admit(self, session: Session, batch: int, now: datetime) -> bool:
        """Whether ``batch`` more destructive steps may start; trips the breaker if not."""
        if self.is_open(session):
            return False
        recent = journal.destructive_since(session, now - self.settings.window) + batch
        services = int(session.scalar(select(func.count()).select_from(ServiceRow)) or 0)
        share = recent / max(services, 1)
        if recent >= self.settings.min_count and share > self.settings.max_share:
            self._trip(session, recent, services, now)
            return False
        return True

    def _trip(self, session: Session, recent: int, services: int, now: datetime) -> None:
        message = (
            f"BREAKER OPEN: {recent} destructive steps of {services} services within "
            f"{self.settings.window} (over {self.settings.max_share:.0%}); destructive work "
            "paused until an operator runs 'orchestrator breaker reset'"
        )
        log.critical(message)
        session.merge(MetaRow(key=BREAKER_KEY, value=f"{now.isoformat()} {message}"))
        audit.append(session, now, "breaker", "breaker.tripped", "*", {"message": message})

    def reset(self, session: Session, actor: str, now: datetime) -> bool:
        row = session.get(MetaRow, BREAKER_KEY)
        if row is None:
            return False
        session.delete(row)
        audit.append(session, now, actor, "breaker.reset", "*", {"was": row.value})
        return True

    def status(self, session: Session) -> str | None:
        row = session.get(MetaRow, BREAKER_KEY)
        return row.value if row else None
