"""IPAM under random lives: allocations, reclaims, payments, operator moves and clock jumps.

A plain-Python model says what each address may be; the store (SQLite in a
temporary file) must agree after every step, and every hand-out must keep
invariant 3 of the architecture: never to two services, never to another
service during a quarantine, never a blocked or reserved address. At the end
the clock jumps past every quarantine: each reclaimed address must be free
or back with its owner.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.state import ipam
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import AddressHistoryRow, AddressRow
from tests.conftest import wib

POOL = "p"
ADDRESSES = [f"192.0.2.{n}" for n in range(10, 16)]
RESERVED = "192.0.2.1"
SERVICES = [f"s{n}" for n in range(5)]
START = wib(2026, 12, 1)

Move = Callable[[Session, str, ipam.Change], object]
addresses = st.sampled_from([*ADDRESSES, RESERVED])
services = st.sampled_from(SERVICES)


@cache
def _template() -> Path:
    """One migrated store, copied for each example: migrations are the slow part."""
    path = Path(tempfile.mkdtemp(prefix="ipam-template-")) / "store.db"
    engine = open_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@dataclass
class Model:
    """What the rules allow: who holds what, what rests for whom until when, what is blocked."""

    holder: dict[str, str] = field(default_factory=dict)
    resting: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    moves: int = 0

    def held(self, service: str) -> tuple[str, ...]:
        return tuple(sorted(a for a, s in self.holder.items() if s == service))

    def state(self, address: str) -> str:
        if address == RESERVED:
            return ipam.RESERVED
        if address in self.blocked:
            return ipam.BLOCKED
        if address in self.holder:
            return ipam.ASSIGNED
        return ipam.QUARANTINE if address in self.resting else ipam.FREE

    def takeable(self, service: str, now: datetime) -> tuple[set[str], str | None]:
        """Addresses a service may get now, and the one it must get first (its own)."""
        allowed: set[str] = set()
        own = None
        for address in ADDRESSES:
            state = self.state(address)
            owner, until = self.resting.get(address, (None, now))
            if state == ipam.QUARANTINE and owner == service:
                own = address
            over = owner == service or until <= now
            if state == ipam.FREE or (state == ipam.QUARANTINE and over):
                allowed.add(address)
        return allowed, own


class IpamLives(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.workdir = Path(tempfile.mkdtemp(prefix="ipam-"))
        shutil.copy(_template(), self.workdir / "store.db")
        self.engine = open_engine(f"sqlite:///{self.workdir / 'store.db'}")
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.model = Model()
        self.now = START
        with self.sessions.begin() as session:
            ipam.seed_pool(session, POOL, ADDRESSES, [RESERVED])

    def _change(self, reason: str = "property test") -> ipam.Change:
        return ipam.Change(self.now, "operator:prop", reason)

    # -- the ladder --------------------------------------------------------------

    @rule(service=services)
    def allocate(self, service: str) -> None:
        """A service asks for an address (and one that paid back asks for its own)."""
        if self.model.held(service):
            return
        allowed, own = self.model.takeable(service, self.now)
        try:
            with self.sessions.begin() as session:
                address = ipam.assign(session, POOL, service, self.now)
        except ipam.PoolExhausted:
            assert not allowed, f"pool called exhausted while {sorted(allowed)} could go"
            return
        assert address in allowed, f"{address} ({self.model.state(address)}) went to {service}"
        assert own is None or address == own, f"{service} paid but got {address}, not {own}"
        self.model.holder[address] = service
        self.model.resting.pop(address, None)
        self.model.moves += 1

    @rule(service=services, days=st.integers(min_value=0, max_value=45))
    def reclaim(self, service: str, days: int) -> None:
        until = self.now + timedelta(days=days)
        with self.sessions.begin() as session:
            taken = ipam.reclaim(session, service, until, self.now)
        assert taken == self.model.held(service)
        for address in taken:
            del self.model.holder[address]
            self.model.resting[address] = (service, until)
            self.model.moves += 1

    @rule(hours=st.integers(min_value=1, max_value=24 * 40))
    def clock_jumps(self, hours: int) -> None:
        self.now += timedelta(hours=hours)

    # -- the operator ------------------------------------------------------------

    @rule(address=addresses)
    def release(self, address: str) -> None:
        if self._expect_refusal(ipam.QUARANTINE, address, ipam.release):
            return
        del self.model.resting[address]
        self.model.moves += 1

    @rule(address=addresses, days=st.integers(min_value=1, max_value=60))
    def extend(self, address: str, days: int) -> None:
        until = self.now + timedelta(days=days)
        if self._expect_refusal(
            ipam.QUARANTINE, address, lambda s, a, c: ipam.extend(s, a, until, c)
        ):
            return
        owner, _ = self.model.resting[address]
        self.model.resting[address] = (owner, until)
        self.model.moves += 1

    @rule(address=addresses, force=st.booleans())
    def block(self, address: str, force: bool) -> None:
        state = self.model.state(address)
        allowed = state in (ipam.FREE, ipam.QUARANTINE) or (state == ipam.ASSIGNED and force)
        if self._expect_refusal(
            state if allowed else "", address, lambda s, a, c: ipam.block(s, a, c, force=force)
        ):
            return
        self.model.blocked.add(address)
        self.model.holder.pop(address, None)
        self.model.moves += 1

    @rule(address=addresses)
    def unblock(self, address: str) -> None:
        if self._expect_refusal(ipam.BLOCKED, address, ipam.unblock):
            return
        self.model.blocked.discard(address)
        _, until = self.model.resting.get(address, ("", self.now))
        if until <= self.now:
            self.model.resting.pop(address, None)
        self.model.moves += 1

    def _expect_refusal(self, needed: str, address: str, move: Move) -> bool:
        """Run an operator move; True when the model says it must be (and was) refused."""
        refused = self.model.state(address) != needed
        try:
            with self.sessions.begin() as session:
                move(session, address, self._change())
        except ipam.StateConflict:
            assert refused, f"{address} ({self.model.state(address)}) refused"
            return True
        assert not refused, f"{address} ({self.model.state(address)}) was not refused"
        return False

    # -- what must always hold ---------------------------------------------------

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        with self.sessions() as session:
            rows = {r.address: r for r in session.scalars(select(AddressRow))}
            history = session.scalar(select(func.count()).select_from(AddressHistoryRow))
            for service in SERVICES:
                assert ipam.held_by(session, service) == self.model.held(service)
        assert {a: r.state for a, r in rows.items()} == {
            a: self.model.state(a) for a in [*ADDRESSES, RESERVED]
        }
        for address, (_, until) in self.model.resting.items():
            assert rows[address].quarantine_until == until
        assert history == self.model.moves, "a state change without its history row"

    def teardown(self) -> None:
        try:
            self._every_reclaimed_address_comes_back()
        finally:
            self.engine.dispose()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _every_reclaimed_address_comes_back(self) -> None:
        ends = [until for _, until in self.model.resting.values()]
        self.now = max([self.now, *ends]) + timedelta(seconds=1)
        with self.sessions() as session:
            free = {v.address for v in ipam.listing(session, self.now, POOL, ipam.FREE)}
        expected = {a for a in ADDRESSES if self.model.state(a) in (ipam.FREE, ipam.QUARANTINE)}
        assert free == expected
        with self.sessions.begin() as session:
            taken = {ipam.assign(session, POOL, f"late-{a}", self.now) for a in expected}
        assert taken == expected


IpamLives.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ipam_lives = IpamLives.TestCase
