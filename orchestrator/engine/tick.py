"""One tick: journal -> admit -> execute -> settle, for every service that is due.

Each due service is observed through its driver, its verdict computed once
and reconciled into steps, which go to the journal before anything runs. The
executor then runs what is runnable, each step through ``guards.check`` with
facts read fresh and the tick's verdict for them; settling records the
phase as applied once no step of the service is open.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from drivers.base import DriverError, Observed, Power, ServiceRef
from orchestrator.core.facts import Facts
from orchestrator.core.lifecycle import Phase, Verdict, lifecycle
from orchestrator.core.policy import Policy
from orchestrator.core.reconcile import Current, StepSpec, assumed, reconcile
from orchestrator.core.steps import Action
from orchestrator.engine import intake
from orchestrator.engine.reports import ApplyReport, ServicePlan
from orchestrator.run import actions, guards
from orchestrator.run.executor import Executor
from orchestrator.state import audit, ipam, journal, services
from orchestrator.state.models import MetaRow, ServiceRow, StepRow

if TYPE_CHECKING:
    from orchestrator.engine.orchestrator import Orchestrator


class Verdicts:
    """The tick's verdicts: the lifecycle runs once per service and facts, and the
    verdict is passed down as a value to the guard and to settling. Facts that
    changed while the tick ran (a payment, a purge done) are judged anew."""

    def __init__(self, policies: dict[str, Policy], now: datetime) -> None:
        self.policies, self.now = policies, now
        self._known: dict[str, tuple[Facts, Verdict]] = {}
        self._lock = threading.Lock()

    def of(self, facts: Facts) -> Verdict:
        with self._lock:
            known = self._known.get(facts.service_id)
        if known is not None and known[0] == facts:
            return known[1]
        verdict = lifecycle(facts, self.policies[facts.policy], self.now)
        with self._lock:
            self._known[facts.service_id] = (facts, verdict)
        return verdict


def plan(orch: Orchestrator, now: datetime) -> Iterator[ServicePlan]:
    """What would happen at ``now`` to every service, assuming the last applied state."""
    with orch.sessions() as session:
        held = services.addresses_by_service(session)
        for service_id, applied, facts_json in services.planning_rows(session):
            facts = Facts.from_json(facts_json)
            found = plan_one(orch, facts, applied, held.get(service_id, ()), now)
            if found.steps:
                yield found


def plan_one(
    orch: Orchestrator, facts: Facts, applied: str, held: tuple[str, ...], now: datetime
) -> ServicePlan:
    verdict = orch.verdict(facts, now)
    was_purged = applied == Phase.PURGED.value
    observed = (
        Observed(Power.ABSENT)
        if applied == services.NEW
        else assumed(Phase(applied), verdict.suspend_method, was_purged)
    )
    current = Current(observed, held, was_purged)
    steps = reconcile(facts.service_id, verdict, current, facts.revision)
    return ServicePlan(facts.service_id, facts.policy, facts.product, verdict.phase, applied, steps)


def apply(orch: Orchestrator, now: datetime, yes: bool, actor: str) -> ApplyReport:
    """Reconcile every due service against its real state, then run the journal."""
    report = ApplyReport()
    verdicts = Verdicts(orch.policies, now)
    reconciled: dict[str, int] = {}
    with orch.sessions() as session:
        due = services.due(session, now)
    for service_id in due:
        report.planned += journal_service(
            orch, service_id, now, report, reconciled, actor, verdicts
        )
    runnable = _admit(orch, now, yes)
    report.steps = executor(orch, now, yes, verdicts).run(runnable, now)
    for service_id in dict.fromkeys([*due, *(s.service_id for s in runnable)]):
        _settle(orch, service_id, now, reconciled.get(service_id), verdicts)
    with orch.sessions.begin() as session:
        session.merge(MetaRow(key="last_tick", value=now.isoformat()))
    return report


def journal_service(
    orch: Orchestrator,
    service_id: str,
    now: datetime,
    report: ApplyReport,
    reconciled: dict[str, int],
    actor: str = "scheduler",
    verdicts: Verdicts | None = None,
) -> int:
    facts = orch.facts(service_id)
    try:
        observed = orch.driver(facts.host).inspect(ServiceRef(service_id, facts.host))
    except DriverError as exc:
        report.skipped.append(f"{service_id}: cannot observe: {exc}")
        return 0
    verdict = (verdicts or Verdicts(orch.policies, now)).of(facts)
    with orch.sessions.begin() as session:
        specs = steps_for(session, facts, verdict, observed)
        rows = journal.enqueue(session, specs, facts.host, now)
        if rows:
            detail = {"steps": [r.kind for r in rows], "phase": verdict.phase.value}
            audit.append(session, now, actor, "steps.journaled", service_id, detail)
    reconciled[service_id] = facts.revision
    return len(rows)


def steps_for(
    session: Session, facts: Facts, verdict: Verdict, observed: Observed
) -> list[StepSpec]:
    """Reconcile against what a driver just saw and what the store holds."""
    held = ipam.held_by(session, facts.service_id)
    purged = journal.purged(session, facts.service_id) and not verdict.reprovision
    current = Current(observed, held, purged, actions.machine_spec(facts))
    return reconcile(facts.service_id, verdict, current, facts.revision)


def _admit(orch: Orchestrator, now: datetime, yes: bool) -> list[StepRow]:
    """The runnable steps; destructive ones only if the breaker lets this many through."""
    with orch.sessions.begin() as session:
        runnable = journal.runnable(session, now, yes)
        destructive = [s for s in runnable if s.destructive]
        if destructive and not orch.breaker.admit(session, len(destructive), now):
            journal.mark(session, [s.id for s in destructive], journal.PAUSED, "breaker open")
            runnable = [s for s in runnable if not s.destructive]
    return runnable


def executor(orch: Orchestrator, now: datetime, yes: bool, verdicts: Verdicts) -> Executor:
    limits = {name: host.max_concurrent for name, host in orch.inventory.hosts().items()}
    return Executor(
        orch.sessions,
        partial(actions.perform_step, lambda step: _context(orch, step, now)),
        lambda session, step: _guard(orch, session, step, now, yes, verdicts),
        limits,
        orch.settings.executor,
        orch.sleep,
        orch.lanes,
        orch.fence,
        lambda step: _holds(orch, step, verdicts),
    )


def _guard(
    orch: Orchestrator,
    session: Session,
    step: StepRow,
    now: datetime,
    yes: bool,
    verdicts: Verdicts,
) -> tuple[str, str] | None:
    facts = orch.facts(step.service_id, session)
    policy = orch.policies[facts.policy]
    stop = guards.check(session, step, facts, policy, verdicts.of(facts), now, yes)
    return (stop.state, stop.reason) if stop is not None else None


def _holds(orch: Orchestrator, step: StepRow, verdicts: Verdicts) -> bool:
    """Whether the real state already has what a step taken over wanted (its guard has
    passed: it is still warranted): observed now and reconciled again, its action is
    no longer asked for. A scheduled step (a backup) has no such answer: it runs again."""
    if Action(step.kind).scheduled:
        return False
    facts = orch.facts(step.service_id)
    observed = orch.driver(facts.host).inspect(ServiceRef(step.service_id, facts.host))
    with orch.sessions() as session:
        specs = steps_for(session, facts, verdicts.of(facts), observed)
    return Action(step.kind) not in {spec.action for spec in specs}


def _context(orch: Orchestrator, step: StepRow, now: datetime) -> actions.Context:
    return orch.context(orch.facts(step.service_id), now, Action(step.kind))


def _settle(
    orch: Orchestrator, service_id: str, now: datetime, reconciled: int | None, verdicts: Verdicts
) -> None:
    """Record the phase as applied once no step is open; otherwise look again later.

    Only facts this tick reconciled are settled: an event that landed while
    the tick ran (another revision) leaves the service due, so its steps
    are planned at the next tick instead of being marked applied unseen.
    The row is locked, so an ingest waits for this or this for it.
    """
    with orch.sessions.begin() as session:
        row = session.get(ServiceRow, service_id, with_for_update=True)
        if row is None:
            return
        facts = orch.facts(service_id, session)
        verdict = intake.record(orch, session, row, facts, now, verdicts.of)
        if facts.revision != reconciled:
            row.next_at = now
        elif journal.open_steps(session, service_id) == 0:
            row.applied_phase, row.next_at = verdict.phase.value, verdict.next_at
        else:
            retry = now + orch.settings.executor.retry_later
            row.next_at = min(verdict.next_at, retry) if verdict.next_at else retry

