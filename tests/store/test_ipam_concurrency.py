"""Allocations racing from several processes, each with its own engine, on PostgreSQL.

The pool holds exactly as many addresses as are asked for, so a lost race
that gave up early (a false "pool exhausted") fails the test as surely as an
address handed out twice.
"""

from __future__ import annotations

import ipaddress
import multiprocessing

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from orchestrator.state import ipam
from orchestrator.state.db import open_engine
from orchestrator.state.models import AddressHistoryRow, AddressRow
from tests.conftest import wib

PROCESSES, EACH = 8, 125
POOL = "race"


def _allocate(url: str, worker: int) -> list[tuple[str, str]]:
    """One process: its own engine, one transaction per allocation, as the executor does."""
    engine = open_engine(url)
    sessions = sessionmaker(engine)
    got = []
    for n in range(EACH):
        service = f"w{worker}-{n}"
        with sessions.begin() as session:
            got.append((service, ipam.assign(session, POOL, service, wib(2026, 12, 1))))
    engine.dispose()
    return got


@pytest.mark.postgres
def test_a_thousand_allocations_from_eight_processes(postgres_engine: Engine) -> None:
    hosts = ipaddress.ip_network("10.20.0.0/22").hosts()
    addresses = [str(next(hosts)) for _ in range(PROCESSES * EACH)]
    sessions = sessionmaker(postgres_engine)
    with sessions.begin() as session:
        ipam.seed_pool(session, POOL, addresses)
    url = postgres_engine.url.render_as_string(hide_password=False)
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as workers:
        results = workers.starmap(_allocate, [(url, w) for w in range(PROCESSES)])
    handed = [pair for result in results for pair in result]
    assert len({address for _, address in handed}) == len(handed) == PROCESSES * EACH
    with sessions() as session:
        rows = {r.address: r for r in session.scalars(select(AddressRow))}
        history = session.scalar(select(func.count()).select_from(AddressHistoryRow))
        with pytest.raises(ipam.PoolExhausted):
            ipam.assign(session, POOL, "one-too-many", wib(2026, 12, 1))
    assert {a: (r.state, r.service_id) for a, r in rows.items()} == {
        a: (ipam.ASSIGNED, s) for s, a in handed
    }
    assert history == PROCESSES * EACH
