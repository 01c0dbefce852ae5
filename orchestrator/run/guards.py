"""Guards: the one gate before a step touches anything.

Plans can be minutes old; billing is not. Right before a step runs, the
executor asks ``check``: is a destructive step still warranted by billing as
it stands now, is a hold covering it, has an operator approved it (or does
the policy make it automatic); may a backup or restore run in this phase,
and is a backup still inside its night's window. Before a batch of
destructive steps starts, the blast-radius ``Breaker`` must be closed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.core import backups
from orchestrator.core.facts import Facts
from orchestrator.core.holds import blocking_hold
from orchestrator.core.lifecycle import Phase, Verdict
from orchestrator.core.policy import Policy
from orchestrator.core.reconcile import DESIRED, Machine
from orchestrator.core.steps import Action
from orchestrator.state import audit, journal
from orchestrator.state.models import MetaRow, ServiceRow, StepRow

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


@dataclass(frozen=True)
class Stop:
    """Why a step does not run now, and the journal state it goes to instead."""

    state: str
    reason: str


def check(
    session: Session,
    step: StepRow,
    facts: Facts,
    policy: Policy,
    verdict: Verdict,
    now: datetime,
    yes: bool,
) -> Stop | None:
    """None if the step may run now; else where it goes and why.

    ``verdict`` is the lifecycle's reading of ``facts`` at ``now``, computed
    once by the tick and passed down; ``facts`` are read fresh from the store
    just before the step runs, so billing as it stands decides.
    """
    action = Action(step.kind)
    if action.scheduled:
        return _check_scheduled(session, step, facts, policy, verdict, now)
    if not action.destructive:
        return None
    if not still_warranted(action, verdict):
        return Stop(journal.CANCELLED, "billing changed: no longer warranted")
    if (hold := covering_hold(action, facts, policy, now)) is not None:
        return Stop(journal.HELD, f"held by {hold}")
    if not yes and not json.loads(step.params).get("automatic", True):
        return Stop(journal.AWAITING, "not automatic in the policy: needs 'apply --yes'")
    return None


def _check_scheduled(
    session: Session, step: StepRow, facts: Facts, policy: Policy, verdict: Verdict, now: datetime
) -> Stop | None:
    """A backup or restore checks the service's phase and holds when it is about to run."""
    refused = backups.refusal(verdict, backups.rules_of(facts, policy))
    if refused:
        return Stop(journal.CANCELLED, refused)
    if step.kind == Action.RESTORE_BACKUP and (
        hold := covering_hold(Action.PURGE, facts, policy, now)
    ):
        return Stop(journal.HELD, f"held by {hold}: a restore would overwrite what it keeps")
    if step.kind == Action.BACKUP:
        return _missed_window(session, step, now)
    return None


def _missed_window(session: Session, step: StepRow, now: datetime) -> Stop | None:
    """A backup whose window closed before it could run waits for the next night's.

    The daemon may have been down, or the host busy; running it now, in the
    day, would load the host when the window exists to spare it.
    """
    params = json.loads(step.params)
    closes = datetime.fromisoformat(params["window_closes"])
    if now < closes:
        return None
    days = (now - closes).days + 1
    slot = datetime.fromisoformat(params["slot"]) + timedelta(days=days)
    moved = {
        **params,
        "slot": slot.isoformat(),
        "window_closes": (closes + timedelta(days=days)).isoformat(),
    }
    journal.reschedule(session, step.id, slot, moved)
    return Stop(
        journal.RETRY, f"its window closed at {closes.isoformat()}; moved to {slot.isoformat()}"
    )


def still_warranted(action: Action, verdict: Verdict) -> bool:
    """Billing re-checked: a destructive action only for a phase that calls for it."""
    return not verdict.good_standing and verdict.phase in WARRANTED[action]


def covering_hold(action: Action, facts: Facts, policy: Policy, now: datetime) -> str | None:
    """A hold in force now that covers the action's step (the lifecycle's own reading)."""
    assert action.step is not None, f"{action} is no ladder step: no hold covers it"
    hold, _ = blocking_hold(action.step, now, facts.holds, policy)
    return f"{hold.kind} hold {hold.id}" if hold is not None else None


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
