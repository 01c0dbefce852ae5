"""The engine: the use-cases every face calls, through one ``Orchestrator``.

The one flow: facts -> lifecycle -> reconcile -> journal -> guards -> executor.
``ingest`` turns events into facts and a precomputed ``next_at`` per service,
so a tick reads only the services that are due (an indexed range scan), not
every service.
"""

from orchestrator.engine.orchestrator import Orchestrator
from orchestrator.engine.reports import (
    ERASE_SIGNING_KEY,
    ApplyReport,
    BackupWeek,
    Drift,
    HandOver,
    IngestReport,
    ServicePlan,
    Settings,
)

__all__ = [
    "ERASE_SIGNING_KEY",
    "ApplyReport",
    "BackupWeek",
    "Drift",
    "HandOver",
    "IngestReport",
    "Orchestrator",
    "ServicePlan",
    "Settings",
]
