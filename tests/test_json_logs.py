"""The daemon's JSON log lines (what journald keeps) carry the traceback of what failed."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from sqlalchemy import Engine

from drivers.base import (
    Capability,
    ComputeDriver,
    MachineSpec,
    Observed,
    Outcome,
    Power,
    ServiceRef,
)
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.faces.daemon import JsonFormatter, TerminalFormatter, _log_failure
from tests.conftest import created, events


class Exploding(ComputeDriver):
    capabilities = frozenset({Capability.CREATE})

    def inspect(self, ref: ServiceRef) -> Observed:
        return Observed(Power.ABSENT)

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        raise RuntimeError("the disk [sda] exploded")

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        raise NotImplementedError

    def resume(self, ref: ServiceRef) -> Outcome:
        raise NotImplementedError

    def archive(self, ref: ServiceRef) -> Outcome:
        raise NotImplementedError

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        raise NotImplementedError

    def purge(self, ref: ServiceRef) -> Outcome:
        raise NotImplementedError


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("orchestrator")
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def _entries(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_failed_step_logs_its_traceback(
    json_lines: io.StringIO,
    sqlite_engine: Engine,
    policies: dict[str, Policy],
    inventory: Inventory,
) -> None:
    orch = Orchestrator(sqlite_engine, policies, inventory, drivers=lambda *_: Exploding())
    now = datetime.now(UTC)
    orch.ingest(events(created("boom", at=now.isoformat())), now)
    (step,) = [s for s in orch.apply(now).steps if s.kind == "create"]
    assert step.state == "failed"
    (crash,) = [e for e in _entries(json_lines) if "crashed" in e["event"]]
    assert "RuntimeError: the disk [sda] exploded" in crash["traceback"]
    assert "in create" in crash["traceback"]  # the frame that raised, not only the message


def test_a_failed_job_logs_the_schedulers_traceback(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("tick went wrong")
    except ValueError as exc:
        failure = exc
    event = JobExecutionEvent(
        EVENT_JOB_ERROR, "reconcile-tick", "default", datetime.now(UTC), exception=failure
    )
    _log_failure(event)
    (logged,) = _entries(json_lines)
    assert logged["event"] == "job failed" and logged["job"] == "reconcile-tick"
    assert "ValueError: tick went wrong" in logged["traceback"]
    assert "test_a_failed_job_logs_the_schedulers_traceback" in logged["traceback"]


@pytest.mark.parametrize("formatter", [JsonFormatter(), TerminalFormatter()], ids=["json", "tty"])
def test_both_log_formats_redact_what_a_driver_echoed(formatter: logging.Formatter) -> None:
    leaked = "Authorization: PVEAPIToken=root@pam!orch=9f0e1d2c-3b4a-5968-7788-99aabbccddee"
    record = logging.LogRecord("orchestrator", logging.ERROR, __file__, 1, leaked, None, None)
    try:
        raise RuntimeError(f"driver said: {leaked}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "9f0e1d2c-3b4a-5968-7788-99aabbccddee" not in line
    assert "RuntimeError" in line
