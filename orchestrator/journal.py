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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from orchestrator.reconcile import StepSpec
from orchestrator.redact import redact, redact_text
from orchestrator.store.models import StepRow

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


def enqueue(session: Session, specs: Sequence[StepSpec], host: str, now: datetime) -> list[StepRow]:
    """Record the steps before they run; a key already journaled is not added twice."""
    if not specs:
        return []
    keys = [s.key for s in specs]
    known = set(session.scalars(select(StepRow.key).where(StepRow.key.in_(keys))))
    _supersede(session, specs[0].service_id, keys)
    rows = [_row(spec, host, now) for spec in specs if spec.key not in known]
    session.add_all(rows)
    return rows


def _row(spec: StepSpec, host: str, now: datetime) -> StepRow:
    params = {**spec.params, "automatic": spec.automatic, "why": spec.why}
    return StepRow(
        key=spec.key,
        service_id=spec.service_id,
        host=host,
        kind=spec.action.value,
        destructive=spec.destructive,
        params=json.dumps(redact(params)),
        state=PENDING,
        attempts=0,
        created_at=now,
    )


def _supersede(session: Session, service_id: str, keys: list[str]) -> None:
    session.execute(
        update(StepRow)
        .where(StepRow.service_id == service_id, StepRow.key.not_in(keys))
        .where(StepRow.state.in_((PENDING, RETRY, *WAITING_STATES)))
        .values(state=SUPERSEDED)
    )


def runnable(session: Session, now: datetime, yes: bool) -> list[StepRow]:
    """Pending steps, retries whose time has come, and runs a crash interrupted."""
    states = [PENDING, RUNNING, RETRY, PAUSED, HELD, *([AWAITING] if yes else [])]
    query = (
        select(StepRow)
        .where(StepRow.state.in_(states))
        .where(or_(StepRow.not_before.is_(None), StepRow.not_before <= now))
        .order_by(StepRow.id)
    )
    return list(session.scalars(query))


def claim(session: Session, step_id: int, expected: str, now: datetime) -> bool:
    claimed = session.execute(
        update(StepRow)
        .where(StepRow.id == step_id, StepRow.state == expected)
        .values(state=RUNNING, started_at=now, attempts=StepRow.attempts + 1)
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
) -> None:
    session.execute(
        update(StepRow)
        .where(StepRow.id == step_id)
        .values(
            state=state,
            finished_at=now,
            not_before=not_before,
            result=json.dumps(redact(result), default=str) if result is not None else None,
            error=redact_text(error) if error else None,
        )
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
    query = select(StepRow.id).where(
        StepRow.service_id == service_id, StepRow.kind == "purge", StepRow.state == DONE
    )
    return session.scalar(query.limit(1)) is not None


def open_steps(session: Session, service_id: str) -> int:
    query = (
        select(func.count())
        .select_from(StepRow)
        .where(StepRow.service_id == service_id, StepRow.state.in_(OPEN_STATES))
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
