"""Following one suspend from apply to the driver visits each file once.

One apply suspends one unpaid Klikserver VPS on libvirt's test hypervisor, with a profiler on
every thread recording each call into a file under orchestrator/ or drivers/. The design
(../shared/ARCHITECTURE.md, STYLE.md: "compute the verdict once per tick and hand it down")
asks two things of that walk:

- the verdict, ``core/lifecycle.py``'s ``lifecycle(...)``, is computed once for the service
  during the apply and passed down as a value, not recomputed by each layer;
- when the driver's ``suspend`` is called, the stack that led there (apply's thread down to
  the executor, then the worker thread the executor runs the step on) passes through each file
  once: consecutive frames in one file are one visit, but a stack that leaves a file and comes
  back to it (the executor calling back into the engine) is the smell.

``pytest -s`` prints the files entered, in order, and the stack at the driver.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator.core.lifecycle import lifecycle
from orchestrator.engine import Orchestrator
from tests.conftest import REPO, created, events, invoice, wib

OURS = (REPO / "orchestrator", REPO / "drivers")
LIFECYCLE = lifecycle.__code__


def _ours(filename: str) -> str | None:
    """The file's path from the repository root, if it is one of ours."""
    path = Path(filename)
    if any(path.is_relative_to(root) for root in OURS):
        return str(path.relative_to(REPO))
    return None


def _files_of(frame: FrameType | None) -> list[str]:
    """Our files on a stack, outermost first."""
    files: list[str] = []
    while frame is not None:
        if (name := _ours(frame.f_code.co_filename)) is not None:
            files.append(name)
        frame = frame.f_back
    return files[::-1]


def _caller(frame: FrameType, depth: int = 3) -> str:
    """The innermost few of our frames that led to this call, outermost first."""
    callers: list[str] = []
    caller = frame.f_back
    while caller is not None and len(callers) < depth:
        if (name := _ours(caller.f_code.co_filename)) is not None:
            callers.append(f"{name}:{caller.f_lineno} {caller.f_code.co_name}")
        caller = caller.f_back
    return " > ".join(callers[::-1])


def _visits(files: list[str]) -> list[str]:
    """Consecutive frames in one file are one visit to it."""
    return [f for i, f in enumerate(files) if i == 0 or files[i - 1] != f]


@dataclass
class Walk:
    """What the profiler saw during one apply."""

    service: str
    main: int = field(default_factory=threading.get_ident)
    entered: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)  # who asked, once per lifecycle() call
    at_driver: list[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or (name := _ours(frame.f_code.co_filename)) is None:
            return
        with self.lock:
            if not self.entered or self.entered[-1] != name:
                self.entered.append(name)
            if frame.f_code is LIFECYCLE and self._about_service(frame):
                self.verdicts.append(_caller(frame))
            driver = name.startswith("drivers/") and frame.f_code.co_name == "suspend"
            if driver and self.at_driver is None:
                self.at_driver = self._logical_stack(frame)

    def _about_service(self, frame: FrameType) -> bool:
        facts = frame.f_locals.get("facts")
        return getattr(facts, "service_id", None) == self.service

    def _logical_stack(self, frame: FrameType) -> list[str]:
        """The worker's stack under the stack of apply's thread that handed it the step."""
        stack = _files_of(frame)
        if threading.get_ident() != self.main:
            stack = _files_of(sys._current_frames().get(self.main)) + stack
        return stack


@contextmanager
def profiled(walk: Walk) -> Iterator[Walk]:
    threading.setprofile(walk)
    sys.setprofile(walk)
    try:
        yield walk
    finally:
        sys.setprofile(None)
        threading.setprofile(None)


def _suspend_once(orchestrator: Orchestrator) -> Walk:
    """An unpaid VPS, noticed on time, then the one apply that suspends it, profiled."""
    service = f"w{uuid.uuid4().hex[:8]}"
    orchestrator.ingest(events(created(service), invoice(service, "2026-12-01")), wib(2026, 11, 20))
    orchestrator.apply(wib(2026, 11, 20, 0, 1))  # created, addresses, the invoice's notice
    orchestrator.apply(wib(2026, 12, 2, 0, 1))  # the overdue notice
    walk = Walk(service)
    with profiled(walk):
        report = orchestrator.apply(wib(2026, 12, 6, 0, 1))
    assert [(s.kind, s.state) for s in report.steps] == [("suspend", "done")], report
    print("\nfiles entered, in order (consecutive calls in one file shown once):")
    print("\n".join(f"  {name}" for name in walk.entered))
    print("the same files, by first entry:", ", ".join(dict.fromkeys(walk.entered)))
    print("stack at the driver's suspend:", " > ".join(_visits(walk.at_driver or [])))
    print(f"lifecycle() computed {len(walk.verdicts)} times for {service}, by:")
    print("\n".join(f"  {caller}" for caller in walk.verdicts))
    return walk


def test_the_verdict_is_computed_once_and_handed_down(orchestrator: Orchestrator) -> None:
    walk = _suspend_once(orchestrator)
    assert len(walk.verdicts) == 1, f"lifecycle() computed by each of {walk.verdicts}"


def test_the_stack_at_the_driver_passes_each_file_once(orchestrator: Orchestrator) -> None:
    walk = _suspend_once(orchestrator)
    assert walk.at_driver is not None, "the driver's suspend was never called"
    visits = _visits(walk.at_driver)
    repeated = sorted({f for f in visits if visits.count(f) > 1})
    assert not repeated, f"the stack passes these files more than once: {' > '.join(visits)}"
