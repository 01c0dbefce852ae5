"""Looking without changing: drift between the real machines and the applied phases,
and the colocated boxes whose hand-over is due, for an operator to act on."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from drivers.base import DriverError, ServiceRef
from orchestrator.core.facts import Facts
from orchestrator.core.steps import Action
from orchestrator.engine.reports import Drift, HandOver
from orchestrator.engine.tick import steps_for
from orchestrator.state import services

if TYPE_CHECKING:
    from orchestrator.engine.orchestrator import Orchestrator


def sync(orch: Orchestrator, now: datetime) -> list[str]:
    """Services whose real state differs from what the store says was applied become due."""
    drifted = [d.service_id for d in drift(orch, now) if d.corrections]
    if drifted:
        with orch.sessions.begin() as session:
            services.make_due(session, drifted, now)
    return drifted


def drift(orch: Orchestrator, now: datetime) -> list[Drift]:
    """Every applied service whose real state (power above all) is not what its phase wants.

    A machine that cannot be observed (a BMC that does not answer) is
    reported with no corrections: unknown is not the same as wrong.
    """
    with orch.sessions() as session:
        ids = services.applied(session)
    found = (_drift_of(orch, service_id, now) for service_id in ids)
    return [d for d in found if d is not None]


def _drift_of(orch: Orchestrator, service_id: str, now: datetime) -> Drift | None:
    facts = orch.facts(service_id)
    verdict = orch.verdict(facts, now)
    try:
        observed = orch.driver(facts.host).inspect(ServiceRef(service_id, facts.host))
    except DriverError as exc:
        return Drift(service_id, facts.host, verdict.phase.value, f"unknown: {exc}", ())
    with orch.sessions() as session:
        specs = steps_for(session, facts, verdict, observed)
    if not specs:
        return None
    kinds = tuple(spec.action.value for spec in specs)
    return Drift(service_id, facts.host, verdict.phase.value, observed.power.value, kinds)


def hand_overs(orch: Orchestrator, now: datetime) -> list[HandOver]:
    """Colocation services whose hand_over deadline has passed, earliest deadline first.

    Whether the step is still to be journaled, awaiting an operator's
    ``apply --yes`` or done, and whether a hold keeps it back: the
    hardware is the customer's, so this is a list for people, not a wipe.
    """
    with orch.sessions() as session:
        rows = services.stored_facts(session, "colocation")
        found = [_hand_over(orch, session, Facts.from_json(raw), now) for _, raw in rows]
    return sorted((h for h in found if h is not None), key=lambda h: h.deadline)


def _hand_over(
    orch: Orchestrator, session: Session, facts: Facts, now: datetime
) -> HandOver | None:
    verdict = orch.verdict(facts, now)
    deadlines = [
        (e.planned_at, e)
        for e in verdict.timeline
        if e.step.value == "hand_over" and e.planned_at is not None and e.planned_at <= now
    ]
    if not deadlines:
        return None
    deadline, entry = deadlines[-1]
    step = services.last_step_state(session, facts.service_id, Action.HAND_OVER)
    uplink = orch.inventory.hosts()[facts.host].uplink
    return HandOver(
        facts.service_id,
        facts.customer,
        facts.policy,
        facts.host,
        f"{uplink.router} {uplink.port}" if uplink else None,
        deadline,
        verdict.phase.value,
        step or "not journaled",
        entry.blocked_by,
        entry.clause,
    )
