"""The store on SQLite and PostgreSQL: migrations, idempotent ingest, the due index, audit."""

import json
import uuid
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select, text, update

from orchestrator.core.events import EventError
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.state import audit, ipam, services
from orchestrator.state.models import AuditRow, Base, EventRow, ServiceRow
from tests.conftest import created, events, invoice, wib


@pytest.fixture
def orch(store_engine: Engine, policies: dict[str, Policy], inventory: Inventory) -> Orchestrator:
    return Orchestrator(store_engine, policies, inventory, sleep=lambda _: None)


def _dump(engine: Engine) -> list[tuple]:  # type: ignore[type-arg]
    with engine.connect() as connection:
        rows = []
        for table in ("events", "services", "audit", "meta", "steps", "addresses"):
            rows += [
                (table, *r) for r in connection.execute(text(f"SELECT * FROM {table} ORDER BY 1"))
            ]
        return rows


def test_migrations_match_the_models(store_engine: Engine) -> None:
    with store_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_replaying_the_same_events_changes_nothing(
    orch: Orchestrator, store_engine: Engine
) -> None:
    batch = events(created("s1"), invoice("s1", "2026-12-01"))
    first = orch.ingest(batch, wib(2026, 11, 20))
    assert len(first.accepted) == 2
    before = _dump(store_engine)
    second = orch.ingest(batch, wib(2026, 11, 21))
    assert second.accepted == [] and len(second.duplicates) == 2
    assert _dump(store_engine) == before


def test_bad_event_stores_nothing(orch: Orchestrator, store_engine: Engine) -> None:
    orch.ingest(events(created("s1")), wib(2026, 11, 20))
    before = _dump(store_engine)
    bad = {**created("s2"), "data": {**created("s2")["data"], "policy": "nosuch"}}
    with pytest.raises(EventError, match="unknown policy 'nosuch'"):
        orch.ingest(events(invoice("s1", "2026-12-01"), bad), wib(2026, 11, 21))
    with pytest.raises(EventError, match="unknown service"):
        orch.ingest(events(invoice("ghost", "2026-12-01")), wib(2026, 11, 21))
    with pytest.raises(EventError, match="unknown host"):
        orch.ingest(events(created("s3", host="nowhere")), wib(2026, 11, 21))
    assert _dump(store_engine) == before


def test_next_transition_is_precomputed_and_indexed(
    orch: Orchestrator, store_engine: Engine
) -> None:
    sid = f"n{uuid.uuid4().hex[:8]}"
    orch.seed_pools()
    orch.ingest(events(created(sid), invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    with orch.sessions() as session:  # new facts: due at once, to be reconciled
        assert services.due(session, wib(2026, 11, 20)) == [sid]
    orch.apply(wib(2026, 11, 20))
    with orch.sessions() as session:  # applied: nothing until the day after the due date
        row = session.get(ServiceRow, sid)
        assert row is not None and row.next_at == wib(2026, 12, 2)
        assert services.due(session, wib(2026, 12, 1)) == []
        assert services.due(session, wib(2026, 12, 2)) == [sid]
    with store_engine.connect() as connection:
        if store_engine.dialect.name == "sqlite":
            plan = " ".join(
                str(r)
                for r in connection.execute(
                    text("EXPLAIN QUERY PLAN SELECT id FROM services WHERE next_at <= '2026-12-02'")
                )
            )
            assert "ix_services_next_at" in plan


def test_events_are_stored_as_received(orch: Orchestrator) -> None:
    orch.ingest(events(created("s1")), wib(2026, 11, 20))
    with orch.sessions() as session:
        row = session.scalars(select(EventRow)).one()
        assert row.event_id == "s1-created"
        assert json.loads(row.body) == created("s1")
        assert row.received_at == wib(2026, 11, 20)


def test_audit_verify_detects_a_changed_entry(orch: Orchestrator) -> None:
    for n in range(3):
        orch.ingest(events(created(f"s{n}")), wib(2026, 11, 20) + timedelta(minutes=n))
    with orch.sessions.begin() as session:
        assert audit.verify(session).ok and audit.verify(session).entries == 3
        session.execute(update(AuditRow).where(AuditRow.seq == 2).values(actor="mallory"))
    with orch.sessions() as session:
        assert "entry 2 was changed" in " ".join(audit.verify(session).problems)


@pytest.mark.parametrize("seq", [2, 3])
def test_audit_verify_detects_a_deleted_entry(orch: Orchestrator, seq: int) -> None:
    for n in range(3):
        orch.ingest(events(created(f"s{n}")), wib(2026, 11, 20) + timedelta(minutes=n))
    with orch.sessions.begin() as session:
        session.delete(session.get(AuditRow, seq))
    with orch.sessions() as session:
        result = audit.verify(session)
        assert not result.ok and result.entries == 2


def test_an_address_is_never_handed_out_twice(orch: Orchestrator) -> None:
    with orch.sessions.begin() as session:
        ipam.seed_pool(session, "tiny", ["192.0.2.10", "192.0.2.11"])
    with orch.sessions.begin() as session:
        a = ipam.assign(session, "tiny", "s1", wib(2026, 12, 1))
        b = ipam.assign(session, "tiny", "s2", wib(2026, 12, 1))
        assert a != b
        with pytest.raises(ipam.PoolExhausted):
            ipam.assign(session, "tiny", "s3", wib(2026, 12, 1))


def test_quarantine_keeps_an_address_for_its_owner(orch: Orchestrator) -> None:
    with orch.sessions.begin() as session:
        ipam.seed_pool(session, "tiny", ["192.0.2.10"])
        address = ipam.assign(session, "tiny", "s1", wib(2026, 12, 1))
        ipam.reclaim(session, "s1", wib(2027, 1, 8), wib(2026, 12, 9))
        with pytest.raises(ipam.PoolExhausted):
            ipam.assign(session, "tiny", "s2", wib(2026, 12, 20))
        assert ipam.assign(session, "tiny", "s1", wib(2026, 12, 20)) == address
        ipam.reclaim(session, "s1", wib(2027, 1, 8), wib(2026, 12, 21))
        assert ipam.assign(session, "tiny", "s2", wib(2027, 1, 9)) == address
        count = session.scalar(select(func.count()).select_from(EventRow))
        assert count == 0
