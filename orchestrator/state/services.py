"""The service rows and what the journal and the address table say of them, as the
engine reads them: which services are due, their stored facts, their addresses,
their backups' history. Plain functions over a session; no decision is made here."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from orchestrator.core.steps import Action
from orchestrator.state import journal
from orchestrator.state.models import AddressRow, EventRow, ServiceRow, StepRow

# The phase a service has been applied in before anything was: nothing made yet.
NEW = "new"


def due(session: Session, now: datetime) -> list[str]:
    """Services whose next transition has come: an indexed range read."""
    query = select(ServiceRow.id).where(ServiceRow.next_at <= now).order_by(ServiceRow.next_at)
    return list(session.scalars(query))


def next_due(session: Session) -> datetime | None:
    return session.scalar(select(func.min(ServiceRow.next_at)))


def make_due(session: Session, service_ids: list[str], now: datetime) -> None:
    session.execute(update(ServiceRow).where(ServiceRow.id.in_(service_ids)).values(next_at=now))


def applied(session: Session) -> list[str]:
    """Services something was ever applied to."""
    return list(session.scalars(select(ServiceRow.id).where(ServiceRow.applied_phase != NEW)))


def stored_facts(session: Session, product: str | None = None) -> list[tuple[str, str]]:
    """Each service's id and stored facts (JSON), of one product or of all."""
    query = select(ServiceRow.id, ServiceRow.facts)
    if product is not None:
        query = query.where(ServiceRow.product == product)
    return [(str(i), str(f)) for i, f in session.execute(query)]


def planning_rows(session: Session) -> Iterator[tuple[str, str, str]]:
    """Id, applied phase and stored facts of every service, streamed."""
    query = select(ServiceRow.id, ServiceRow.applied_phase, ServiceRow.facts)
    for row in session.execute(query.execution_options(yield_per=5000)):
        yield str(row[0]), str(row[1]), str(row[2])


def policy_of(session: Session, service_id: str) -> str | None:
    return session.scalar(select(ServiceRow.policy).where(ServiceRow.id == service_id))


def event_bodies(session: Session, service_id: str) -> list[str]:
    """Every event of a service as billing sent it."""
    return list(session.scalars(select(EventRow.body).where(EventRow.service_id == service_id)))


def addresses_by_service(session: Session) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = defaultdict(list)
    query = select(AddressRow.service_id, AddressRow.address).where(
        AddressRow.service_id.is_not(None)
    )
    for service_id, address in session.execute(query):
        found[str(service_id)].append(address)
    return {k: tuple(sorted(v)) for k, v in found.items()}


def last_step_state(session: Session, service_id: str, action: Action) -> str | None:
    return session.scalar(
        select(StepRow.state)
        .where(StepRow.service_id == service_id, StepRow.kind == action)
        .order_by(StepRow.id.desc())
        .limit(1)
    )


def backup_seconds(session: Session) -> dict[str, float]:
    """Each service's last finished backup's length, from the journal."""
    found: dict[str, float] = {}
    query = (
        select(StepRow.service_id, StepRow.result)
        .where(StepRow.kind == Action.BACKUP.value, StepRow.state == journal.DONE)
        .order_by(StepRow.id)
    )
    for service_id, result in session.execute(query):
        seconds = json.loads(result or "{}").get("seconds")
        if isinstance(seconds, int | float):
            found[service_id] = float(seconds)
    return found


def backed_up(session: Session) -> list[tuple[str, str]]:
    """(service, host) of every service with a finished backup, sorted."""
    query = select(StepRow.service_id, StepRow.host).where(
        StepRow.kind == Action.BACKUP.value, StepRow.state == journal.DONE
    )
    return sorted({(str(s), str(h)) for s, h in session.execute(query)})
