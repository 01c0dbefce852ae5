"""A compute driver that witnesses every call, for the fencing tests; and a daemon using it.

Its machines are small JSON files in one directory, so that two daemon
processes see the same machines; every call is appended to ``calls.log``
(one JSON line: pid, service, call, whether it changed anything). Like the
real drivers it reads the state first and does nothing when it holds; a
changing call sleeps ``delay`` seconds between reading and writing, the
window in which a leader can lose its lock mid-call; with ``gate`` set, it
waits until that file exists (a run held mid-call for as long as a test needs).

``python -m tests.fencing.witness ARGS`` is ``orchestrator ARGS`` with the
driver registered as ``witness``. It also opens the blast-radius breaker's
limits: the HA test's batches are destructive en masse on purpose, and the
breaker has tests of its own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from drivers.base import (
    COMPUTE_DRIVERS,
    Capability,
    ComputeDriver,
    MachineSpec,
    Observed,
    Outcome,
    Power,
    ServiceRef,
)

DESTRUCTIVE_CALLS = ("suspend", "archive", "purge")
ABSENT = {"power": "absent", "archived": False, "data": False}


class WitnessCompute(ComputeDriver):
    capabilities = frozenset(
        {
            Capability.CREATE,
            Capability.SUSPEND_SHUTDOWN,
            Capability.ARCHIVE,
            Capability.RESTORE,
            Capability.PURGE,
        }
    )

    def __init__(self, uri: str, delay: float = 0.0, gate: str | None = None, **_: Any) -> None:
        self.dir, self.delay = Path(uri), delay
        self.gate = Path(gate) if gate else None

    def inspect(self, ref: ServiceRef) -> Observed:
        return _observed(self._state(ref))

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        wanted = {"power": "running", "archived": False, "data": True}
        return self._change(ref, "create", wanted, lambda s: s["power"] == "absent")

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        wanted = {"power": "off", "archived": False, "data": True}
        return self._change(ref, "suspend", wanted, lambda s: s["power"] == "running")

    def resume(self, ref: ServiceRef) -> Outcome:
        wanted = {"power": "running", "archived": False, "data": True}
        return self._change(ref, "resume", wanted, lambda s: s["power"] == "off")

    def archive(self, ref: ServiceRef) -> Outcome:
        wanted = {"power": "absent", "archived": True, "data": True}
        return self._change(ref, "archive", wanted, lambda s: s["power"] != "absent")

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        wanted = {"power": "running", "archived": False, "data": True}
        return self._change(ref, "restore", wanted, lambda s: s["power"] == "absent")

    def purge(self, ref: ServiceRef) -> Outcome:
        outcome = self._change(ref, "purge", ABSENT, lambda s: s["data"])
        return Outcome(outcome.changed, outcome.observed, evidence={"verified_absent": True})

    def _change(self, ref: ServiceRef, call: str, wanted: dict[str, Any], needed: Any) -> Outcome:
        state = self._state(ref)
        if not needed(state):
            self._log(ref, call, False)
            return Outcome(False, _observed(state))
        time.sleep(self.delay)
        while self.gate is not None and not self.gate.exists():
            time.sleep(0.05)
        path = self.dir / f"{ref.service_id}.json"
        path.with_suffix(".tmp").write_text(json.dumps(wanted))
        path.with_suffix(".tmp").replace(path)
        self._log(ref, call, True)
        return Outcome(True, _observed(wanted))

    def _state(self, ref: ServiceRef) -> dict[str, Any]:
        path = self.dir / f"{ref.service_id}.json"
        return dict(json.loads(path.read_text())) if path.exists() else dict(ABSENT)

    def _log(self, ref: ServiceRef, call: str, changed: bool) -> None:
        line = json.dumps(
            {"pid": os.getpid(), "service": ref.service_id, "call": call, "changed": changed}
        )
        with (self.dir / "calls.log").open("a") as log:
            log.write(line + "\n")


def _observed(state: dict[str, Any]) -> Observed:
    return Observed(Power(state["power"]), archived=state["archived"], data_present=state["data"])


def calls(directory: Path) -> list[dict[str, Any]]:
    path = directory / "calls.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def register() -> None:
    COMPUTE_DRIVERS["witness"] = "tests.fencing.witness:WitnessCompute"


def _open_breaker_limits() -> None:
    from orchestrator.engine import Settings
    from orchestrator.run.guards import BreakerSettings

    def unlimited(cls: type[Settings]) -> Settings:
        return cls(breaker=BreakerSettings(min_count=10**9))

    Settings.from_environment = classmethod(unlimited)  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    from orchestrator.faces.cli import main

    register()
    _open_breaker_limits()
    main()
