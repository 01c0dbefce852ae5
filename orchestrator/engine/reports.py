"""What the engine's use-cases take as settings and give back as reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from orchestrator.core.backup_schedule import Plan, Week
from orchestrator.core.lifecycle import Phase
from orchestrator.core.reconcile import StepSpec
from orchestrator.run.executor import ExecutorSettings, StepReport
from orchestrator.run.guards import BreakerSettings

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
