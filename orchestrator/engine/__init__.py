"""The orchestrator's one flow: facts -> lifecycle -> reconcile -> journal -> executor.

``Orchestrator`` is what the CLI, the scheduler and the hooks call. Every
method takes ``now``; none reads a clock. ``ingest`` turns events into facts
and a precomputed ``next_at`` per service, so a tick reads only the services
that are due (an indexed range scan), not every service.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time as clock
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from drivers.base import (
    BackupCopy,
    Capability,
    ComputeDriver,
    DriverError,
    NetworkDriver,
    Observed,
    Power,
    ServiceRef,
    Uplink,
)
from orchestrator.core import backups
from orchestrator.core.backup_schedule import BackupJob, Limits, Plan, Week, Window, schedule_week
from orchestrator.core.events import AbuseReported, Event, EventError, HoldPlaced, ServiceCreated
from orchestrator.core.facts import Facts, derive_facts
from orchestrator.core.inventory import Inventory
from orchestrator.core.lifecycle import Phase, Verdict, lifecycle
from orchestrator.core.policy import REVIEW_HOLD, Policy
from orchestrator.core.reconcile import (
    SCHEDULED_ACTIONS,
    Action,
    Current,
    StepSpec,
    assumed,
    reconcile,
)
from orchestrator.engine import wiring
from orchestrator.engine.wiring import DriverFactory, NetworkFactory
from orchestrator.run import actions, notify
from orchestrator.run.executor import Executor, ExecutorSettings, StepReport
from orchestrator.run.guards import Breaker, BreakerSettings, covering_hold, still_warranted
from orchestrator.secrets.evidence import Signer
from orchestrator.state import audit, ingest, ipam, journal
from orchestrator.state.models import AddressRow, EventRow, MetaRow, ServiceRow, StepRow

log = logging.getLogger("orchestrator")
NEW = "new"


ERASE_SIGNING_KEY = "ORCHESTRATOR_ERASE_SIGNING_KEY"


@dataclass(frozen=True)
class Settings:
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    # A credential reference (env:, file:, vault) to the Ed25519 key that signs erase records.
    erase_signing_key: str | None = None
    # Backups start up to this much after their planned slot, so they do not all start at once.
    backup_jitter: timedelta = timedelta(minutes=10)

    @classmethod
    def from_environment(cls) -> Settings:
        """What the CLI and the daemon take from their environment (references, not secrets)."""
        return cls(erase_signing_key=os.environ.get(ERASE_SIGNING_KEY) or None)


@dataclass(frozen=True)
class IngestReport:
    accepted: list[str]
    duplicates: list[str]


@dataclass(frozen=True)
class ServicePlan:
    service_id: str
    policy: str
    product: str
    phase: Phase
    applied_phase: str
    steps: list[StepSpec]


@dataclass(frozen=True)
class Drift:
    """A service whose machine is not as its phase wants: what was seen, what would fix it."""

    service_id: str
    host: str
    phase: str
    observed: str
    corrections: tuple[str, ...]


@dataclass(frozen=True)
class BackupWeek:
    """A week's backup plan, the services left out with why, and how many were journaled."""

    week: Week
    plan: Plan
    skipped: list[str]
    journaled: int = 0


@dataclass(frozen=True)
class HandOver:
    """A colocated box whose hand-over deadline has come: for an operator, never wiped."""

    service_id: str
    customer: str
    policy: str
    host: str
    uplink: str | None
    deadline: datetime
    phase: str
    step: str
    blocked_by: str | None
    clause: str


@dataclass
class ApplyReport:
    planned: int = 0
    steps: list[StepReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Orchestrator:
    def __init__(
        self,
        engine: Engine,
        policies: dict[str, Policy],
        inventory: Inventory,
        settings: Settings | None = None,
        drivers: DriverFactory | None = None,
        sleep: Callable[[float], None] = clock.sleep,
        networks: NetworkFactory = wiring.network_driver,
    ) -> None:
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.policies, self.inventory = policies, inventory
        self.settings = settings or Settings()
        self.breaker = Breaker(self.settings.breaker)
        self._sleep = sleep
        self.wiring = wiring.Wiring(inventory, drivers, networks)
        # Set by whoever took the leadership (the daemon, a cron run): claims carry its epoch.
        self.fence = journal.UNFENCED

    # -- facts -------------------------------------------------------------

    def seed_pools(self) -> int:
        with self.sessions.begin() as session:
            return sum(
                ipam.seed_pool(session, name, pool.addresses(), pool.reserved_addresses())
                for name, pool in self.inventory.pools.items()
            )

    def ingest(
        self, events: Sequence[Event], now: datetime, actor: str = "billing"
    ) -> IngestReport:
        """Store new events and refresh their services; all or nothing.

        The same batch sent many times at once is taken once: a writer that
        loses the race on an event id reads the winner's rows and finds them
        resends (or a conflict).
        """
        for attempt in range(1, 4):
            try:
                return self._ingest_once(events, now, actor)
            except IntegrityError:
                if attempt == 3:
                    raise EventError(
                        "concurrent writers kept taking these ids; send again"
                    ) from None
        raise AssertionError("unreachable")

    def _ingest_once(self, events: Sequence[Event], now: datetime, actor: str) -> IngestReport:
        with self.sessions.begin() as session:
            new, duplicates = ingest.split_known(session, events)
            self._validate(session, new)
            unmatched = ingest.unmatched(session, new)
            if unmatched:
                self._hold_for_review(session, unmatched, now, actor)
            else:
                new += ingest.matched_by_invoices(session, new, now)
                self._store(session, new, duplicates, now, actor)
        if unmatched:
            raise ingest.refusal(unmatched)
        return IngestReport([e.id for e in new], duplicates)

    def _store(
        self, session: Session, new: list[Event], duplicates: list[str], now: datetime, actor: str
    ) -> None:
        session.add_all(_event_row(event, now) for event in new)
        session.flush()
        for service_id in dict.fromkeys(e.service for e in new):
            self._refresh(session, service_id, now)
        if new:
            detail = {"events": [e.id for e in new], "duplicates": duplicates}
            audit.append(session, now, actor, "events.ingested", "*", detail)

    def _hold_for_review(
        self, session: Session, unmatched: list[Event], now: datetime, actor: str
    ) -> None:
        fresh = ingest.hold_for_review(session, unmatched, now)
        session.flush()
        for service_id in dict.fromkeys(e.service for e in unmatched):
            if session.get(ServiceRow, service_id) is not None:  # else created in this batch
                self._refresh(session, service_id, now)
        if fresh:
            audit.append(session, now, actor, "payments.held_for_review", "*", {"events": fresh})

    def resolve_payment(
        self, event_id: str, now: datetime, actor: str, invoice: str | None, reason: str = ""
    ) -> None:
        """An operator matches a payment under review to an invoice, or discards it."""
        with self.sessions.begin() as session:
            row = ingest.open_review(session, event_id)
            if invoice is not None:
                event = ingest.match(session, row, invoice, actor, now)
                self._store(session, [event], [], now, actor)
            else:
                ingest.discard(session, row, reason, actor, now)
                self._refresh(session, row.service_id, now)
            detail = {"event": event_id, "invoice": invoice, "reason": reason}
            audit.append(session, now, actor, "payments.reviewed", row.service_id, detail)

    def _validate(self, session: Session, events: list[Event]) -> None:
        created: dict[str, str] = {}
        for event in events:
            if isinstance(event.data, ServiceCreated):
                self._check_created(event.data)
                created[event.service] = event.data.policy
                continue
            policy_name = created.get(event.service) or self._policy_of(session, event.service)
            if policy_name is None:
                raise EventError(f"event {event.id}: unknown service {event.service!r}")
            self._check_names(event, self.policies[policy_name])

    def _check_created(self, data: ServiceCreated) -> None:
        if data.policy not in self.policies:
            raise EventError(
                f"unknown policy {data.policy!r} (known: {', '.join(sorted(self.policies))})"
            )
        if data.product not in self.policies[data.policy].products:
            raise EventError(f"policy {data.policy} has no rules for {data.product.value}")
        if data.host not in self.inventory.hosts():
            raise EventError(f"unknown host {data.host!r}: not in the inventory")

    @staticmethod
    def _check_names(event: Event, policy: Policy) -> None:
        if isinstance(event.data, HoldPlaced) and event.data.kind not in policy.holds:
            raise EventError(
                f"event {event.id}: policy {policy.name} has no hold kind {event.data.kind!r}"
            )
        if isinstance(event.data, AbuseReported) and event.data.category not in policy.abuse:
            raise EventError(
                f"event {event.id}: policy {policy.name} has no abuse category "
                f"{event.data.category!r}"
            )

    @staticmethod
    def _policy_of(session: Session, service_id: str) -> str | None:
        return session.scalar(select(ServiceRow.policy).where(ServiceRow.id == service_id))

    def _refresh(self, session: Session, service_id: str, now: datetime) -> None:
        """Facts anew from every event of the service, with what the journal and the
        review list add: when its data was purged, payments held for review."""
        rows = session.scalars(select(EventRow.body).where(EventRow.service_id == service_id))
        facts = derive_facts(service_id, (Event.model_validate_json(body) for body in rows))
        row = session.get(ServiceRow, service_id)
        fresh = row is None
        if row is None:
            row = ServiceRow(id=service_id, applied_phase=NEW, attention="[]")
        row.customer, row.policy, row.product, row.host = (
            facts.customer,
            facts.policy,
            facts.product,
            facts.host,
        )
        self._record(session, row, facts, now)
        row.next_at = now  # new facts: reconcile this service at the next tick
        if fresh:
            session.add(row)

    def _record(self, session: Session, row: ServiceRow, facts: Facts, now: datetime) -> Verdict:
        """Store facts with the journal's and the review list's part, and the phase they
        give; billing hears once when a service comes to need a person."""
        facts = replace(
            facts,
            holds=(
                *(h for h in facts.holds if h.kind != REVIEW_HOLD),
                *ingest.review_holds(session, row.id),
            ),
            purged_at=journal.purged_at(session, row.id),
        )
        verdict = self.verdict(facts, now)
        before = set(json.loads(row.attention or "[]"))
        for item in verdict.attention:
            if item not in before:
                notify.queue(
                    session,
                    f"orchestrator-{row.id}-attention-{uuid.uuid4().hex}",
                    row.id,
                    "service.needs_attention",
                    now,
                    {"attention": item, "phase": verdict.phase.value},
                )
        row.phase, row.facts, row.updated_at = verdict.phase.value, facts.to_json(), now
        row.attention = json.dumps(list(verdict.attention))
        return verdict

    def verdict(self, facts: Facts, now: datetime) -> Verdict:
        return lifecycle(facts, self.policies[facts.policy], now)

    def facts(self, service_id: str, session: Session | None = None) -> Facts:
        if session is None:
            with self.sessions() as own:
                return self.facts(service_id, own)
        row = session.get(ServiceRow, service_id)
        if row is None:
            raise KeyError(service_id)
        try:
            return Facts.from_json(row.facts)
        except (KeyError, TypeError, ValueError):  # stored by an older release: derive anew
            self._refresh(session, service_id, row.updated_at)
            return Facts.from_json(row.facts)

    # -- planning ----------------------------------------------------------

    def plan(self, now: datetime) -> Iterator[ServicePlan]:
        """What would happen at ``now`` to every service, assuming the last applied state."""
        with self.sessions() as session:
            held = _addresses_by_service(session)
            rows = session.execute(
                select(ServiceRow.id, ServiceRow.applied_phase, ServiceRow.facts).execution_options(
                    yield_per=5000
                )
            )
            for service_id, applied, facts_json in rows:
                plan = self._plan_one(
                    Facts.from_json(facts_json), applied, held.get(service_id, ()), now
                )
                if plan.steps:
                    yield plan

    def _plan_one(
        self, facts: Facts, applied: str, held: tuple[str, ...], now: datetime
    ) -> ServicePlan:
        verdict = self.verdict(facts, now)
        was_purged = applied == Phase.PURGED.value
        observed = (
            Observed(Power.ABSENT)
            if applied == NEW
            else assumed(Phase(applied), verdict.suspend_method, was_purged)
        )
        current = Current(observed, held, was_purged)
        steps = reconcile(facts.service_id, verdict, current, facts.revision)
        return ServicePlan(
            facts.service_id, facts.policy, facts.product, verdict.phase, applied, steps
        )

    # -- applying ----------------------------------------------------------

    def due(self, now: datetime, session: Session) -> list[str]:
        """Services whose next transition has come: an indexed range read."""
        query = select(ServiceRow.id).where(ServiceRow.next_at <= now).order_by(ServiceRow.next_at)
        return list(session.scalars(query))

    def next_due(self) -> datetime | None:
        """When the earliest service next needs attention."""
        with self.sessions() as session:
            return session.scalar(select(func.min(ServiceRow.next_at)))

    def apply(self, now: datetime, yes: bool = False, actor: str = "scheduler") -> ApplyReport:
        """Reconcile every due service against its real state, then run the journal."""
        report = ApplyReport()
        reconciled: dict[str, int] = {}
        with self.sessions() as session:
            due = self.due(now, session)
        for service_id in due:
            report.planned += self._journal_service(service_id, now, report, reconciled, actor)
        runnable = self._admit(now, yes)
        report.steps = self._executor(now, yes).run(runnable, now)
        for service_id in dict.fromkeys([*due, *(s.service_id for s in runnable)]):
            self._settle(service_id, now, reconciled.get(service_id))
        with self.sessions.begin() as session:
            session.merge(MetaRow(key="last_tick", value=now.isoformat()))
        return report

    def _journal_service(
        self,
        service_id: str,
        now: datetime,
        report: ApplyReport,
        reconciled: dict[str, int],
        actor: str = "scheduler",
    ) -> int:
        facts = self.facts(service_id)
        try:
            observed = self.driver(facts.host).inspect(ServiceRef(service_id, facts.host))
        except DriverError as exc:
            report.skipped.append(f"{service_id}: cannot observe: {exc}")
            return 0
        with self.sessions.begin() as session:
            verdict, specs = self._steps_for(session, facts, observed, now)
            rows = journal.enqueue(session, specs, facts.host, now)
            if rows:
                detail = {"steps": [r.kind for r in rows], "phase": verdict.phase.value}
                audit.append(session, now, actor, "steps.journaled", service_id, detail)
        reconciled[service_id] = facts.revision
        return len(rows)

    def _steps_for(
        self, session: Session, facts: Facts, observed: Observed, now: datetime
    ) -> tuple[Verdict, list[StepSpec]]:
        """Reconcile against what a driver just saw and what the store holds."""
        verdict = self.verdict(facts, now)
        held = ipam.held_by(session, facts.service_id)
        purged = journal.purged(session, facts.service_id) and not verdict.reprovision
        current = Current(observed, held, purged, actions.machine_spec(facts))
        return verdict, reconcile(facts.service_id, verdict, current, facts.revision)

    def sync(self, now: datetime) -> list[str]:
        """Services whose real state differs from what the store says was applied become due."""
        drifted = [d.service_id for d in self.drift(now) if d.corrections]
        if drifted:
            with self.sessions.begin() as session:
                session.execute(
                    update(ServiceRow).where(ServiceRow.id.in_(drifted)).values(next_at=now)
                )
        return drifted

    def drift(self, now: datetime) -> list[Drift]:
        """Every applied service whose real state (power above all) is not what its phase wants.

        A machine that cannot be observed (a BMC that does not answer) is
        reported with no corrections: unknown is not the same as wrong.
        """
        with self.sessions() as session:
            ids = list(
                session.scalars(select(ServiceRow.id).where(ServiceRow.applied_phase != NEW))
            )
        found = (self._drift_of(service_id, now) for service_id in ids)
        return [d for d in found if d is not None]

    def _drift_of(self, service_id: str, now: datetime) -> Drift | None:
        facts = self.facts(service_id)
        try:
            observed = self.driver(facts.host).inspect(ServiceRef(service_id, facts.host))
        except DriverError as exc:
            phase = self.verdict(facts, now).phase.value
            return Drift(service_id, facts.host, phase, f"unknown: {exc}", ())
        with self.sessions() as session:
            verdict, specs = self._steps_for(session, facts, observed, now)
        if not specs:
            return None
        kinds = tuple(spec.action.value for spec in specs)
        return Drift(service_id, facts.host, verdict.phase.value, observed.power.value, kinds)

    def hand_overs(self, now: datetime) -> list[HandOver]:
        """Colocation services whose hand_over deadline has passed, earliest deadline first.

        Whether the step is still to be journaled, awaiting an operator's
        ``apply --yes`` or done, and whether a hold keeps it back: the
        hardware is the customer's, so this is a list for people, not a wipe.
        """
        with self.sessions() as session:
            rows = session.execute(
                select(ServiceRow.id, ServiceRow.facts).where(ServiceRow.product == "colocation")
            ).all()
            found = [self._hand_over(session, Facts.from_json(raw), now) for _, raw in rows]
        return sorted((h for h in found if h is not None), key=lambda h: h.deadline)

    def _hand_over(self, session: Session, facts: Facts, now: datetime) -> HandOver | None:
        verdict = self.verdict(facts, now)
        deadlines = [
            (e.planned_at, e)
            for e in verdict.timeline
            if e.step.value == "hand_over" and e.planned_at is not None and e.planned_at <= now
        ]
        if not deadlines:
            return None
        deadline, entry = deadlines[-1]
        step = session.scalar(
            select(StepRow.state)
            .where(StepRow.service_id == facts.service_id, StepRow.kind == Action.HAND_OVER)
            .order_by(StepRow.id.desc())
            .limit(1)
        )
        uplink = self.inventory.hosts()[facts.host].uplink
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

    def _admit(self, now: datetime, yes: bool) -> list[StepRow]:
        """The runnable steps; destructive ones only if the breaker lets this many through."""
        with self.sessions.begin() as session:
            runnable = journal.runnable(session, now, yes)
            destructive = [s for s in runnable if s.destructive]
            if destructive and not self.breaker.admit(session, len(destructive), now):
                journal.mark(session, [s.id for s in destructive], journal.PAUSED, "breaker open")
                runnable = [s for s in runnable if not s.destructive]
        return runnable

    def _executor(self, now: datetime, yes: bool) -> Executor:
        limits = {name: host.max_concurrent for name, host in self.inventory.hosts().items()}
        return Executor(
            self.sessions,
            lambda step: self._perform(step, now),
            lambda session, step: self._guard(session, step, now, yes),
            limits,
            self.settings.executor,
            self._sleep,
            self._lanes,
            self.fence,
            lambda step: self._holds(step, now),
        )

    def _holds(self, step: StepRow, now: datetime) -> bool:
        """Whether the real state already has what a step taken over wanted (its guard has
        passed: it is still warranted): observed now and reconciled again, its action is
        no longer asked for. A scheduled step (a backup) has no such answer: it runs again."""
        if step.kind in SCHEDULED_ACTIONS:
            return False
        facts = self.facts(step.service_id)
        observed = self.driver(facts.host).inspect(ServiceRef(step.service_id, facts.host))
        with self.sessions() as session:
            _, specs = self._steps_for(session, facts, observed, now)
        return Action(step.kind) not in {spec.action for spec in specs}

    def _guard(
        self, session: Session, step: StepRow, now: datetime, yes: bool
    ) -> tuple[str, str] | None:
        if step.kind in SCHEDULED_ACTIONS:
            return self._guard_scheduled(session, step, now)
        if not step.destructive:
            return None
        facts = self.facts(step.service_id, session)
        policy = self.policies[facts.policy]
        action = Action(step.kind)
        if not still_warranted(action, lifecycle(facts, policy, now)):
            return journal.CANCELLED, "billing changed: no longer warranted"
        if (hold := covering_hold(action, facts, policy, now)) is not None:
            return journal.HELD, f"held by {hold}"
        if not yes and not _automatic(step):
            return journal.AWAITING, "not automatic in the policy: needs 'apply --yes'"
        return None

    def _perform(self, step: StepRow, now: datetime) -> dict[str, Any]:
        context = self._context(self.facts(step.service_id), now, Action(step.kind))
        return actions.perform(context, step)

    def _context(self, facts: Facts, now: datetime, action: Action) -> actions.Context:
        driver = self.driver(facts.host)
        return actions.Context(
            self.sessions,
            driver,
            self.inventory.hosts()[facts.host].pool,
            facts,
            self.policies[facts.policy],
            now,
            self._signer(driver) if action == Action.PURGE else None,
            self.uplink(facts.host),
        )

    def _settle(self, service_id: str, now: datetime, reconciled: int | None) -> None:
        """Record the phase as applied once no step is open; otherwise look again later.

        Only facts this tick reconciled are settled: an event that landed while
        the tick ran (another revision) leaves the service due, so its steps
        are planned at the next tick instead of being marked applied unseen.
        The row is locked, so an ingest waits for this or this for it.
        """
        with self.sessions.begin() as session:
            row = session.get(ServiceRow, service_id, with_for_update=True)
            if row is None:
                return
            facts = self.facts(service_id, session)
            verdict = self._record(session, row, facts, now)
            if facts.revision != reconciled:
                row.next_at = now
            elif journal.open_steps(session, service_id) == 0:
                row.applied_phase, row.next_at = verdict.phase.value, verdict.next_at
            else:
                row.next_at = _earliest(verdict.next_at, now + self.settings.executor.retry_later)

    # -- backups -------------------------------------------------------------

    def backup_plan(self, week_start: date) -> BackupWeek:
        """The week's backups of every service that has them, placed within their windows.

        A service whose host cannot take backups, or that cannot fit, is
        reported with the reason; nothing is dropped silently.
        """
        measured = self._measured_backups()
        jobs, skipped = [], []
        with self.sessions() as session:
            rows = session.execute(select(ServiceRow.id, ServiceRow.facts)).all()
        for service_id, facts_json in rows:
            facts = Facts.from_json(facts_json)
            job, why = self._backup_job(facts, measured.get(service_id), week_start)
            if job is not None:
                jobs.append(job)
            elif why:
                skipped.append(f"{service_id}: {why}")
        week = Week(week_start, Window(time(1), time(5), UTC), self._backup_limits())
        seed = week_start.toordinal()
        return BackupWeek(
            week, schedule_week(jobs, week, self.settings.backup_jitter, seed), skipped
        )

    def _backup_job(
        self, facts: Facts, measured: float | None, week_start: date
    ) -> tuple[BackupJob | None, str]:
        policy = self.policies[facts.policy]
        if backups.frequency(facts, policy) is None:
            return None, ""
        refused = backups.refusal(
            self.verdict(facts, _week_opens(week_start)), backups.rules_of(facts, policy)
        )
        if refused:
            return None, refused
        if Capability.BACKUP not in self.driver(facts.host).capabilities:
            return None, f"the driver of host {facts.host} cannot take backups"
        host = self.inventory.hosts()[facts.host]
        job = backups.job_for(facts, policy, facts.host, host, backups.estimate(measured))
        return job, ""

    def _backup_limits(self) -> Limits:
        hosts = self.inventory.hosts()
        return Limits(
            per_host={name: host.backup_limit for name, host in hosts.items()},
            per_storage=dict(self.inventory.all.vars.storage_limits),
        )

    def _measured_backups(self) -> dict[str, float]:
        """Each service's last backup's length, from the journal."""
        found: dict[str, float] = {}
        query = (
            select(StepRow.service_id, StepRow.result)
            .where(StepRow.kind == Action.BACKUP.value, StepRow.state == journal.DONE)
            .order_by(StepRow.id)
        )
        with self.sessions() as session:
            for service_id, result in session.execute(query):
                seconds = json.loads(result or "{}").get("seconds")
                if isinstance(seconds, int | float):
                    found[service_id] = float(seconds)
        return found

    def schedule_backups(
        self, week_start: date, now: datetime, actor: str = "scheduler"
    ) -> BackupWeek:
        """Journal the week's backups at their slots; what cannot fit is reported now."""
        planned = self.backup_plan(week_start)
        with self.sessions.begin() as session:
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

    def backups_of(self, service_id: str) -> list[BackupCopy]:
        facts = self.facts(service_id)
        return self.driver(facts.host).backups(ServiceRef(service_id, facts.host))

    def prune_backups(
        self, service_id: str, now: datetime, dry_run: bool, actor: str = "operator"
    ) -> dict[str, Any]:
        """The policy's retention over a service's backups now; a dry run only says why."""
        facts = self.facts(service_id)
        context = self._context(facts, now, Action.BACKUP)
        outcome = actions.apply_retention(context, ServiceRef(service_id, facts.host), dry_run)
        if not dry_run:
            with self.sessions.begin() as session:
                audit.append(session, now, actor, "backups.pruned", service_id, outcome)
        return outcome

    def restore_backup(
        self, service_id: str, backup_id: str, now: datetime, actor: str = "operator"
    ) -> StepReport:
        """An operator's restore of one chosen backup, journaled and run now."""
        return self._run_scheduled(
            service_id,
            Action.RESTORE_BACKUP,
            now,
            actor,
            {"backup_id": backup_id},
            f"{actor} restores {backup_id}",
        )

    def verify_backup(
        self,
        service_id: str,
        now: datetime,
        backup_id: str | None = None,
        actor: str = "operator",
    ) -> StepReport:
        """A test restore of the service's newest (or a chosen) backup, run now."""
        params = {"backup_id": backup_id} if backup_id else {}
        return self._run_scheduled(
            service_id, Action.VERIFY_BACKUP, now, actor, params, f"test restore by {actor}"
        )

    def verify_sample(self, now: datetime, count: int, seed: int | None = None) -> list[StepReport]:
        """Test restores of ``count`` services drawn from those with a finished backup on a
        host that can boot one; a random draw, so that over weeks every host is tried."""
        query = select(StepRow.service_id, StepRow.host).where(
            StepRow.kind == Action.BACKUP.value, StepRow.state == journal.DONE
        )
        with self.sessions() as session:
            found = sorted({(str(s), str(h)) for s, h in session.execute(query)})
        bootable = [
            service_id
            for service_id, host in found
            if Capability.VERIFY_BACKUP in self.driver(host).capabilities
        ]
        chosen = random.Random(seed).sample(bootable, min(count, len(bootable)))
        return [self.verify_backup(service_id, now, actor="scheduler") for service_id in chosen]

    def _run_scheduled(
        self,
        service_id: str,
        action: Action,
        now: datetime,
        actor: str,
        params: dict[str, Any],
        why: str,
    ) -> StepReport:
        facts = self.facts(service_id)
        key = f"{service_id}:{action.value}:{now.isoformat()}:{params.get('backup_id', '')}"
        spec = StepSpec(service_id, action, key, True, params, why)
        with self.sessions.begin() as session:
            row = journal.schedule(session, spec, facts.host, now, None)
            if row is None:
                raise KeyError(f"{key} is already journaled")
            session.flush()
            audit.append(session, now, actor, f"{action.value}.requested", service_id, params)
        (report,) = self._executor(now, yes=False).run([row], now)
        return report

    def _guard_scheduled(
        self, session: Session, step: StepRow, now: datetime
    ) -> tuple[str, str] | None:
        """A backup or restore checks the service's phase and holds when it is about to run."""
        facts = self.facts(step.service_id, session)
        policy = self.policies[facts.policy]
        refused = backups.refusal(self.verdict(facts, now), backups.rules_of(facts, policy))
        if refused:
            return journal.CANCELLED, refused
        if step.kind == Action.RESTORE_BACKUP and (
            hold := covering_hold(Action.PURGE, facts, policy, now)
        ):
            return journal.HELD, f"held by {hold}: a restore would overwrite what it keeps"
        if step.kind == Action.BACKUP:
            return _missed_window(session, step, now)
        return None

    def _lanes(self, step: StepRow) -> dict[str, int]:
        """Backups run under their host's and storage's own limits, besides max_concurrent."""
        if step.kind not in (Action.BACKUP, Action.VERIFY_BACKUP):
            return {}
        host = self.inventory.hosts()[step.host]
        storage = host.backup_storage or step.host
        lanes = {f"backups@{step.host}": host.backup_limit}
        if (limit := self.inventory.all.vars.storage_limits.get(storage)) is not None:
            lanes[f"storage@{storage}"] = limit
        return lanes

    # -- drivers: made and kept by the wiring (orchestrator/engine/wiring.py) ------

    def _signer(self, driver: ComputeDriver) -> Signer | None:
        return wiring.signer(driver, self.settings.erase_signing_key)

    def driver(self, host: str) -> ComputeDriver:
        return self.wiring.driver(host)

    def uplink(self, host: str) -> Uplink | None:
        return self.wiring.uplink(host)

    def network(self, router: str) -> NetworkDriver:
        return self.wiring.network(router)


def _event_row(event: Event, now: datetime) -> EventRow:
    return EventRow(
        event_id=event.id,
        service_id=event.service,
        type=event.type,
        occurred_at=event.at,
        received_at=now,
        body=event.received,
    )


def _addresses_by_service(session: Session) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = defaultdict(list)
    query = select(AddressRow.service_id, AddressRow.address).where(
        AddressRow.service_id.is_not(None)
    )
    for service_id, address in session.execute(query):
        found[str(service_id)].append(address)
    return {k: tuple(sorted(v)) for k, v in found.items()}


def _missed_window(session: Session, step: StepRow, now: datetime) -> tuple[str, str] | None:
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
    session.execute(
        update(StepRow)
        .where(StepRow.id == step.id)
        .values(not_before=slot, params=json.dumps(moved))
    )
    return journal.RETRY, f"its window closed at {closes.isoformat()}; moved to {slot.isoformat()}"


def _week_opens(week_start: date) -> datetime:
    return datetime.combine(week_start, time(0), UTC)


def _automatic(step: StepRow) -> bool:
    return bool(json.loads(step.params).get("automatic", True))


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return min(a, b) if a is not None else b


__all__ = ["ApplyReport", "HandOver", "IngestReport", "Orchestrator", "ServicePlan", "Settings"]
