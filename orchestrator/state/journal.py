"""The write-ahead journal of steps.

A step is a row before anything runs (``enqueue``), is claimed by a
conditional UPDATE (so two executors cannot both run it), and carries its
outcome after. A crash leaves a row ``running``; the next run takes it up
again, and since every driver step first checks the real state, the work is
done once.

States::

    pending ──claim──> running ──> done | failed | retry (not_before)
       │                             retry ──(time)──> running
       ├──> held           a hold covers it; re-planned when the hold ends
       ├──> awaiting       destructive, not automatic: needs ``apply --yes``
       ├──> paused         the blast-radius breaker is open
       ├──> cancelled      billing changed before it ran
       └──> superseded     a newer plan for the service replaced it

Fencing: a claim carries the leadership epoch of the run that made it (the
``leadership`` row, bumped at every acquisition). Claiming and finishing are
conditional on that epoch still being the current one, and each reads the
row ``FOR SHARE``, so a new leader's bump waits for them and every claim or
outcome of an older epoch is visible to it once it leads. A leader that
lost its lock can therefore not complete a step: its outcome is refused
and the step only marked ``fenced_at``, for the new leader to inspect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from orchestrator.core.reconcile import StepSpec
from orchestrator.core.steps import SCHEDULED_ACTIONS
from orchestrator.secrets.redact import redact, redact_text
from orchestrator.state.models import LeadershipRow, StepRow

PENDING, RUNNING, DONE, FAILED, RETRY = "pending", "running", "done", "failed", "retry"
HELD, AWAITING, PAUSED, CANCELLED, SUPERSEDED = (
    "held",
    "awaiting",
    "paused",
    "cancelled",
    "superseded",
)
OPEN_STATES = (PENDING, RUNNING, RETRY, HELD, AWAITING, PAUSED)
WAITING_STATES = (HELD, AWAITING, PAUSED)


LEADER = "scheduler"


@dataclass(frozen=True)
class Fence:
    """Whose claims a run makes: the leader's epoch, and whether its lock still holds.

    ``orphan_grace`` is how long after this leader's acquisition (``since``)
    a step claimed under an older epoch may still be in its old leader's
    hands (a lock lost to a network blip does not stop a driver call already
    made). Every such claim was made before the acquisition (see ``claim``),
    so it bounds the call wherever in its tick it began. After it, or once
    that leader recorded the step as fenced, the step is inspected and taken up.
    """

    epoch: int | None
    held: Callable[[], bool]
    orphan_grace: timedelta = timedelta(0)
    since: datetime | None = None
    # An operator's restore or test restore from the CLI runs unfenced (the daemon
    # may lead meanwhile); a leader leaves such a step running this long after its
    # start before it takes it for a crash, so one restore never runs twice at once.
    unfenced_grace: timedelta = timedelta(hours=6)


# A run that took no leadership (tests, the library): claims carry no epoch.
UNFENCED = Fence(None, lambda: True)


def take_epoch(session: Session, holder: str, now: datetime) -> int:
    """The next epoch, for a process that has just won the leadership lock."""
    row = session.get(LeadershipRow, LEADER, with_for_update=True)
    if row is None:
        row = LeadershipRow(name=LEADER, epoch=0)
        session.add(row)
    row.epoch, row.holder, row.acquired_at = row.epoch + 1, holder, now
    session.flush()
    return row.epoch


def leader(session: Session) -> LeadershipRow | None:
    """Who last took the leadership, and when: what a refused second run names."""
    return session.get(LeadershipRow, LEADER)


def _current(epoch: int) -> ColumnElement[bool]:
    """``epoch`` is still the leadership's; read FOR SHARE so that a bump waits for us."""
    return (
        select(LeadershipRow.epoch)
        .where(LeadershipRow.name == LEADER, LeadershipRow.epoch == epoch)
        .with_for_update(read=True)
        .exists()
    )


# A step the world undid (a box powered on by hand after its suspension) is
# journaled again under ``key~n``; this many times per situation, so that a
# driver whose inspection disagrees with its own actions cannot loop for ever.
MAX_CORRECTIONS = 3


def enqueue(session: Session, specs: Sequence[StepSpec], host: str, now: datetime) -> list[StepRow]:
    """Record the steps before they run; a key already journaled is not added twice.

    A key whose last run is done, yet is asked for again, is drift: the
    reconcile that asks saw the real state just now. It is journaled again
    as a correction, up to ``MAX_CORRECTIONS`` times.
    """
    if not specs:
        return []
    runs = _runs_by_key(session, specs[0].service_id)
    _supersede(session, runs, {s.key for s in specs})
    rows = []
    for spec in specs:
        previous = runs.get(spec.key, [])
        if not previous:
            rows.append(_row(spec, spec.key, host, now))
        elif previous[-1].state == DONE and len(previous) <= MAX_CORRECTIONS:
            rows.append(_row(spec, f"{spec.key}~{len(previous)}", host, now))
    session.add_all(rows)
    return rows


def _runs_by_key(session: Session, service_id: str) -> dict[str, list[StepRow]]:
    """The service's steps by the key reconcile gave them, corrections included, oldest first."""
    runs: dict[str, list[StepRow]] = {}
    for row in session.scalars(
        select(StepRow).where(StepRow.service_id == service_id).order_by(StepRow.id)
    ):
        runs.setdefault(row.key.split("~")[0], []).append(row)
    return runs


def _row(spec: StepSpec, key: str, host: str, now: datetime) -> StepRow:
    params = {**spec.params, "automatic": spec.automatic, "why": spec.why}
    return StepRow(
        key=key,
        service_id=spec.service_id,
        host=host,
        kind=spec.action.value,
        destructive=spec.destructive,
        params=json.dumps(redact(params)),
        state=PENDING,
        attempts=0,
        created_at=now,
    )


def schedule(
    session: Session, spec: StepSpec, host: str, now: datetime, not_before: datetime | None
) -> StepRow | None:
    """Journal a step that reconcile does not plan (a backup at its slot, an operator's
    restore); a key already journaled is not added again, so planning twice is safe."""
    if spec.action not in SCHEDULED_ACTIONS:
        raise ValueError(f"{spec.action} steps come from reconcile, not a schedule")
    if session.scalar(select(StepRow.id).where(StepRow.key == spec.key)) is not None:
        return None
    row = _row(spec, spec.key, host, now)
    row.not_before = not_before
    session.add(row)
    return row


def _supersede(session: Session, runs: dict[str, list[StepRow]], wanted: set[str]) -> None:
    stale = [
        row.id
        for key, rows in runs.items()
        if key not in wanted
        for row in rows
        if row.kind not in SCHEDULED_ACTIONS
    ]
    if stale:  # the state is checked again in the UPDATE: an executor may have claimed one
        session.execute(
            update(StepRow)
            .where(StepRow.id.in_(stale), StepRow.state.in_((PENDING, RETRY, *WAITING_STATES)))
            .values(state=SUPERSEDED)
        )


def runnable(session: Session, now: datetime, yes: bool) -> list[StepRow]:
    """Pending steps, retries whose time has come, and runs a crash interrupted.

    A service's steps keep their order: once one of them waits (for an
    operator's ``--yes``, for its retry time), none after it runs, so an
    automatic purge never overtakes a terminate that awaits approval.
    Scheduled steps (backups) neither wait behind nor hold back the ladder.
    """
    states = {PENDING, RUNNING, RETRY, PAUSED, HELD, *([AWAITING] if yes else [])}
    query = select(StepRow).where(StepRow.state.in_(OPEN_STATES)).order_by(StepRow.id)
    ready, waiting = [], set()
    for row in session.scalars(query):
        due = row.state in states and (row.not_before is None or row.not_before <= now)
        if row.kind in SCHEDULED_ACTIONS:
            ready += [row] if due else []
        elif row.service_id in waiting or not due:
            waiting.add(row.service_id)
        else:
            ready.append(row)
    return ready


def claim(
    session: Session, step_id: int, expected: str, now: datetime, epoch: int | None = None
) -> bool:
    """Take a step in ``expected`` state, under ``epoch`` if the run leads (else unfenced)."""
    query = update(StepRow).where(StepRow.id == step_id, StepRow.state == expected)
    if epoch is not None:
        query = query.where(_current(epoch))
    claimed = session.execute(
        query.values(
            state=RUNNING,
            started_at=now,
            attempts=StepRow.attempts + 1,
            epoch=epoch,
            fenced_at=None,
        )
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def finish(
    session: Session,
    step_id: int,
    state: str,
    now: datetime,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    not_before: datetime | None = None,
    epoch: int | None = None,
) -> bool:
    """Record a step's outcome; under an epoch only while it is still the leadership's and
    the step still the claim this epoch made. False: fenced, nothing written."""
    query = update(StepRow).where(StepRow.id == step_id)
    if epoch is not None:
        query = query.where(StepRow.state == RUNNING, StepRow.epoch == epoch, _current(epoch))
    finished = session.execute(
        query.values(
            state=state,
            finished_at=now,
            not_before=not_before,
            result=json.dumps(redact(result), default=str) if result is not None else None,
            error=redact_text(error) if error else None,
        )
    )
    return bool(finished.rowcount)  # type: ignore[attr-defined]


def fenced(session: Session, step_id: int, epoch: int, now: datetime) -> None:
    """An old leader's last word on a step it can no longer finish: it has let go of it."""
    session.execute(
        update(StepRow)
        .where(StepRow.id == step_id, StepRow.state == RUNNING, StepRow.epoch == epoch)
        .values(fenced_at=now)
    )


def reschedule(
    session: Session, step_id: int, not_before: datetime, params: dict[str, Any]
) -> None:
    """A scheduled step waits for a later slot, with the parameters that say which."""
    session.execute(
        update(StepRow)
        .where(StepRow.id == step_id)
        .values(not_before=not_before, params=json.dumps(params))
    )


def mark(session: Session, step_ids: Iterable[int], state: str, note: str) -> None:
    session.execute(
        update(StepRow).where(StepRow.id.in_(list(step_ids))).values(state=state, error=note)
    )


def destructive_since(session: Session, since: datetime) -> int:
    """Destructive steps started in the breaker's window."""
    query = (
        select(func.count())
        .select_from(StepRow)
        .where(
            StepRow.destructive.is_(True),
            StepRow.started_at >= since,
            StepRow.state.in_((RUNNING, DONE, FAILED, RETRY)),
        )
    )
    return int(session.scalar(query) or 0)


def purged(session: Session, service_id: str) -> bool:
    return purged_at(session, service_id) is not None


def purged_at(session: Session, service_id: str) -> datetime | None:
    """When the service's data was last destroyed, by the journal: what really happened."""
    query = select(func.max(StepRow.finished_at)).where(
        StepRow.service_id == service_id, StepRow.kind == "purge", StepRow.state == DONE
    )
    return session.scalar(query)


def open_steps(session: Session, service_id: str) -> int:
    """Open steps of the phase's plan; scheduled ones (a backup tonight) do not count."""
    query = (
        select(func.count())
        .select_from(StepRow)
        .where(
            StepRow.service_id == service_id,
            StepRow.state.in_(OPEN_STATES),
            StepRow.kind.not_in([a.value for a in SCHEDULED_ACTIONS]),
        )
    )
    return int(session.scalar(query) or 0)


RETRYABLE = (FAILED, RETRY, HELD, AWAITING, PAUSED, CANCELLED)


def retry(session: Session, row: StepRow) -> bool:
    """An operator's retry: back to pending, now; the guards will judge it again."""
    if row.state not in RETRYABLE:
        return False
    row.state, row.not_before, row.error = PENDING, None, None
    return True


def cancel(session: Session, row: StepRow) -> bool:
    if row.state not in (PENDING, RETRY, *WAITING_STATES):
        return False
    row.state = CANCELLED
    return True
