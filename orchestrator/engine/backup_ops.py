"""Backups as use-cases: the week's plan and schedule, listing, retention, restores and
test restores. The rules (which services, which copies to keep) are in
``core.backups`` and ``core.prune``; here they meet the store and the drivers."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

from drivers.base import BackupCopy, Capability, ServiceRef
from orchestrator.core import backups
from orchestrator.core.backup_schedule import BackupJob, Limits, Week, Window, schedule_week
from orchestrator.core.facts import Facts
from orchestrator.core.reconcile import StepSpec
from orchestrator.core.steps import Action
from orchestrator.engine import tick
from orchestrator.engine.reports import BackupWeek
from orchestrator.run import actions
from orchestrator.run.executor import StepReport
from orchestrator.state import audit, journal, services
from orchestrator.state.models import StepRow

if TYPE_CHECKING:
    from orchestrator.engine.orchestrator import Orchestrator

log = logging.getLogger("orchestrator")


def backup_plan(orch: Orchestrator, week_start: date) -> BackupWeek:
    """The week's backups of every service that has them, placed within their windows.

    A service whose host cannot take backups, or that cannot fit, is
    reported with the reason; nothing is dropped silently.
    """
    jobs, skipped = [], []
    with orch.sessions() as session:
        measured = services.backup_seconds(session)
        rows = services.stored_facts(session)
    for service_id, facts_json in rows:
        facts = Facts.from_json(facts_json)
        job, why = _backup_job(orch, facts, measured.get(service_id), week_start)
        if job is not None:
            jobs.append(job)
        elif why:
            skipped.append(f"{service_id}: {why}")
    week = Week(week_start, Window(time(1), time(5), UTC), _backup_limits(orch))
    seed = week_start.toordinal()
    return BackupWeek(week, schedule_week(jobs, week, orch.settings.backup_jitter, seed), skipped)


def _backup_job(
    orch: Orchestrator, facts: Facts, measured: float | None, week_start: date
) -> tuple[BackupJob | None, str]:
    policy = orch.policies[facts.policy]
    if backups.frequency(facts, policy) is None:
        return None, ""
    week_opens = datetime.combine(week_start, time(0), UTC)
    refused = backups.refusal(orch.verdict(facts, week_opens), backups.rules_of(facts, policy))
    if refused:
        return None, refused
    if Capability.BACKUP not in orch.driver(facts.host).capabilities:
        return None, f"the driver of host {facts.host} cannot take backups"
    host = orch.inventory.hosts()[facts.host]
    job = backups.job_for(facts, policy, facts.host, host, backups.estimate(measured))
    return job, ""


def _backup_limits(orch: Orchestrator) -> Limits:
    hosts = orch.inventory.hosts()
    return Limits(
        per_host={name: host.backup_limit for name, host in hosts.items()},
        per_storage=dict(orch.inventory.all.vars.storage_limits),
    )


def schedule_backups(
    orch: Orchestrator, week_start: date, now: datetime, actor: str
) -> BackupWeek:
    """Journal the week's backups at their slots; what cannot fit is reported now."""
    planned = backup_plan(orch, week_start)
    with orch.sessions.begin() as session:
        journaled = [
            row
            for slot in planned.plan.slots
            if (
                row := journal.schedule(
                    session, backups.step_for(slot, week_start), slot.job.host, now, slot.start
                )
            )
            is not None
        ]
        detail = {
            "week": week_start.isoformat(),
            "journaled": len(journaled),
            "unfit": [f"{u.job.service_id}: {u.reason}" for u in planned.plan.unfit],
            "skipped": planned.skipped,
        }
        audit.append(session, now, actor, "backups.scheduled", "*", detail)
    for unfit in planned.plan.unfit:
        log.warning("backup of %s cannot fit: %s", unfit.job.service_id, unfit.reason)
    return replace(planned, journaled=len(journaled))


def backups_of(orch: Orchestrator, service_id: str) -> list[BackupCopy]:
    facts = orch.facts(service_id)
    return orch.driver(facts.host).backups(ServiceRef(service_id, facts.host))


def prune_backups(
    orch: Orchestrator, service_id: str, now: datetime, dry_run: bool, actor: str
) -> dict[str, Any]:
    """The policy's retention over a service's backups now; a dry run only says why."""
    facts = orch.facts(service_id)
    context = orch.context(facts, now, Action.BACKUP)
    outcome = actions.apply_retention(context, ServiceRef(service_id, facts.host), dry_run)
    if not dry_run:
        with orch.sessions.begin() as session:
            audit.append(session, now, actor, "backups.pruned", service_id, outcome)
    return outcome


def verify_sample(
    orch: Orchestrator, now: datetime, count: int, seed: int | None
) -> list[StepReport]:
    """Test restores of ``count`` services drawn from those with a finished backup on a
    host that can boot one; a random draw, so that over weeks every host is tried."""
    with orch.sessions() as session:
        found = services.backed_up(session)
    bootable = [
        service_id
        for service_id, host in found
        if Capability.VERIFY_BACKUP in orch.driver(host).capabilities
    ]
    chosen = random.Random(seed).sample(bootable, min(count, len(bootable)))
    return [orch.verify_backup(service_id, now, actor="scheduler") for service_id in chosen]


def run_now(
    orch: Orchestrator,
    service_id: str,
    action: Action,
    now: datetime,
    actor: str,
    params: dict[str, Any],
    why: str,
) -> StepReport:
    """An operator's restore or test restore, journaled and run at once."""
    facts = orch.facts(service_id)
    key = f"{service_id}:{action.value}:{now.isoformat()}:{params.get('backup_id', '')}"
    spec = StepSpec(service_id, action, key, True, params, why)
    with orch.sessions.begin() as session:
        row = journal.schedule(session, spec, facts.host, now, None)
        if row is None:
            raise KeyError(f"{key} is already journaled")
        session.flush()
        audit.append(session, now, actor, f"{action.value}.requested", service_id, params)
    verdicts = tick.Verdicts(orch.policies, now)
    (report,) = tick.executor(orch, now, False, verdicts).run([row], now)
    return report


def lanes(orch: Orchestrator, step: StepRow) -> dict[str, int]:
    """Backups run under their host's and storage's own limits, besides max_concurrent."""
    if step.kind not in (Action.BACKUP, Action.VERIFY_BACKUP):
        return {}
    host = orch.inventory.hosts()[step.host]
    storage = host.backup_storage or step.host
    limits = {f"backups@{step.host}": host.backup_limit}
    if (limit := orch.inventory.all.vars.storage_limits.get(storage)) is not None:
        limits[f"storage@{storage}"] = limit
    return limits
