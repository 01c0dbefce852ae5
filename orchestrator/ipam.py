"""IP addresses in the store: assign, reclaim into quarantine, give back.

An address row is the only place an assignment lives, and every change is
a conditional UPDATE that names the state it expects, so two allocations
racing for one address cannot both win (on SQLite and PostgreSQL alike).
A reclaimed address rests in quarantine; its last holder gets it back if
they pay before the quarantine ends, nobody else does.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from orchestrator.store.models import AddressRow

FREE, ASSIGNED, QUARANTINE = "free", "assigned", "quarantine"


class PoolExhausted(Exception):
    """No address in the pool is free and out of quarantine."""


def seed_pool(session: Session, pool: str, addresses: list[str]) -> int:
    known = set(session.scalars(select(AddressRow.address).where(AddressRow.pool == pool)))
    new = [AddressRow(address=a, pool=pool, state=FREE) for a in addresses if a not in known]
    session.add_all(new)
    return len(new)


def held_by(session: Session, service_id: str) -> tuple[str, ...]:
    rows = session.scalars(
        select(AddressRow.address)
        .where(AddressRow.service_id == service_id)
        .order_by(AddressRow.address)
    )
    return tuple(rows)


def assign(session: Session, pool: str, service_id: str, now: datetime) -> str:
    """The service's own address back while its quarantine lasts, else the least recently used."""
    for candidate in _candidates(session, pool, service_id, now):
        claimed = session.execute(
            update(AddressRow)
            .where(AddressRow.address == candidate.address, AddressRow.state == candidate.state)
            .where(
                or_(AddressRow.changed_at.is_(None), AddressRow.changed_at == candidate.changed_at)
            )
            .values(
                state=ASSIGNED,
                service_id=service_id,
                last_service_id=service_id,
                quarantine_until=None,
                changed_at=now,
            )
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            return candidate.address
    raise PoolExhausted(f"pool {pool} has no address free for {service_id}")


def _candidates(session: Session, pool: str, service_id: str, now: datetime) -> list[AddressRow]:
    own = select(AddressRow).where(
        AddressRow.pool == pool,
        AddressRow.last_service_id == service_id,
        AddressRow.state == QUARANTINE,
        AddressRow.quarantine_until > now,
    )
    usable = (
        select(AddressRow)
        .where(
            AddressRow.pool == pool,
            or_(
                AddressRow.state == FREE,
                and_(AddressRow.state == QUARANTINE, AddressRow.quarantine_until <= now),
            ),
        )
        .order_by(AddressRow.changed_at.is_not(None), AddressRow.changed_at, AddressRow.address)
        .limit(16)
    )
    return [*session.scalars(own), *session.scalars(usable)]


def reclaim(session: Session, service_id: str, until: datetime, now: datetime) -> tuple[str, ...]:
    addresses = held_by(session, service_id)
    session.execute(
        update(AddressRow)
        .where(AddressRow.service_id == service_id, AddressRow.state == ASSIGNED)
        .values(state=QUARANTINE, service_id=None, quarantine_until=until, changed_at=now)
    )
    return addresses
