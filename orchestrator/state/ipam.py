"""IP addresses in the store: their states, the moves between them, and their history.

An address is in one of five states, and ``MOVES`` is the only list of ways
from one to another, each with what triggers it::

    free ──assign──> assigned ──reclaim──> quarantine ──end passes──> handed out as free
                        ^                    │  ├──release (operator)──> free
                        └──owner pays back───┘  └──extend (operator)───> quarantine
    free, quarantine, assigned (forced) ──block──> blocked ──unblock──> quarantine or free
    reserved: the gateway and the inventory's reserved addresses; never handed out

An address row is the only place an assignment lives. ``_move`` is the only
function that changes a row: a conditional UPDATE naming the state, change
time and quarantine end it expects, so two changes racing for one address
cannot both win (on SQLite and PostgreSQL alike), and a history row in the
same transaction, so every change says who made it, when and why.

A reclaimed address rests in quarantine; its last holder gets it back if
they pay before someone else takes it, nobody else gets it before the
quarantine ends. A block keeps the quarantine's end, so unblocking gives the
owner back what the block interrupted.

Errors::

    IpamError
    ├── PoolExhausted   no address in the pool can be handed out now
    ├── UnknownAddress  not an IP address, or in no pool
    └── StateConflict   the address's state does not allow what was asked
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.orm.attributes import set_committed_value

from orchestrator.state.models import AddressHistoryRow, AddressRow, ServiceRow

FREE, ASSIGNED, QUARANTINE = "free", "assigned", "quarantine"
RESERVED, BLOCKED = "reserved", "blocked"
STATES = (FREE, ASSIGNED, QUARANTINE, RESERVED, BLOCKED)
SYSTEM = "orchestrator"

# Every move an address can make, and what makes it.
MOVES: dict[tuple[str, str], str] = {
    (FREE, ASSIGNED): "a service needs an address",
    (QUARANTINE, ASSIGNED): "its owner paid back, or anyone once the quarantine ended",
    (ASSIGNED, QUARANTINE): "reclaim: the ladder took it from an unpaid service",
    (QUARANTINE, QUARANTINE): "an operator extends (or shortens) the quarantine",
    (QUARANTINE, FREE): "an operator ends the quarantine now",
    (FREE, BLOCKED): "abuse: an operator blocks it",
    (QUARANTINE, BLOCKED): "abuse: an operator blocks it; its quarantine end is kept",
    (ASSIGNED, BLOCKED): "abuse: an operator takes it from its service (forced)",
    (BLOCKED, QUARANTINE): "an operator unblocks it while the quarantine it had lasts",
    (BLOCKED, FREE): "an operator unblocks it",
}

# Rounds of looking for a candidate when others keep taking them first.
CLAIM_ROUNDS = 100


class IpamError(Exception):
    """An address operation that cannot be done as asked; nothing was changed."""


class PoolExhausted(IpamError):
    """No address in the pool is free and out of quarantine."""


class UnknownAddress(IpamError):
    """The text is not an IP address, or no pool holds it."""


class StateConflict(IpamError):
    """The address's state does not allow the move (or it changed meanwhile)."""


@dataclass(frozen=True)
class Change:
    """Who moves an address, when and why: the part of its history the caller knows."""

    at: datetime
    actor: str = SYSTEM
    reason: str = ""


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    from_state: str
    to_state: str
    service_id: str | None
    until: datetime | None
    actor: str
    reason: str


@dataclass(frozen=True)
class AddressView:
    """An address as an operator sees it at a moment: an ended quarantine reads as free."""

    address: str
    pool: str
    state: str
    service_id: str | None
    last_service_id: str | None
    quarantine_until: datetime | None
    changed_at: datetime | None
    history: tuple[HistoryEntry, ...] = ()


# -- seeding and reading -------------------------------------------------------


def seed_pool(
    session: Session, pool: str, addresses: Iterable[str], reserved: Iterable[str] = ()
) -> int:
    """Add the pool's addresses not yet known: reserved ones as reserved, the rest free.

    Known addresses are left as they are, so seeding again never frees an
    assigned, quarantined or blocked address. Seeding is not a move: a new
    row has no history until its first change.
    """
    known = set(session.scalars(select(AddressRow.address).where(AddressRow.pool == pool)))
    held_back = set(reserved)
    new = [
        AddressRow(address=a, pool=pool, state=RESERVED if a in held_back else FREE)
        for a in dict.fromkeys([*addresses, *held_back])
        if a not in known
    ]
    session.add_all(new)
    return len(new)


def held_by(session: Session, service_id: str) -> tuple[str, ...]:
    rows = session.scalars(
        select(AddressRow.address)
        .where(AddressRow.service_id == service_id)
        .order_by(AddressRow.address)
    )
    return tuple(rows)


def held_on_host(session: Session, host: str) -> tuple[str, ...]:
    """Every address assigned to a service of one host: what its uplink port must carry."""
    rows = session.scalars(
        select(AddressRow.address)
        .join(ServiceRow, ServiceRow.id == AddressRow.service_id)
        .where(ServiceRow.host == host, AddressRow.state == ASSIGNED)
        .order_by(AddressRow.address)
    )
    return tuple(rows)


def last_reclaimed(session: Session, service_id: str) -> tuple[str, ...]:
    """The addresses the service's last reclaim took, whoever holds them now.

    When a customer pays after another took their address, this is the old
    address billing is told about next to the new one.
    """
    reclaims = select(AddressHistoryRow.address, AddressHistoryRow.at).where(
        AddressHistoryRow.service_id == service_id,
        AddressHistoryRow.from_state == ASSIGNED,
        AddressHistoryRow.to_state == QUARANTINE,
    )
    found = session.execute(reclaims).all()
    if not found:
        return ()
    latest = max(at for _, at in found)
    return tuple(sorted(address for address, at in found if at == latest))


def state_at(row: AddressRow, now: datetime) -> str:
    """The state that counts at ``now``: a quarantine whose end has passed is free to take."""
    if row.state == QUARANTINE and row.quarantine_until is not None and row.quarantine_until <= now:
        return FREE
    return row.state


def listing(
    session: Session, now: datetime, pool: str | None = None, state: str | None = None
) -> list[AddressView]:
    """Addresses by pool and number, optionally of one pool and in one state (as of ``now``)."""
    query = select(AddressRow)
    if pool is not None:
        query = query.where(AddressRow.pool == pool)
    if state is not None:
        query = query.where(_in_state(state, now))
    rows = sorted(session.scalars(query), key=lambda r: (r.pool, ipaddress.ip_address(r.address)))
    return [_view(row, now) for row in rows]


def show(session: Session, address: str, now: datetime) -> AddressView:
    """One address with its whole history, oldest change first."""
    row = _get(session, address)
    history = session.scalars(
        select(AddressHistoryRow)
        .where(AddressHistoryRow.address == row.address)
        .order_by(AddressHistoryRow.id)
    )
    entries = tuple(
        HistoryEntry(h.at, h.from_state, h.to_state, h.service_id, h.until, h.actor, h.reason)
        for h in history
    )
    return _view(row, now, entries)


def _view(row: AddressRow, now: datetime, history: tuple[HistoryEntry, ...] = ()) -> AddressView:
    return AddressView(
        row.address,
        row.pool,
        state_at(row, now),
        row.service_id,
        row.last_service_id,
        row.quarantine_until,
        row.changed_at,
        history,
    )


def _in_state(state: str, now: datetime) -> ColumnElement[bool]:
    if state not in STATES:
        raise IpamError(f"unknown state {state!r} (states: {', '.join(STATES)})")
    if state == FREE:
        return or_(AddressRow.state == FREE, _quarantine_over(now))
    if state == QUARANTINE:
        return and_(AddressRow.state == QUARANTINE, AddressRow.quarantine_until > now)
    return AddressRow.state == state


def _quarantine_over(now: datetime) -> ColumnElement[bool]:
    return and_(AddressRow.state == QUARANTINE, AddressRow.quarantine_until <= now)


# -- the ladder's moves ----------------------------------------------------------


def assign(
    session: Session, pool: str, service_id: str, now: datetime, actor: str = SYSTEM
) -> str:
    """The service's own address back while it rests for it, else the least recently used.

    Free addresses and ended quarantines are candidates; reserved and
    blocked ones never are. On PostgreSQL each allocator locks the one row
    it takes and skips rows others hold (``SKIP LOCKED``), so they do not
    queue on one; when every usable row is held it waits for their holders
    and looks again, so the pool is only called exhausted when nothing is
    left. SQLite, with one writer, ignores the locks; a lost race there
    simply looks again.
    """
    for _ in range(CLAIM_ROUNDS):
        candidates = _candidates(session, pool, service_id, now, skip_locked=True)
        candidates = candidates or _candidates(session, pool, service_id, now, skip_locked=False)
        if not candidates:
            break
        for row in candidates:
            why = _why_assigned(row, service_id)
            if _move(session, row, ASSIGNED, Change(now, actor, why), service_id=service_id):
                return row.address
    raise PoolExhausted(f"pool {pool} has no address free for {service_id}")


def _why_assigned(row: AddressRow, service_id: str) -> str:
    if row.state != QUARANTINE:
        return "assigned"
    if row.last_service_id == service_id:
        return "given back to its owner"
    return "assigned after its quarantine ended"


def _candidates(
    session: Session, pool: str, service_id: str, now: datetime, skip_locked: bool
) -> list[AddressRow]:
    """The owner's quarantined address first, then the least recently changed usable one."""
    own = select(AddressRow).where(
        AddressRow.pool == pool,
        AddressRow.last_service_id == service_id,
        AddressRow.state == QUARANTINE,
    )
    usable = (
        select(AddressRow)
        .where(AddressRow.pool == pool, or_(AddressRow.state == FREE, _quarantine_over(now)))
        .order_by(AddressRow.changed_at.is_not(None), AddressRow.changed_at, AddressRow.address)
        .limit(1)
        .with_for_update(skip_locked=skip_locked)
    )
    fresh = {"populate_existing": True}
    return [
        *session.scalars(own.execution_options(**fresh)),
        *session.scalars(usable.execution_options(**fresh)),
    ]


def reclaim(
    session: Session, service_id: str, until: datetime, now: datetime, actor: str = SYSTEM
) -> tuple[str, ...]:
    """Put the service's addresses in quarantine until ``until``; they rest for it till then."""
    rows = session.scalars(
        select(AddressRow)
        .where(AddressRow.service_id == service_id, AddressRow.state == ASSIGNED)
        .order_by(AddressRow.address)
        .execution_options(populate_existing=True)
    ).all()
    change = Change(now, actor, "reclaimed from an unpaid service")
    moved = [row.address for row in rows if _move(session, row, QUARANTINE, change, until=until)]
    return tuple(moved)


# -- the operator's moves --------------------------------------------------------


def release(session: Session, address: str, change: Change) -> AddressView:
    """End a quarantine now: the address is free for anyone."""
    row = _get(session, address)
    _expect(row, QUARANTINE, "release")
    _must_move(session, row, FREE, change)
    return _view(row, change.at)


def extend(session: Session, address: str, until: datetime, change: Change) -> AddressView:
    """Move a quarantine's end; a past end would be a release, which says so better."""
    row = _get(session, address)
    _expect(row, QUARANTINE, "extend")
    if until <= change.at:
        raise StateConflict(f"{row.address}: {until.isoformat()} has passed; release it instead")
    _must_move(session, row, QUARANTINE, change, until=until)
    return _view(row, change.at)


def block(session: Session, address: str, change: Change, force: bool = False) -> AddressView:
    """Keep an address from everyone (abuse); taking it from a service needs ``force``."""
    row = _get(session, address)
    if not change.reason.strip():
        raise IpamError(f"{row.address}: a block needs a reason")
    if row.state == ASSIGNED and not force:
        raise StateConflict(
            f"{row.address} is assigned to {row.service_id}; blocking takes it from them "
            "(force it if that is meant)"
        )
    if row.state == BLOCKED:
        raise StateConflict(f"{row.address} is already blocked")
    if row.state == RESERVED:
        raise StateConflict(f"{row.address} is reserved: it is never handed out, nothing to block")
    _must_move(session, row, BLOCKED, change, until=row.quarantine_until)
    return _view(row, change.at)


def unblock(session: Session, address: str, change: Change) -> AddressView:
    """Lift a block: back to the quarantine it interrupted if that still lasts, else free."""
    row = _get(session, address)
    _expect(row, BLOCKED, "unblock")
    until = row.quarantine_until
    if until is not None and until > change.at:
        _must_move(session, row, QUARANTINE, change, until=until)
    else:
        _must_move(session, row, FREE, change)
    return _view(row, change.at)


def _get(session: Session, address: str) -> AddressRow:
    try:
        canonical = str(ipaddress.ip_address(address.strip()))
    except ValueError:
        raise UnknownAddress(f"{address!r} is not an IP address") from None
    row = session.get(AddressRow, canonical, populate_existing=True)
    if row is None:
        raise UnknownAddress(f"{canonical} is in no pool (run init after changing the inventory)")
    return row


def _expect(row: AddressRow, state: str, verb: str) -> None:
    if row.state != state:
        raise StateConflict(f"{row.address} is {row.state}, not {state}: cannot {verb} it")


def _must_move(
    session: Session, row: AddressRow, to_state: str, change: Change, until: datetime | None = None
) -> None:
    if not _move(session, row, to_state, change, until=until):
        raise StateConflict(f"{row.address} changed meanwhile; look again and retry")


# -- the one place a state changes ----------------------------------------------


def _move(
    session: Session,
    row: AddressRow,
    to_state: str,
    change: Change,
    service_id: str | None = None,
    until: datetime | None = None,
) -> bool:
    """Move ``row`` if it is still as read; False when someone else changed it first."""
    if (row.state, to_state) not in MOVES:
        raise StateConflict(f"{row.address}: no move from {row.state} to {to_state}")
    values: dict[str, Any] = {
        "state": to_state,
        "service_id": service_id,
        "quarantine_until": until,
        "changed_at": change.at,
    }
    if service_id is not None:
        values["last_service_id"] = service_id
    moved = session.execute(
        update(AddressRow)
        .where(
            AddressRow.address == row.address,
            AddressRow.state == row.state,
            _same(AddressRow.changed_at, row.changed_at),
            _same(AddressRow.quarantine_until, row.quarantine_until),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.add(_history(row, to_state, change, service_id, until))
    for name, value in values.items():  # what the row now holds, without a second write
        set_committed_value(row, name, value)
    return True


def _history(
    row: AddressRow, to_state: str, change: Change, service_id: str | None, until: datetime | None
) -> AddressHistoryRow:
    """The service concerned: the one it goes to, the one it leaves, or the one it rests for."""
    resting = QUARANTINE in (row.state, to_state)
    concerned = service_id or row.service_id or (row.last_service_id if resting else None)
    return AddressHistoryRow(
        address=row.address,
        pool=row.pool,
        at=change.at,
        from_state=row.state,
        to_state=to_state,
        service_id=concerned,
        until=until if to_state in (QUARANTINE, BLOCKED) else None,
        actor=change.actor,
        reason=change.reason or MOVES[(row.state, to_state)],
    )


def _same(column: InstrumentedAttribute[Any], value: Any) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value
