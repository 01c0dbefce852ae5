"""The executor: runs journaled steps, one service at a time, a few per host.

Each service's steps run in order on one worker; services run in parallel,
at most ``limit`` at once per host (libvirtd and BMCs do not like crowds).
A step is claimed in the journal before it runs and finished after, with
its outcome. Retry intent comes from the driver's error type, and is acted
on here only: a ``TemporaryError`` is retried with backoff a few times in
process, then left for a later run (``retry``, with ``not_before``); any
other error fails the step and stops that service's later steps. A driver's
error crosses into the orchestrator here: redacted before it is journaled,
audited, logged or reported (drivers hold secrets only as values).

Under a leader (``journal.Fence``) the lock is checked before each step, so
a leader that lost it dispatches nothing more; its claims and outcomes carry
its epoch and are refused once another leads (the step is then ``fenced``).
A step found ``running`` under an earlier epoch is left while its old leader
may still be in it, then inspected: if the real state already has what it
wanted it is recorded done, else it runs again (level-triggered).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from drivers.base import DriverError, TemporaryError
from orchestrator.core.steps import SCHEDULED_ACTIONS
from orchestrator.run import notify
from orchestrator.secrets.redact import redact_text
from orchestrator.state import audit, journal
from orchestrator.state.models import StepRow

log = logging.getLogger("orchestrator.run.executor")

Perform = Callable[[StepRow], dict[str, Any]]
Guard = Callable[[Session, StepRow], tuple[str, str] | None]
# Whether reconcile, against the real state now, no longer asks for a step taken over.
Inspect = Callable[[StepRow], bool]
FENCED, SKIPPED = "fenced", "skipped"
TAKEN_OVER = "taken over: observed again, reconcile no longer asks for it"


@dataclass(frozen=True)
class ExecutorSettings:
    workers: int = 8
    attempts: int = 3
    backoff_seconds: float = 0.05
    retry_later: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class StepReport:
    step_id: int
    service_id: str
    kind: str
    state: str
    detail: str


class Executor:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        perform: Perform,
        guard: Guard,
        limits: dict[str, int],
        settings: ExecutorSettings,
        sleep: Callable[[float], None],
        lanes: Callable[[StepRow], dict[str, int]] | None = None,
        fence: journal.Fence = journal.UNFENCED,
        inspect: Inspect | None = None,
    ) -> None:
        self._sessions, self._perform, self._guard = sessions, perform, guard
        self._fence, self._inspect = fence, inspect or (lambda step: False)
        self._settings, self._sleep = settings, sleep
        self._limits = {host: threading.BoundedSemaphore(n) for host, n in limits.items()}
        self._default = threading.BoundedSemaphore(2)
        self._lanes_of = lanes or (lambda step: {})
        self._lanes: dict[str, threading.BoundedSemaphore] = {}
        self._lanes_lock = threading.Lock()

    def run(self, steps: list[StepRow], now: datetime) -> list[StepReport]:
        by_service: dict[str, list[StepRow]] = defaultdict(list)
        for step in sorted(steps, key=lambda s: (s.kind in SCHEDULED_ACTIONS, s.id)):
            by_service[step.service_id].append(step)  # the phase's own steps before a backup
        with ThreadPoolExecutor(max_workers=self._settings.workers) as pool:
            futures = [pool.submit(self._run_service, batch, now) for batch in by_service.values()]
            return [report for future in futures for report in future.result()]

    def _run_service(self, steps: list[StepRow], now: datetime) -> list[StepReport]:
        reports = []
        for step in steps:
            report = self._run_step(step, now)
            reports.append(report)
            if report.state != journal.DONE and step.kind not in SCHEDULED_ACTIONS:
                break  # a missed backup does not hold up the service's own plan
        return reports

    def _run_step(self, step: StepRow, now: datetime) -> StepReport:
        if not self._fence.held():
            return self._report(step, FENCED, "leadership lost: not dispatched")
        taken_over = step.state == journal.RUNNING
        if taken_over and (left := self._left_alone(step, now)) is not None:
            return left
        with self._sessions.begin() as session:
            stopped = self._guard(session, step)
            if stopped is not None:
                journal.mark(session, [step.id], *stopped)
                if stopped[0] != step.state:
                    self._audit(session, step, stopped[0], now, {"why": stopped[1]})
                return self._report(step, *stopped)
            if not journal.claim(session, step.id, step.state, now, self._fence.epoch):
                return self._report(step, SKIPPED, "claimed by another executor")
        if taken_over and self._no_longer_wanted(step):
            found = {"detail": TAKEN_OVER, "epoch": step.epoch}
            return self._finish(step, journal.DONE, now, found, None)
        with self._limits.get(step.host, self._default), ExitStack() as lanes:
            for lane in self._lane_semaphores(step):
                lanes.enter_context(lane)
            return self._attempt(step, now)

    def _left_alone(self, step: StepRow, now: datetime) -> StepReport | None:
        """A step found running that may still be in someone's hands: this leader's own
        (another job of it runs it), or an older leader's within the grace."""
        if self._fence.epoch is not None and step.epoch == self._fence.epoch:
            return self._report(step, SKIPPED, "running under this leader")
        if self._maybe_in_flight(step, now):
            holder = f"its leader of epoch {step.epoch}" if step.epoch else "an unfenced command"
            return self._report(step, SKIPPED, f"{holder} may be in it")
        return None

    def _no_longer_wanted(self, step: StepRow) -> bool:
        """Level-triggered take-over: ask the real state before running a step again.
        Unobservable means unknown, and the action itself checks again as it runs."""
        try:
            return self._inspect(step)
        except DriverError:
            return False

    def _maybe_in_flight(self, step: StepRow, now: datetime) -> bool:
        """An older leader's claim it has not let go of (fenced_at), within the grace; or,
        for a leader, an unfenced command's claim (an operator's restore) within its own."""
        if step.epoch is None:
            started = step.started_at
            unfenced_grace = self._fence.unfenced_grace
            return self._fence.epoch is not None and started is not None and (
                now < started + unfenced_grace
            )
        since = self._fence.since
        if step.fenced_at is not None or since is None:
            return False
        return now < since + self._fence.orphan_grace

    def _lane_semaphores(self, step: StepRow) -> list[threading.BoundedSemaphore]:
        """Extra limits a step runs under (a host's backups, a storage's), in a fixed order
        so that two steps never wait for each other's lanes."""
        wanted = sorted(self._lanes_of(step).items())
        with self._lanes_lock:
            for name, limit in wanted:
                self._lanes.setdefault(name, threading.BoundedSemaphore(limit))
            return [self._lanes[name] for name, _ in wanted]

    def _attempt(self, step: StepRow, now: datetime) -> StepReport:
        for attempt in range(1, self._settings.attempts + 1):
            try:
                result = self._perform(step)
            except TemporaryError as exc:
                if attempt == self._settings.attempts:
                    return self._retry_later(step, exc, now)
                self._sleep(self._settings.backoff_seconds * 2 ** (attempt - 1))
            except DriverError as exc:
                return self._finish(step, journal.FAILED, now, None, redact_text(str(exc)))
            except Exception as exc:  # a bug must fail its step, not the whole batch
                log.exception("step %s %s of %s crashed", step.id, step.kind, step.service_id)
                error = redact_text(f"internal error: {exc!r}")
                return self._finish(step, journal.FAILED, now, None, error)
            else:
                return self._finish(step, journal.DONE, now, result, None)
        raise AssertionError("unreachable")

    def _retry_later(self, step: StepRow, exc: TemporaryError, now: datetime) -> StepReport:
        later = now + max(self._settings.retry_later, timedelta(seconds=exc.delay))
        epoch, error = self._fence.epoch, redact_text(str(exc))
        with self._sessions.begin() as session:
            if not journal.finish(session, step.id, journal.RETRY, now, None, error, later, epoch):
                return self._fenced(session, step, now)
            self._audit(session, step, journal.RETRY, now, {"error": error})
        return self._report(step, journal.RETRY, f"{error}; retry after {later.isoformat()}")

    def _finish(
        self,
        step: StepRow,
        state: str,
        now: datetime,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> StepReport:
        with self._sessions.begin() as session:
            if not journal.finish(
                session, step.id, state, now, result, error, epoch=self._fence.epoch
            ):
                return self._fenced(session, step, now)
            self._audit(session, step, state, now, result or {"error": error})
            notify.record(session, step, state, now, result or {"error": error})
        if error:
            log.warning("step %s %s of %s failed: %s", step.id, step.kind, step.service_id, error)
        return self._report(step, state, error or _summary(result))

    def _fenced(self, session: Session, step: StepRow, now: datetime) -> StepReport:
        """Another leads now: the outcome is not ours to write; only that we let go."""
        assert self._fence.epoch is not None  # an unfenced finish is never refused
        journal.fenced(session, step.id, self._fence.epoch, now)
        fields = {"step": step.id, "kind": step.kind, "service": step.service_id}
        log.error("step fenced", extra={"fields": {**fields, "epoch": self._fence.epoch}})
        return self._report(step, FENCED, "leadership lost before it finished")

    def _audit(
        self, session: Session, step: StepRow, state: str, now: datetime, detail: dict[str, Any]
    ) -> None:
        audit.append(
            session,
            now,
            "executor",
            f"step.{step.kind}.{state}",
            step.service_id,
            {"step": step.id, "key": step.key, **detail},
        )

    @staticmethod
    def _report(step: StepRow, state: str, detail: str) -> StepReport:
        return StepReport(step.id, step.service_id, step.kind, state, detail)


def _summary(result: dict[str, Any] | None) -> str:
    if not result:
        return ""
    return str(result.get("detail", ""))
