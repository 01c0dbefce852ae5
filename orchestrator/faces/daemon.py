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

import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import zlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from orchestrator.core.inventory import load_inventory
from orchestrator.core.policy import load_policies
from orchestrator.engine import Orchestrator, Settings
from orchestrator.run import notify
from orchestrator.secrets.redact import redact, redact_text
from orchestrator.secrets.signing import target
from orchestrator.state import journal
from orchestrator.state.db import migrate, open_engine

log = logging.getLogger("orchestrator.faces.daemon")
ADVISORY_KEY = 0x6F726368  # "orch"


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


class Leadership(Protocol):
    def acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...

    def fence(self) -> journal.Fence: ...


class _Epochs:
    """What both locks share: a new epoch at each acquisition, and the fence that carries it.

    The fence answers for its own epoch only: once the lock was lost, a run
    still holding the old fence stays fenced even after this process leads again.
    """

    orphan_grace = timedelta(0)

    def __init__(self, url: str, holder: str) -> None:
        self._sessions = sessionmaker(open_engine(url))
        self.holder, self.epoch, self.since = holder, 0, datetime.now(UTC)

    def _take_epoch(self) -> None:
        self.since = datetime.now(UTC)
        with self._sessions.begin() as session:
            self.epoch = journal.take_epoch(session, self.holder, self.since)

    def held(self) -> bool:
        raise NotImplementedError

    def fence(self) -> journal.Fence:
        epoch = self.epoch
        return journal.Fence(
            epoch, lambda: self.epoch == epoch and self.held(), self.orphan_grace, self.since
        )


def advisory_keys(schema: str) -> tuple[int, int]:
    """The advisory lock of one store: PostgreSQL's locks are per database, stores per schema."""
    return ADVISORY_KEY, zlib.crc32(schema.encode()) & 0x7FFFFFFF


class AdvisoryLock(_Epochs):
    """PostgreSQL: the lock lives as long as its connection.

    ``held`` asks ``pg_locks`` on that connection, so a connection the
    server dropped (a failover, ``pg_terminate_backend``) reads as lost at
    the next check, which the executor makes before every step. Its old
    leader may still be inside a driver call then: ``orphan_grace``.
    """

    def __init__(self, url: str, holder: str, orphan_grace: timedelta) -> None:
        super().__init__(url, holder)
        self.orphan_grace = orphan_grace
        self._engine = open_engine(url)
        self._connection: Connection | None = None
        self._guard = threading.Lock()  # executor threads check it at once; a connection is not
        self._keys = (0, 0)

    def acquire(self) -> bool:
        connection = self._engine.connect()
        self._keys = advisory_keys(str(connection.scalar(text("SELECT current_schema()"))))
        won = connection.scalar(text("SELECT pg_try_advisory_lock(:a, :b)"), self._params())
        connection.commit()
        if not won:
            connection.close()
            return False
        self._connection = connection
        self._take_epoch()
        return True

    def _params(self) -> dict[str, int]:
        return {"a": self._keys[0], "b": self._keys[1]}

    def held(self) -> bool:
        with self._guard:
            if self._connection is None:
                return False
            try:
                count = self._connection.scalar(text(HELD_SQL), self._params())
                self._connection.commit()
            except SQLAlchemyError:  # a dropped connection means the lock is gone too
                count = 0
            if not count:
                self._drop()
            return bool(count)

    def release(self) -> None:
        with self._guard:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.invalidate()  # never back to the pool: it may hold the lock
            self._connection.close()
            self._connection = None


HELD_SQL = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid = :a AND objid = :b AND objsubid = 2"
)


class FileLock(_Epochs):
    """SQLite: one host, one file beside the database. The kernel frees it only when its
    holder exits or lets go, so steps found running are nobody's: no grace."""

    def __init__(self, url: str, holder: str) -> None:
        super().__init__(url, holder)
        self._path = Path(url.removeprefix("sqlite:///") + ".leader")
        self._file: Any = None

    def acquire(self) -> bool:
        handle = self._path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        self._take_epoch()
        return True

    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def leadership_for(
    url: str, role: str, orphan_grace: timedelta = timedelta(minutes=5)
) -> Leadership:
    """The store's leadership lock, for this process in ``role`` (named to a refused rival)."""
    holder = f"{role} on {socket.gethostname()} pid {os.getpid()}"
    if url.startswith("postgresql"):
        return AdvisoryLock(url, holder, orphan_grace)
    return FileLock(url, holder)


def holder_of(url: str) -> str:
    """Who took the leadership last, and since when: the reason a second run gives."""
    with sessionmaker(open_engine(url))() as session:
        row = journal.leader(session)
    if row is None:
        return "another process"
    return f"{row.holder} (epoch {row.epoch}, since {row.acquired_at.isoformat()})"


_fence = journal.UNFENCED
_orchestrators: dict[str, Orchestrator] = {}
# The settings that may carry a password (the store's URL, billing's URL) stay in
# this process: the job store pickles each job's arguments into the database.
_SECRET_SETTINGS = ("db", "billing_url")
_process_settings: dict[str, Any] = {}


def _job_config(config: DaemonConfig) -> dict[str, Any]:
    """What a job carries in the job store: the configuration without a secret in it."""
    return {k: v for k, v in asdict(config).items() if k not in _SECRET_SETTINGS}


def _orchestrator(job_config: dict[str, Any]) -> Orchestrator:
    """One per process and configuration: jobs arrive by reference from the job store."""
    config = {**job_config, **_process_settings}
    key = json.dumps(config, sort_keys=True)
    if key not in _orchestrators:
        engine = open_engine(config["db"])
        _orchestrators[key] = Orchestrator(
            engine,
            load_policies(Path(config["policies"])),
            load_inventory(Path(config["inventory"])),
            Settings.from_environment(),
        )
    _orchestrators[key].fence = _fence
    return _orchestrators[key]


def tick(config: dict[str, Any]) -> None:
    """The reconcile tick: what is due, against the real state, through the journal."""
    report = _orchestrator(config).apply(datetime.now(UTC), actor="scheduler")
    states: dict[str, int] = {}
    for step in report.steps:
        states[step.state] = states.get(step.state, 0) + 1
    quiet = not (report.planned or report.steps or report.skipped)
    fields = {"journaled": report.planned, "steps": states, "skipped": len(report.skipped)}
    log.log(logging.DEBUG if quiet else logging.INFO, "tick", extra={"fields": fields})


def sync(config: dict[str, Any]) -> None:
    """The state sync: services whose machines drifted from what was applied become due."""
    drifted = _orchestrator(config).sync(datetime.now(UTC))
    if drifted:
        log.warning("drift", extra={"fields": {"services": drifted}})


def notify_billing(config: dict[str, Any]) -> None:
    """Deliver queued notifications; the secret is read here, never kept in the job store."""
    import httpx

    billing_url = _process_settings["billing_url"]
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

        sessions, now = _orchestrator(config).sessions, datetime.now(UTC)
        result = notify.deliver(sessions, post, secret, now, target(billing_url))
    if result.delivered or result.failed:
        log.info("notified", extra={"fields": asdict(result)})


def plan_backups(config: dict[str, Any]) -> None:
    """Journal this week's and next week's backups (idempotent: a planned backup stays).

    Planning a week ahead means a backup that cannot fit is reported days
    before its window, not discovered after it.
    """
    now = datetime.now(UTC)
    today = now.astimezone(ZoneInfo(os.environ.get("ORCHESTRATOR_TZ", "Asia/Jakarta"))).date()
    monday = today - timedelta(days=today.weekday())
    for week in (monday, monday + timedelta(days=7)):
        planned = _orchestrator(config).schedule_backups(week, now)
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


def verify_backups(config: dict[str, Any]) -> None:
    """Test restores of a random sample of backed-up services; a failure is logged and
    reaches billing's operators as a failed step."""
    orchestrator = _orchestrator(config)
    for report in orchestrator.verify_sample(datetime.now(UTC), int(config["verify_sample"])):
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
    leadership = leadership_for(config.db, "daemon", grace)
    migrate(open_engine(config.db))
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
    global _fence
    _fence = leadership.fence()
    log.info("leader", extra={"fields": {"pid": os.getpid(), "epoch": _fence.epoch}})
    scheduler = _scheduler(config)
    scheduler.resume()
    while not stop.wait(min(1.0, config.tick_seconds)):
        if not leadership.held():
            log.error("leadership lost: stopping the scheduler, standing by")
            break
    scheduler.pause()  # no new job is handed to the executor while it shuts down
    scheduler.shutdown(wait=True)
    leadership.release()


def _scheduler(config: DaemonConfig) -> Any:
    """Started paused: jobs already in the store keep their schedule (so a run missed
    while every daemon was down is caught up once); missing ones are added."""
    from apscheduler.events import EVENT_JOB_ERROR
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(url=config.db, tablename="scheduler_jobs")
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
    scheduler = BackgroundScheduler(jobstores={"default": store}, job_defaults=defaults)
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
    _process_settings.update({name: getattr(config, name) for name in _SECRET_SETTINGS})
    for function, job_id, seconds in jobs:
        _ensure_job(scheduler, function, job_id, seconds, {"config": _job_config(config)})
    return scheduler


def _ensure_job(
    scheduler: Any, function: Any, job_id: str, seconds: float, kwargs: dict[str, Any]
) -> None:
    if scheduler.get_job(job_id) is None:
        scheduler.add_job(
            function,
            "interval",
            seconds=seconds,
            id=job_id,
            kwargs=kwargs,
            next_run_time=datetime.now(UTC),
        )
        return
    job = scheduler.get_job(job_id)
    late = (datetime.now(UTC) - job.next_run_time).total_seconds()
    if late > seconds:  # every daemon was down: the runs missed are coalesced into one
        fields = {"job": job_id, "missed_runs": int(late // seconds), "runs_now": 1}
        log.warning("catching up after downtime", extra={"fields": fields})
    scheduler.modify_job(job_id, kwargs=kwargs)


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
