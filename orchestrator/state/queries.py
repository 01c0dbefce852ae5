"""The reads and small writes the faces need, as plain functions over a Session.

Each returns plain values (dicts, tuples, numbers), never a row, so nothing
above the engine holds a live ORM object; the caller's transaction decides
when a write becomes durable. The engine's ``operations`` opens the sessions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from orchestrator.state import audit, ingest, journal
from orchestrator.state.models import (
    EventRow,
    HookSignatureRow,
    IdempotencyRow,
    MetaRow,
    NotificationRow,
    ServiceRow,
    StepRow,
)


def services(session: Session, needs_attention: bool = False) -> list[dict[str, Any]]:
    """Every service with its phase and next transition (a datetime), by id."""
    query = select(ServiceRow).order_by(ServiceRow.id)
    if needs_attention:
        query = query.where(ServiceRow.attention != "[]")
    return [
        {
            "service": r.id,
            "customer": r.customer,
            "policy": r.policy,
            "product": r.product,
            "host": r.host,
            "phase": r.phase,
            "applied": r.applied_phase,
            "next_at": r.next_at,
            "attention": json.loads(r.attention or "[]"),
        }
        for r in session.scalars(query)
    ]


def payment_reviews(session: Session, include_resolved: bool = False) -> list[dict[str, Any]]:
    """Payments held for review, oldest first (``received`` a datetime)."""
    return [
        {
            "event": r.event_id,
            "service": r.service_id,
            "invoice": r.invoice,
            "received": r.received_at,
            "state": r.state,
            "resolution": r.resolution,
            "by": r.resolved_by,
        }
        for r in ingest.reviews(session, include_resolved)
    ]


def steps(session: Session, service: str | None = None) -> list[dict[str, Any]]:
    """The journal, oldest step first."""
    query = select(StepRow).order_by(StepRow.id)
    if service:
        query = query.where(StepRow.service_id == service)
    return [
        {
            "id": r.id,
            "service": r.service_id,
            "kind": r.kind,
            "state": r.state,
            "created_at": r.created_at,
            "finished_at": r.finished_at,
            "error": r.error,
        }
        for r in session.scalars(query)
    ]


def step(session: Session, step_id: int) -> dict[str, Any] | None:
    """One step whole, every column, its parameters and result decoded."""
    row = session.get(StepRow, step_id)
    if row is None:
        return None
    data = {column.name: getattr(row, column.name) for column in StepRow.__table__.columns}
    for field in ("params", "result"):
        data[field] = json.loads(data[field]) if data[field] else None
    return data


def change_step(session: Session, step_id: int, verb: str, at: datetime, actor: str) -> str | None:
    """An operator's retry or cancel with its audit entry; the step's state when it cannot
    be changed, ``"missing"`` when there is no such step, None when it was changed."""
    change = {"retried": journal.retry, "cancelled": journal.cancel}[verb]
    row = session.get(StepRow, step_id)
    if row is None:
        return "missing"
    if not change(session, row):
        return row.state
    audit.append(session, at, actor, f"step.{verb}", row.service_id, {"step": step_id})
    return None


def erase_records(session: Session, step_id: int) -> list[dict[str, Any]]:
    """The signed erase records a purge step's result holds (none for any other step)."""
    row = session.get(StepRow, step_id)
    result = json.loads(row.result) if row is not None and row.result else {}
    return list(result.get("erase_records") or [])


def notifications(session: Session, state: str | None = None) -> list[dict[str, Any]]:
    """Queued, delivered and dead-lettered notifications, oldest first."""
    query = select(NotificationRow).order_by(NotificationRow.id)
    if state:
        query = query.where(NotificationRow.state == state)
    return [
        {
            "id": n.id,
            "event_id": n.event_id,
            "service": n.service_id,
            "kind": n.kind,
            "state": n.state,
            "attempts": n.attempts,
            "last_error": n.last_error,
        }
        for n in session.scalars(query)
    ]


def shown_history(session: Session, event_types: Sequence[str]) -> list[dict[str, Any]]:
    """Billing events of these types and the steps done, as they were stored (unsorted)."""
    events = session.scalars(select(EventRow).where(EventRow.type.in_(event_types)))
    rows: list[dict[str, Any]] = [
        {"at": e.occurred_at, "service": e.service_id, "event": e.type} for e in events
    ]
    for s in session.scalars(select(StepRow).where(StepRow.state == journal.DONE)):
        rows.append(
            {
                "at": s.started_at or s.created_at,
                "service": s.service_id,
                "step": s.kind,
                "params": json.loads(s.params),
                "result": json.loads(s.result or "{}"),
            }
        )
    return rows


def first_sight(session: Session, request_id: str, now: datetime, horizon: datetime) -> None:
    """Forget request ids older than ``horizon`` and add this one; a second sight of it
    fails at the commit (its primary key)."""
    session.execute(delete(HookSignatureRow).where(HookSignatureRow.seen_at < horizon))
    session.add(HookSignatureRow(signature=request_id, seen_at=now))


def stored_response(session: Session, key: str) -> tuple[str, int, str] | None:
    """The first response to an Idempotency-Key: request hash, status, body."""
    row = session.get(IdempotencyRow, key)
    return None if row is None else (row.request_hash, row.status, row.body)


def remember_response(
    session: Session, key: str, digest: str, status: int, body: str, now: datetime
) -> None:
    session.add(
        IdempotencyRow(key=key, request_hash=digest, status=status, body=body, created_at=now)
    )


def step_counts(session: Session) -> list[tuple[str, str, int]]:
    """How many steps of each kind are in each state."""
    found = session.execute(
        select(StepRow.kind, StepRow.state, func.count()).group_by(StepRow.kind, StepRow.state)
    )
    return [(kind, state, count) for kind, state, count in found]


def phase_counts(session: Session) -> list[tuple[str, int]]:
    found = session.execute(select(ServiceRow.phase, func.count()).group_by(ServiceRow.phase))
    return [(phase, count) for phase, count in found]


def last_tick(session: Session) -> datetime | None:
    row = session.get(MetaRow, "last_tick")
    return datetime.fromisoformat(row.value) if row else None


def ping(session: Session) -> None:
    """The store answers a query."""
    session.execute(select(1))
