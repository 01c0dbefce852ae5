"""Reconcile: the steps that take a service from what is to what should be.

Pure, level-triggered, like a controller: it compares the desired state that
follows from the lifecycle's verdict with the observed state (read from the
driver at apply time, or assumed from the last applied phase when only
planning) and never asks which event arrived. Running it twice on the same
inputs gives the same steps with the same idempotency keys, so the journal
takes each once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from drivers.base import MachineSpec, Observed, Power
from orchestrator.core.lifecycle import Entry, Phase, Verdict
from orchestrator.core.policy import SuspendMethod
from orchestrator.core.steps import Action, StepKind


class Machine(StrEnum):
    NONE = "none"
    RUNNING = "running"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"
    PURGED = "purged"


# What each phase asks of the machine and of its addresses.
DESIRED: dict[Phase, tuple[Machine, bool]] = {
    Phase.PENDING: (Machine.NONE, False),
    Phase.ACTIVE: (Machine.RUNNING, True),
    Phase.GRACE: (Machine.RUNNING, True),
    Phase.SUSPENDED: (Machine.SUSPENDED, True),
    Phase.IPS_RECLAIMED: (Machine.SUSPENDED, False),
    Phase.TERMINATED: (Machine.ARCHIVED, False),
    Phase.HANDED_OVER: (Machine.SUSPENDED, False),
    Phase.PURGED: (Machine.PURGED, False),
}


@dataclass(frozen=True)
class Current:
    """What is there now: the machine as a driver sees it, the addresses the store holds."""

    machine: Observed
    addresses: tuple[str, ...]
    was_purged: bool = False
    spec: MachineSpec | None = None


@dataclass(frozen=True)
class StepSpec:
    service_id: str
    action: Action
    key: str
    automatic: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    why: str = ""

    @property
    def destructive(self) -> bool:
        return self.action.destructive


def reconcile(service_id: str, verdict: Verdict, current: Current, revision: int) -> list[StepSpec]:
    """The steps, in order; ``revision`` counts the service's events, so keys change with facts."""
    if verdict.phase == Phase.PENDING:
        return []  # nothing is provisioned before the first payment, nothing to take away
    machine, keep_ips = DESIRED[verdict.phase]
    generation = _generation(verdict, revision)
    actions = _machine_actions(machine, verdict, current)
    if machine in (Machine.RUNNING, Machine.SUSPENDED) and _resized(current):
        actions.append(Action.RESIZE)
    actions[1:1] = _address_actions(keep_ips, current)
    steps = [_spec(service_id, action, generation, verdict) for action in _ordered(actions)]
    steps += _notices(service_id, verdict)
    if verdict.phase == Phase.HANDED_OVER:
        steps.append(_spec(service_id, Action.HAND_OVER, generation, verdict))
    return steps


def _ordered(actions: list[Action]) -> list[Action]:
    """Undo first (bring back, readdress, resume), then the ladder's order."""
    order = list(Action)
    return sorted(dict.fromkeys(actions), key=order.index)


def _machine_actions(machine: Machine, verdict: Verdict, current: Current) -> list[Action]:
    seen = current.machine
    exists = seen.power != Power.ABSENT
    if machine == Machine.PURGED:
        return [
            a
            for a, needed in (
                (Action.TERMINATE, exists),
                # A dedicated box's disks can't be seen out of band: its purge record says.
                (Action.PURGE, seen.data_present and not current.was_purged),
            )
            if needed
        ]
    if machine == Machine.ARCHIVED:
        return [Action.TERMINATE] if exists else []
    bring_back = _bring_back(seen, current.was_purged)
    if machine == Machine.RUNNING:
        needs_resume = exists and (seen.power != Power.RUNNING or seen.network_cut)
        return bring_back + ([Action.RESUME] if needs_resume else [])
    if current.was_purged and not exists:
        return []
    return bring_back + ([] if _suspended_as(seen, verdict.suspend_method) else [Action.SUSPEND])


def _resized(current: Current) -> bool:
    return current.spec is not None and current.machine.differs_from(current.spec)


def _bring_back(seen: Observed, was_purged: bool) -> list[Action]:
    if seen.power != Power.ABSENT:
        return []
    if seen.data_present:
        return [Action.RESTORE]
    return [] if was_purged else [Action.CREATE]


def _suspended_as(seen: Observed, method: SuspendMethod | None) -> bool:
    if method is not None and method.cuts_network:
        return seen.network_cut and seen.power != Power.ABSENT
    if method == SuspendMethod.PAUSE:
        return seen.power == Power.PAUSED
    return seen.power == Power.OFF


def _address_actions(keep: bool, current: Current) -> list[Action]:
    if keep and not current.addresses and not current.was_purged:
        return [Action.ASSIGN_IPS]
    if not keep and current.addresses:
        return [Action.RECLAIM_IPS]
    return []


def _notices(service_id: str, verdict: Verdict) -> list[StepSpec]:
    """The latest notice reached, unless a destructive step came after it (then it is
    stale): a reminder before the due date, a notice before termination."""
    reached = list(verdict.reached)
    notices = [i for i, e in enumerate(reached) if e.step == StepKind.NOTICE]
    if not notices or any(e.destructive for e in reached[notices[-1] + 1 :]):
        return []
    latest = [reached[notices[-1]]]
    return [
        StepSpec(
            service_id,
            Action.NOTICE,
            f"{service_id}:notice:{e.at.isoformat()}",
            True,
            {"at": e.at.isoformat(), **({"note": e.note} if e.note else {})},
            e.clause,
        )
        for e in latest
    ]


def _spec(service_id: str, action: Action, generation: str, verdict: Verdict) -> StepSpec:
    entry = _entry_for(action, verdict)
    params: dict[str, Any] = {"phase": verdict.phase.value}
    if action == Action.SUSPEND:
        params["method"] = verdict.suspend_method
    why = entry.clause if entry else _reason_words(verdict, action)
    automatic = entry.automatic if entry else True
    return StepSpec(
        service_id, action, f"{service_id}:{action.value}:{generation}", automatic, params, why
    )


def _entry_for(action: Action, verdict: Verdict) -> Entry | None:
    matches = [e for e in verdict.reached if action.step is not None and e.step == action.step]
    return matches[-1] if matches else None


def _reason_words(verdict: Verdict, action: Action) -> str:
    if verdict.reasons:
        return "; ".join(f"{r.owner.value}: {r.detail}" for r in verdict.reasons)
    if verdict.undo:
        return "paid: " + "; ".join(verdict.undo)
    return f"{action.value}: desired {verdict.phase.value}"


def _generation(verdict: Verdict, revision: int) -> str:
    """Names the situation the steps answer; a new situation gives new keys."""
    parts = [verdict.phase.value, str(revision)]
    parts += [f"{e.step}@{e.at.isoformat()}" for e in verdict.reached]
    parts += [f"{r.owner}@{r.since.isoformat()}" for r in verdict.reasons]
    parts += list(verdict.undo)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def assumed(phase: Phase, method: SuspendMethod | None, was_purged: bool) -> Observed:
    """The machine as the last applied phase left it, for planning without a driver."""
    machine, _ = DESIRED[phase]
    if machine == Machine.RUNNING:
        return Observed(Power.RUNNING, data_present=True)
    if machine == Machine.SUSPENDED:
        cut = method is not None and method.cuts_network
        paused = method == SuspendMethod.PAUSE
        power = Power.PAUSED if paused else Power.RUNNING if cut else Power.OFF
        return Observed(power, network_cut=cut, data_present=True)
    if machine == Machine.ARCHIVED:
        return Observed(Power.ABSENT, archived=True, data_present=True)
    return Observed(Power.ABSENT, data_present=not was_purged)
