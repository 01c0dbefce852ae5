"""``Orchestrator``: the use-cases the CLI, the scheduler and the hooks call.

Each method is a door into one module of this package, which does the
work: ``intake`` (events in, facts out), ``tick`` (journal -> admit ->
execute -> settle), ``survey`` (drift, hand-overs), ``backup_ops``. Every
method takes ``now``; none reads a clock.
"""

from __future__ import annotations

import time as clock
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from drivers.base import BackupCopy, ComputeDriver, NetworkDriver, Uplink
from orchestrator.core.events import Event
from orchestrator.core.facts import Facts
from orchestrator.core.inventory import Inventory
from orchestrator.core.lifecycle import Verdict, lifecycle
from orchestrator.core.policy import Policy
from orchestrator.core.steps import Action
from orchestrator.engine import backup_ops, intake, survey, tick, wiring
from orchestrator.engine.reports import (
    ApplyReport,
    BackupWeek,
    Drift,
    HandOver,
    IngestReport,
    ServicePlan,
    Settings,
)
from orchestrator.run import actions
from orchestrator.run.executor import StepReport
from orchestrator.run.guards import Breaker
from orchestrator.state import journal, services
from orchestrator.state.models import StepRow


class Orchestrator:
    def __init__(
        self,
        engine: Engine,
        policies: dict[str, Policy],
        inventory: Inventory,
        settings: Settings | None = None,
        drivers: wiring.DriverFactory | None = None,
        sleep: Callable[[float], None] = clock.sleep,
        networks: wiring.NetworkFactory = wiring.network_driver,
    ) -> None:
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.policies, self.inventory = policies, inventory
        self.settings = settings or Settings()
        self.breaker = Breaker(self.settings.breaker)
        self.sleep = sleep
        self.wiring = wiring.Wiring(inventory, drivers, networks)
        # Set by whoever took the leadership (the daemon, a cron run): claims carry its epoch.
        self.fence = journal.UNFENCED

    # -- facts ---------------------------------------------------------------

    def seed_pools(self) -> int:
        return intake.seed_pools(self)

    def ingest(
        self, events: Sequence[Event], now: datetime, actor: str = "billing"
    ) -> IngestReport:
        return intake.ingest_events(self, events, now, actor)

    def resolve_payment(
        self, event_id: str, now: datetime, actor: str, invoice: str | None, reason: str = ""
    ) -> None:
        intake.resolve_payment(self, event_id, now, actor, invoice, reason)

    def facts(self, service_id: str, session: Session | None = None) -> Facts:
        return intake.facts_of(self, service_id, session)

    def verdict(self, facts: Facts, now: datetime) -> Verdict:
        return lifecycle(facts, self.policies[facts.policy], now)

    # -- planning and applying -------------------------------------------------

    def plan(self, now: datetime) -> Iterator[ServicePlan]:
        return tick.plan(self, now)

    def next_due(self) -> datetime | None:
        """When the earliest service next needs attention."""
        with self.sessions() as session:
            return services.next_due(session)

    def apply(self, now: datetime, yes: bool = False, actor: str = "scheduler") -> ApplyReport:
        return tick.apply(self, now, yes, actor)

    def sync(self, now: datetime) -> list[str]:
        return survey.sync(self, now)

    def drift(self, now: datetime) -> list[Drift]:
        return survey.drift(self, now)

    def hand_overs(self, now: datetime) -> list[HandOver]:
        return survey.hand_overs(self, now)

    # -- backups ---------------------------------------------------------------

    def backup_plan(self, week_start: date) -> BackupWeek:
        return backup_ops.backup_plan(self, week_start)

    def schedule_backups(
        self, week_start: date, now: datetime, actor: str = "scheduler"
    ) -> BackupWeek:
        return backup_ops.schedule_backups(self, week_start, now, actor)

    def backups_of(self, service_id: str) -> list[BackupCopy]:
        return backup_ops.backups_of(self, service_id)

    def prune_backups(
        self, service_id: str, now: datetime, dry_run: bool, actor: str = "operator"
    ) -> dict[str, Any]:
        return backup_ops.prune_backups(self, service_id, now, dry_run, actor)

    def restore_backup(
        self, service_id: str, backup_id: str, now: datetime, actor: str = "operator"
    ) -> StepReport:
        """An operator's restore of one chosen backup, journaled and run now."""
        params = {"backup_id": backup_id}
        why = f"{actor} restores {backup_id}"
        return backup_ops.run_now(self, service_id, Action.RESTORE_BACKUP, now, actor, params, why)

    def verify_backup(
        self,
        service_id: str,
        now: datetime,
        backup_id: str | None = None,
        actor: str = "operator",
    ) -> StepReport:
        """A test restore of the service's newest (or a chosen) backup, run now."""
        params = {"backup_id": backup_id} if backup_id else {}
        why = f"test restore by {actor}"
        return backup_ops.run_now(self, service_id, Action.VERIFY_BACKUP, now, actor, params, why)

    def verify_sample(self, now: datetime, count: int, seed: int | None = None) -> list[StepReport]:
        return backup_ops.verify_sample(self, now, count, seed)

    def lanes(self, step: StepRow) -> dict[str, int]:
        return backup_ops.lanes(self, step)

    # -- drivers ---------------------------------------------------------------

    def context(self, facts: Facts, now: datetime, action: Action) -> actions.Context:
        """What an action needs besides its step: the driver, pool, policy and signer."""
        driver = self.driver(facts.host)
        purging = action == Action.PURGE
        return actions.Context(
            self.sessions,
            driver,
            self.inventory.hosts()[facts.host].pool,
            facts,
            self.policies[facts.policy],
            now,
            wiring.signer(driver, self.settings.erase_signing_key) if purging else None,
            self.uplink(facts.host),
        )

    def driver(self, host: str) -> ComputeDriver:
        return self.wiring.driver(host)

    def uplink(self, host: str) -> Uplink | None:
        return self.wiring.uplink(host)

    def network(self, router: str) -> NetworkDriver:
        return self.wiring.network(router)
