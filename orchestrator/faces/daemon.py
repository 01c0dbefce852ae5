"""The daemon: ``orchestrator run``. One active scheduler; the others wait.

Leadership is a lock the store gives: a PostgreSQL advisory lock held on a
connection of its own (it goes the moment the process dies, kill -9
included), or, for the embedded SQLite store, an flock on a file beside it.
A standby tries again every ``takeover_seconds``; a leader that loses its
lock stops dispatching at its next step and stands by again. Each
acquisition takes a new epoch, the fencing token every claim carries (see
``journal``). ``orchestrator apply`` from cron takes the same lock.

The leader runs APScheduler 3 with its jobs kept in the store (the
SQLAlchemy job store), so a restart finds them: the reconcile tick (every
minute by default), which also applies retention purges and restores, and
the state sync, which marks due any service whose real state drifted.
Misfires after downtime are coalesced: one run, logged. SIGTERM lets the
step in hand finish (or stay journaled as running, to be taken up by the
next leader) and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from orchestrator.core.inventory import load_inventory
from orchestrator.core.policy import load_policies
from orchestrator.engine import Orchestrator, operations
from orchestrator.engine.operations import Fence, Leadership
from orchestrator.secrets.redact import redact, redact_text
from orchestrator.secrets.signing import target

log = logging.getLogger("orchestrator.faces.daemon")


@dataclass(frozen=True)
class DaemonConfig:
    db: str
    policies: str
    inventory: str
    tick_seconds: float = 60.0
    sync_seconds: float = 300.0
    takeover_seconds: float = 5.0
    billing_url: str | None = None
    backup_plan_seconds: float = 6 * 3600.0
    verify_seconds: float = 24 * 3600.0
    verify_sample: int = 1
    # How long a step claimed by a leader that lost its lock may still be in that leader's
    # hands (a driver call under way) before the new leader inspects and takes it up.
    orphan_grace_seconds: float = 300.0


# What a job's argument is in the job store: "the term of the leader that runs it".
TERM = "term"


@dataclass(frozen=True)
class Term:
    """What the jobs of one leadership term work with: the orchestrator (fenced by this
    term's epoch) and the settings that stay in this process. The job store keeps only
    the schedule; the executor hands each job this value (see ``_term_executor``)."""

    orchestrator: Orchestrator
    billing_url: str | None = None
    verify_sample: int = 1


def open_term(config: DaemonConfig, fence: Fence | None = None) -> Term:
    """The orchestrator of a leadership term, on the configuration's store and files."""
    orchestrator = operations.open_orchestrator(
        config.db,
        load_policies(Path(config.policies)),
        load_inventory(Path(config.inventory)),
        check=False,
    )
    if fence is not None:
        orchestrator.fence = fence
    return Term(orchestrator, config.billing_url, config.verify_sample)


def tick(term: Term) -> None:
    """The reconcile tick: what is due, against the real state, through the journal."""
    report = term.orchestrator.apply(datetime.now(UTC), actor="scheduler")
    states: dict[str, int] = {}
    for step in report.steps:
        states[step.state] = states.get(step.state, 0) + 1
    quiet = not (report.planned or report.steps or report.skipped)
    fields = {"journaled": report.planned, "steps": states, "skipped": len(report.skipped)}
    log.log(logging.DEBUG if quiet else logging.INFO, "tick", extra={"fields": fields})


def sync(term: Term) -> None:
    """The state sync: services whose machines drifted from what was applied become due."""
    drifted = term.orchestrator.sync(datetime.now(UTC))
    if drifted:
        log.warning("drift", extra={"fields": {"services": drifted}})


def notify_billing(term: Term) -> None:
    """Deliver queued notifications; the secret is read here, never kept in the job store."""
    import httpx

    billing_url = term.billing_url
    if billing_url is None:
        return
    secret = os.environ.get("ORCHESTRATOR_BILLING_SECRET", "").encode()
    if not secret:
        log.error("ORCHESTRATOR_BILLING_SECRET is not set: notifications stay queued")
        return
    with httpx.Client(timeout=10) as client:

        def post(body: bytes, headers: dict[str, str]) -> int:
            try:
                return client.post(billing_url, content=body, headers=headers).status_code
            except httpx.TransportError as exc:
                raise OSError(str(exc)) from exc

        now = datetime.now(UTC)
        result = operations.deliver_notifications(
            term.orchestrator, post, secret, now, target(billing_url)
        )
    if result.delivered or result.failed:
        log.info("notified", extra={"fields": asdict(result)})


def plan_backups(term: Term) -> None:
    """Journal this week's and next week's backups (idempotent: a planned backup stays).

    Planning a week ahead means a backup that cannot fit is reported days
    before its window, not discovered after it.
    """
    now = datetime.now(UTC)
    today = now.astimezone(ZoneInfo(os.environ.get("ORCHESTRATOR_TZ", "Asia/Jakarta"))).date()
    monday = today - timedelta(days=today.weekday())
    for week in (monday, monday + timedelta(days=7)):
        planned = term.orchestrator.schedule_backups(week, now)
        fields = {
            "week": week.isoformat(),
            "journaled": planned.journaled,
            "unfit": len(planned.plan.unfit),
            "skipped": len(planned.skipped),
        }
        log.log(
            logging.WARNING if planned.plan.unfit else logging.INFO,
            "backups planned",
            extra={"fields": fields},
        )


def verify_backups(term: Term) -> None:
    """Test restores of a random sample of backed-up services; a failure is logged and
    reaches billing's operators as a failed step."""
    for report in term.orchestrator.verify_sample(datetime.now(UTC), term.verify_sample):
        level = logging.INFO if report.state == "done" else logging.ERROR
        log.log(
            level,
            "backup verified",
            extra={
                "fields": {
                    "service": report.service_id,
                    "state": report.state,
                    "detail": report.detail,
                }
            },
        )


def run(config: DaemonConfig, stop: threading.Event) -> int:
    """Stand by, lead, and after a lost lock stand by again, until told to stop."""
    grace = timedelta(seconds=config.orphan_grace_seconds)
    leadership = operations.leadership_for(config.db, "daemon", grace)
    operations.prepare_store(config.db)
    while _stand_by(leadership, config, stop):
        _lead(leadership, config, stop)
    leadership.release()
    log.info("stopped", extra={"fields": {"pid": os.getpid()}})
    return 0


def _stand_by(leadership: Leadership, config: DaemonConfig, stop: threading.Event) -> bool:
    while not leadership.acquire():
        log.info("standby", extra={"fields": {"retry_seconds": config.takeover_seconds}})
        if stop.wait(config.takeover_seconds):
            return False
    return not stop.is_set()


def _lead(leadership: Leadership, config: DaemonConfig, stop: threading.Event) -> None:
    """Schedule until stopped or the lock is lost; the step in hand finishes (or is fenced)."""
    fence = leadership.fence()
    log.info("leader", extra={"fields": {"pid": os.getpid(), "epoch": fence.epoch}})
    term = open_term(config, fence)
    scheduler = _scheduler(config, term)
    scheduler.resume()
    while not stop.wait(min(1.0, config.tick_seconds)):
        if not leadership.held():
            log.error("leadership lost: stopping the scheduler, standing by")
            break
    scheduler.pause()  # no new job is handed to the executor while it shuts down
    scheduler.shutdown(wait=True)
    operations.close(term.orchestrator)  # the next term opens its own
    leadership.release()


def _scheduler(config: DaemonConfig, term: Term) -> Any:
    """Started paused: jobs already in the store keep their schedule (so a run missed
    while every daemon was down is caught up once); missing ones are added."""
    from apscheduler.events import EVENT_JOB_ERROR
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(url=config.db, tablename="scheduler_jobs")
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
    scheduler = BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": _term_executor(term)},
        job_defaults=defaults,
    )
    scheduler.add_listener(_log_failure, EVENT_JOB_ERROR)
    scheduler.start(paused=True)
    jobs = [
        (tick, "reconcile-tick", config.tick_seconds),
        (sync, "state-sync", config.sync_seconds),
        (plan_backups, "plan-backups", config.backup_plan_seconds),
        (verify_backups, "verify-backups", config.verify_seconds),
    ]
    if config.billing_url:
        jobs.append((notify_billing, "notify-billing", config.tick_seconds))
    for function, job_id, seconds in jobs:
        _ensure_job(scheduler, function, job_id, seconds)
    return scheduler


def _term_executor(term: Term) -> Any:
    """A thread pool that calls each job with ``term``: the job store pickles a job's
    arguments into the database, so it keeps only the ``TERM`` marker there and the
    term (with the store's and billing's URLs, which may carry passwords) stays here."""
    from apscheduler.executors.pool import ThreadPoolExecutor

    class TermExecutor(ThreadPoolExecutor):  # type: ignore[misc]
        def _do_submit_job(self, job: Any, run_times: Any) -> None:
            super()._do_submit_job(_WithTerm(job, term), run_times)

    return TermExecutor()


class _WithTerm:
    """A job as the executor runs it: its function called with the term."""

    def __init__(self, job: Any, term: Term) -> None:
        self._job, self.args = job, (term,)
        self.kwargs: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


def _ensure_job(scheduler: Any, function: Any, job_id: str, seconds: float) -> None:
    if scheduler.get_job(job_id) is None:
        scheduler.add_job(
            function,
            "interval",
            seconds=seconds,
            id=job_id,
            args=(TERM,),
            next_run_time=datetime.now(UTC),
        )
        return
    job = scheduler.get_job(job_id)
    late = (datetime.now(UTC) - job.next_run_time).total_seconds()
    if late > seconds:  # every daemon was down: the runs missed are coalesced into one
        fields = {"job": job_id, "missed_runs": int(late // seconds), "runs_now": 1}
        log.warning("catching up after downtime", extra={"fields": fields})
    scheduler.modify_job(job_id, args=(TERM,), kwargs={})  # an older release kept its config


def _log_failure(event: Any) -> None:
    """A job's exception with its traceback (the scheduler's event carries both)."""
    fields = {"job": event.job_id, "error": str(event.exception)}
    log.error("job failed", exc_info=event.exception, extra={"fields": fields})


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(redact(entry), default=str))


class TerminalFormatter(logging.Formatter):
    """Plain lines for a person at a terminal, through the same redactor as the JSON ones."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TerminalFormatter() if sys.stderr.isatty() else JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a skipped tick is normal under load
