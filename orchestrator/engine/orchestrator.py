"""``Orchestrator``: the use-cases the CLI, the scheduler and the hooks call.

Each method is a door into one module of this package, which does the
work: ``intake`` (events in, facts out), ``tick`` (journal -> admit ->
execute -> settle), ``survey`` (drift, hand-overs), ``backup_ops``. Every
method takes ``now``; none reads a clock.
"""

from __future__ import annotations

import threading
import time as clock
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from drivers.base import (
    BackupCopy,
    Capability,
    ComputeDriver,
    NetworkDriver,
    Uplink,
    load_compute,
    load_network,
)
from orchestrator.core.events import Event
from orchestrator.core.facts import Facts
from orchestrator.core.inventory import HostVars, Inventory, Router
from orchestrator.core.lifecycle import Verdict, lifecycle
from orchestrator.core.policy import Policy
from orchestrator.core.steps import Action
from orchestrator.engine import backup_ops, intake, survey, tick
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
from orchestrator.secrets.credentials import resolve
from orchestrator.secrets.evidence import Signer
from orchestrator.state import journal, services
from orchestrator.state.models import StepRow

DriverFactory = Callable[[str, HostVars], ComputeDriver]
# The network driver of one router of the inventory, by its name and variables.
NetworkFactory = Callable[[str, Router], NetworkDriver]


def _default_networks(name: str, router: Router) -> NetworkDriver:
    return load_network(router.driver, **{"name": name, **router.options})


class Orchestrator:
    def __init__(
        self,
        engine: Engine,
        policies: dict[str, Policy],
        inventory: Inventory,
        settings: Settings | None = None,
        drivers: DriverFactory | None = None,
        sleep: Callable[[float], None] = clock.sleep,
        networks: NetworkFactory = _default_networks,
    ) -> None:
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.policies, self.inventory = policies, inventory
        self.settings = settings or Settings()
        self.breaker = Breaker(self.settings.breaker)
        self._driver_factory = drivers or self._default_driver
        self._network_factory, self.sleep = networks, sleep
        self._drivers: dict[str, ComputeDriver] = {}
        self._networks: dict[str, NetworkDriver] = {}
        self._networks_lock = threading.Lock()
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

    def _signer(self, driver: ComputeDriver) -> Signer | None:
        if Capability.ERASE_RECORDS not in driver.capabilities:
            return None
        if self.settings.erase_signing_key is None:
            return None
        return Signer(resolve(self.settings.erase_signing_key, what="erase signing key"))

    def driver(self, host: str) -> ComputeDriver:
        if host not in self._drivers:
            self._drivers[host] = self._driver_factory(host, self.inventory.hosts()[host])
        return self._drivers[host]

    def _default_driver(self, name: str, host: HostVars) -> ComputeDriver:
        return load_compute(host.driver, self.uplink(name), uri=host.uri, **host.options)

    def uplink(self, host: str) -> Uplink | None:
        """The router port a host hangs off, with that router's driver; None if it names none."""
        found = self.inventory.hosts()[host].uplink
        if found is None:
            return None
        return Uplink(self.network(found.router), found.router, found.port)

    def network(self, router: str) -> NetworkDriver:
        """One driver per router, made when first needed and kept (it serialises its changes)."""
        with self._networks_lock:  # executor threads: two drivers would not share one lock
            if router not in self._networks:
                vars_ = self.inventory.routers[router]
                self._networks[router] = self._network_factory(router, vars_)
            return self._networks[router]
