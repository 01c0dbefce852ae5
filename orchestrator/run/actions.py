"""What each journaled action does, through the drivers and the IP store.

One small function per action; each returns the record the journal keeps
(what the driver found, what changed, the evidence of a purge). The
drivers check the real state first, so running an action twice is safe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from drivers.base import (
    Capability,
    ComputeDriver,
    MachineSpec,
    Outcome,
    PermanentError,
    ServiceRef,
    TemporaryError,
    Uplink,
)
from orchestrator.core import backups
from orchestrator.core.facts import Facts
from orchestrator.core.lifecycle import quarantine_end
from orchestrator.core.policy import Policy, ProductKind, SuspendMethod
from orchestrator.core.steps import Action
from orchestrator.run.guards import covering_hold
from orchestrator.secrets.evidence import Signer
from orchestrator.secrets.redact import redact
from orchestrator.state import ipam
from orchestrator.state.models import StepRow


@dataclass(frozen=True)
class Context:
    """Everything an action needs besides the step itself."""

    sessions: sessionmaker[Session]
    driver: ComputeDriver
    pool: str
    facts: Facts
    policy: Policy
    now: datetime
    signer: Signer | None = None
    # The router port the host hangs off, if the inventory names one.
    uplink: Uplink | None = None


Handler = Callable[[Context, StepRow, ServiceRef], dict[str, Any]]


def perform_step(context_of: Callable[[StepRow], Context], step: StepRow) -> dict[str, Any]:
    """The executor's way in: the step's context is made as it starts, and the executor
    hands over to the actions directly, so the driver is reached through one file."""
    return perform(context_of(step), step)


def perform(context: Context, step: StepRow) -> dict[str, Any]:
    ref = ServiceRef(step.service_id, step.host)
    return HANDLERS[Action(step.kind)](context, step, ref)


def machine_spec(facts: Facts) -> MachineSpec:
    """The package the customer pays for, as the drivers take it."""
    spec = facts.spec
    return MachineSpec(spec.get("vcpus", 1), spec.get("memory_mib", 512), spec.get("disk_gib", 1))


def _spec(context: Context) -> MachineSpec:
    return machine_spec(context.facts)


def _record(outcome: Outcome) -> dict[str, Any]:
    observed = asdict(outcome.observed)
    return {
        "changed": outcome.changed,
        "observed": observed,
        "detail": outcome.detail,
        **redact(outcome.evidence),
    }


def _create(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    return _record(context.driver.create(ref, _spec(context)))


def _restore(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    return _record(context.driver.restore(ref, _spec(context)))


def _resume(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    return _record(context.driver.resume(ref))


def suspend_method(driver: ComputeDriver, asked: str) -> str:
    """The method a suspension asked for runs on this driver as: its own, or, on a
    hypervisor standing in for a box (the lab's, libvirt's test driver), the nearest
    it has (``SuspendMethod.stand_in``). The real drivers (ipmi, colo) have their own."""
    if Capability(f"suspend:{asked}") in driver.capabilities:
        return asked
    return SuspendMethod(asked).stand_in.value


def _suspend(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    """The record names the method that really ran, which a stand-in host may change."""
    method = suspend_method(context.driver, json.loads(step.params).get("method") or "shutdown")
    return {**_record(context.driver.suspend(ref, method)), "method": method}


def _resize(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    return _record(context.driver.resize(ref, _spec(context)))


def _terminate(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    return _record(context.driver.archive(ref))


def _purge(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    """The driver's evidence, its erase records signed before they reach the journal."""
    signs = Capability.ERASE_RECORDS in context.driver.capabilities
    if signs and context.signer is None:
        raise PermanentError(
            f"purging {ref.host} yields erase records to sign, and no signing key is "
            "configured (ORCHESTRATOR_ERASE_SIGNING_KEY): nothing was erased"
        )
    record = _record(context.driver.purge(ref))
    if context.signer is not None and "erase_records" in record:
        record["erase_records"] = [context.signer.sign(r) for r in record["erase_records"]]
    if record.get("verified_absent") is not True:
        raise PermanentError(f"purge of {ref.name} could not be verified: {record}")
    return record


def _assign_ips(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    """The service's address, bound on its machine and routed to its host's uplink.

    When the customer's old address went to someone else after its
    quarantine, the record names it (``previous_addresses``): billing is
    told the old address and the new one together.
    """
    try:
        with context.sessions.begin() as session:
            held = ipam.held_by(session, ref.service_id)
            before = () if held else ipam.last_reclaimed(session, ref.service_id)
            address = (
                held[0] if held else ipam.assign(session, context.pool, ref.service_id, context.now)
            )
    except ipam.PoolExhausted as exc:  # quarantines end: try again in an hour
        raise TemporaryError(str(exc), delay=3600) from exc
    bound = _bind(context, ref, (address,))
    record = {
        "changed": not held,
        "addresses": [address],
        "bound_on_wire": bound,
        "routed": _route(context, ref),
    }
    if replaced := [a for a in before if a != address]:
        record["previous_addresses"] = replaced
    return record


def _reclaim_ips(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    product = context.policy.product(ProductKind(context.facts.product))
    until = quarantine_end(product, context.now, context.policy)
    with context.sessions.begin() as session:
        released = ipam.reclaim(session, ref.service_id, until, context.now)
    bound = _bind(context, ref, ())
    return {
        "changed": bool(released),
        "addresses": list(released),
        "quarantine_until": until.isoformat(),
        "bound_on_wire": bound,
        "routed": _route(context, ref),
    }


def _bind(context: Context, ref: ServiceRef, addresses: tuple[str, ...]) -> bool:
    """Bind on the wire where the driver can; the store stays the truth either way.

    A machine that is its uplink's port (colocation) is bound by the route
    to that port, which ``_route`` makes for all the host's services at once.
    """
    if Capability.BIND_ADDRESSES not in context.driver.capabilities:
        return False
    if context.driver.behind_uplink and context.uplink is not None:
        return False
    if context.driver.inspect(ref).power.value == "absent":
        return False
    context.driver.bind_addresses(ref, addresses)
    return True


def _backup(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    """Take the backup, then let retention remove what the policy no longer keeps.

    The length is measured here (a monotonic clock, not the policy's time) so
    that next week's plan gives the service the time it really needs.
    """
    context.driver.require(Capability.BACKUP)
    started = time.monotonic()
    record = _record(context.driver.backup(ref))
    record["seconds"] = round(time.monotonic() - started, 3)
    record["retention"] = apply_retention(context, ref, dry_run=False)
    return record


def apply_retention(context: Context, ref: ServiceRef, dry_run: bool) -> dict[str, Any]:
    """The policy's keep rules over the service's copies; a hold on purging keeps them all."""
    rules = backups.rules_of(context.facts, context.policy).keep_rules()
    hold = covering_hold(Action.PURGE, context.facts, context.policy, context.now)
    decisions = backups.retention(context.driver.backups(ref), rules)
    removed = []
    if hold is None and not dry_run:
        for decision in decisions:
            if not decision.kept:
                context.driver.delete_backup(ref, decision.backup_id)
                removed.append(decision.backup_id)
    return {
        "rules": rules.to_text() or "keep everything",
        "held_by": hold,
        "removed": removed,
        "decisions": [asdict(d) for d in decisions],
    }


def _verify_backup(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    """Boot a copy in a scratch machine; one that does not boot fails the step, loudly."""
    context.driver.require(Capability.VERIFY_BACKUP)
    backup_id = json.loads(step.params).get("backup_id") or _newest_backup(context, ref)
    outcome = context.driver.verify_backup(ref, backup_id)
    record = {**_record(outcome), "backup_id": backup_id}
    if outcome.evidence.get("verified") is not True:  # booted, and the checksum held
        raise PermanentError(f"backup {backup_id} of {ref.name} failed its test restore: {record}")
    return record


def _newest_backup(context: Context, ref: ServiceRef) -> str:
    copies = [c for c in context.driver.backups(ref) if not c.archive]
    if not copies:
        raise PermanentError(f"{ref.name} has no backup to verify")
    return max(copies, key=lambda c: c.taken_at).backup_id


def _restore_backup(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    context.driver.require(Capability.RESTORE_BACKUP)
    backup_id = str(json.loads(step.params)["backup_id"])
    outcome = context.driver.restore_backup(ref, _spec(context), backup_id)
    return {**_record(outcome), "backup_id": backup_id}


def _route(context: Context, ref: ServiceRef) -> dict[str, Any] | None:
    """Route exactly the addresses the host's services hold to its uplink port.

    Level-triggered over the whole host, not one address at a time: what
    the port carries follows the store, so a retried or repeated step
    converges and a reclaimed address is gone from the wire, whatever was
    there before. None when the host has no uplink in the inventory.
    """
    if context.uplink is None:
        return None
    with context.sessions() as session:
        addresses = ipam.held_on_host(session, ref.host)
    uplink = context.uplink
    outcome = uplink.network.route(uplink.router, uplink.port, addresses)
    return {
        "router": uplink.router,
        "port": uplink.port,
        "addresses": list(addresses),
        "changed": outcome.changed,
    }


def _notice(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    params = json.loads(step.params)
    detail = f"notice due: {params.get('why', '')}"
    return {"changed": True, "detail": detail, "for": params.get("at"), "note": params.get("note")}


def _hand_over(context: Context, step: StepRow, ref: ServiceRef) -> dict[str, Any]:
    return {"changed": True, "detail": "hardware listed for an operator; nothing wiped"}


HANDLERS: dict[Action, Handler] = {
    Action.CREATE: _create,
    Action.RESTORE: _restore,
    Action.ASSIGN_IPS: _assign_ips,
    Action.RESUME: _resume,
    Action.RESIZE: _resize,
    Action.NOTICE: _notice,
    Action.SUSPEND: _suspend,
    Action.RECLAIM_IPS: _reclaim_ips,
    Action.TERMINATE: _terminate,
    Action.HAND_OVER: _hand_over,
    Action.PURGE: _purge,
    Action.BACKUP: _backup,
    Action.VERIFY_BACKUP: _verify_backup,
    Action.RESTORE_BACKUP: _restore_backup,
}
