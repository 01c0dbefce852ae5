"""Fencing, step by step (ARCHITECTURE invariant 9): one writer at a time.

Each acquisition of the leadership takes a new epoch; claims and outcomes
carry it and are refused once another epoch leads; a leader whose lock
connection the server dropped dispatches nothing; a step found running under
an older epoch is inspected against the real state before it runs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from drivers.base import Outcome, ServiceRef
from orchestrator.core.events import parse_events
from orchestrator.core.inventory import load_inventory
from orchestrator.core.policy import Policy
from orchestrator.core.reconcile import StepSpec
from orchestrator.core.steps import Action
from orchestrator.engine import Orchestrator
from orchestrator.state import journal
from orchestrator.state.leadership import advisory_keys, leadership_for
from orchestrator.state.models import AuditRow, NotificationRow, StepRow
from tests.fencing.witness import WitnessCompute, calls, register

register()  # the inventory refuses a driver the registry does not know

INVENTORY = """
all:
  vars:
    pools:
      lab-v4: {cidr: 192.0.2.0/24, gateway: 192.0.2.1}
  children:
    hypervisors:
      hosts:
        kvm-jkt-1: {driver: witness, uri: "%s", pool: lab-v4, max_concurrent: 2}
"""
RUNNING = {"power": "running", "archived": False, "data": True}
SERVICE = "fence1"


class Midway(WitnessCompute):
    """Runs ``during`` inside the archive call: another leader takes over meanwhile."""

    during: Callable[[], None] = staticmethod(lambda: None)

    def archive(self, ref: ServiceRef) -> Outcome:
        self.during()
        return super().archive(ref)


@pytest.fixture
def orch(
    store_engine: Engine, policies: dict[str, Policy], tmp_path: Path
) -> tuple[Orchestrator, Midway]:
    return _overdue(store_engine, policies, tmp_path)


def _overdue(
    engine: Engine, policies: dict[str, Policy], tmp_path: Path
) -> tuple[Orchestrator, Midway]:
    """One service running and 200 days overdue: a terminate and a purge to run."""
    (tmp_path / "inventory.yaml").write_text(INVENTORY % tmp_path)
    (tmp_path / f"{SERVICE}.json").write_text(json.dumps(RUNNING))
    driver = Midway(str(tmp_path))
    inventory = load_inventory(tmp_path / "inventory.yaml")
    orch = Orchestrator(engine, policies, inventory, drivers=lambda *_: driver)
    now = datetime.now(UTC)
    due = (now - timedelta(days=200)).date().isoformat()
    created = {
        "type": "service.created",
        "customer": "c",
        "policy": "klikserver",
        "product": "kvm_vps",
        "host": "kvm-jkt-1",
    }
    batch = [
        {"id": "c1", "service": SERVICE, "at": now.isoformat(), "data": created},
        {
            "id": "i1",
            "service": SERVICE,
            "at": now.isoformat(),
            "data": {"type": "invoice.issued", "invoice": "inv-1", "due": due},
        },
    ]
    orch.ingest(parse_events(json.dumps(batch)), now)
    return orch, driver


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _take_epoch(orch: Orchestrator, holder: str = "test") -> int:
    with orch.sessions.begin() as session:
        return journal.take_epoch(session, holder, datetime.now(UTC))


def _step(orch: Orchestrator, kind: str) -> StepRow:
    with orch.sessions() as session:
        return session.scalars(select(StepRow).where(StepRow.kind == kind)).one()


def _changes(tmp: Path) -> list[str]:
    return [c["call"] for c in calls(tmp) if c["changed"]]


def test_each_acquisition_takes_a_new_epoch_and_a_rival_waits(store_engine: Engine) -> None:
    first = leadership_for(_url(store_engine), "daemon")
    rival = leadership_for(_url(store_engine), "orchestrator apply")
    assert first.acquire() and first.fence().epoch == 1
    assert not rival.acquire()
    first.release()
    assert rival.acquire() and rival.fence().epoch == 2
    assert not first.fence().held()  # the old epoch's fence stays down
    rival.release()


def test_a_claim_under_an_older_epoch_is_refused(orch: tuple[Orchestrator, Midway]) -> None:
    o, _ = orch
    o.apply(datetime.now(UTC))  # journal (and run) the batch unfenced
    old = _take_epoch(o)
    _take_epoch(o)
    with o.sessions.begin() as session:
        session.execute(text("UPDATE steps SET state = 'pending'"))
    with o.sessions.begin() as session:
        assert not journal.claim(session, _step(o, "purge").id, "pending", datetime.now(UTC), old)


@pytest.mark.postgres
def test_a_leader_whose_lock_connection_was_terminated_dispatches_nothing(
    postgres_engine: Engine, policies: dict[str, Policy], tmp_path: Path
) -> None:
    o, _ = _overdue(postgres_engine, policies, tmp_path)
    lock = leadership_for(_url(postgres_engine), "daemon")
    assert lock.acquire()
    o.fence = lock.fence()
    with postgres_engine.connect() as connection:
        keys = advisory_keys(str(connection.scalar(text("SELECT current_schema()"))))
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = :a AND objid = :b AND objsubid = 2"
            ),
            {"a": keys[0], "b": keys[1]},
        )
    report = o.apply(datetime.now(UTC))
    assert report.planned == 2 and {s.state for s in report.steps} == {"fenced"}
    assert _changes(tmp_path) == []
    with o.sessions() as session:
        assert set(session.scalars(select(StepRow.state))) == {"pending"}
    lock.release()


def test_an_outcome_after_another_leader_took_over_is_fenced_and_nothing_else_is_written(
    orch: tuple[Orchestrator, Midway], tmp_path: Path
) -> None:
    o, driver = orch
    o.fence = journal.Fence(_take_epoch(o, "old"), lambda: True)
    driver.during = lambda: _take_epoch(o, "new")  # the new leader took over mid-call
    report = o.apply(datetime.now(UTC))
    (terminate,) = [s for s in report.steps if s.kind == "terminate"]
    assert terminate.state == "fenced"
    step = _step(o, "terminate")
    assert (step.state, step.epoch, step.result) == ("running", 1, None)
    assert step.fenced_at is not None
    with o.sessions() as session:
        actions = set(session.scalars(select(AuditRow.action)))
        assert not {a for a in actions if a.startswith("step.terminate")}
        assert session.scalars(select(NotificationRow)).all() == []


def test_a_step_taken_over_is_inspected_and_not_run_again_when_its_state_holds(
    orch: tuple[Orchestrator, Midway], tmp_path: Path
) -> None:
    o, driver = orch
    o.fence = journal.Fence(_take_epoch(o, "old"), lambda: True)
    driver.during = lambda: _take_epoch(o, "new")
    o.apply(datetime.now(UTC))  # archived, but fenced: the step is left running
    driver.during = lambda: None
    o.fence = journal.Fence(_take_epoch(o, "next"), lambda: True)
    report = o.apply(datetime.now(UTC))
    assert [(s.kind, s.state) for s in report.steps] == [("terminate", "done"), ("purge", "done")]
    assert "taken over" in (_step(o, "terminate").result or "")
    assert _changes(tmp_path) == ["archive", "purge"]


def test_a_step_its_old_leader_may_still_be_in_is_left_until_the_grace_ends(
    orch: tuple[Orchestrator, Midway], tmp_path: Path
) -> None:
    o, _ = orch
    now = datetime.now(UTC)
    o.fence = journal.Fence(None, lambda: False)
    o.apply(now)  # journaled by a run whose lock was gone: nothing dispatched
    old = _take_epoch(o, "old")
    with o.sessions.begin() as session:  # the old leader claimed it, and is inside the call
        assert journal.claim(session, _step(o, "terminate").id, "pending", now, old)
    grace = timedelta(minutes=5)
    o.fence = journal.Fence(_take_epoch(o, "new"), lambda: True, grace, since=now)
    (left,) = o.apply(now + timedelta(minutes=1)).steps
    assert (left.kind, left.state) == ("terminate", "skipped") and _changes(tmp_path) == []
    report = o.apply(now + grace)
    assert [(s.kind, s.state) for s in report.steps] == [("terminate", "done"), ("purge", "done")]
    assert _changes(tmp_path) == ["archive", "purge"]


def test_an_operators_restore_running_unfenced_is_left_alone_by_the_leader(
    orch: tuple[Orchestrator, Midway], tmp_path: Path
) -> None:
    """``backups restore`` from the CLI runs unfenced while the daemon may lead; the
    leader's tick must not run the same restore again beside it, until its grace says
    the command died."""
    o, _ = orch
    now = datetime.now(UTC)
    spec = StepSpec(SERVICE, Action.RESTORE_BACKUP, f"{SERVICE}:restore:x", True, {}, "by hand")
    with o.sessions.begin() as session:
        row = journal.schedule(session, spec, "kvm-jkt-1", now, None)
        assert row is not None
        session.flush()
        assert journal.claim(session, row.id, "pending", now, None)  # the CLI, inside the call
    o.fence = journal.Fence(_take_epoch(o), lambda: True, since=now)
    report = o.apply(now + timedelta(minutes=10))
    restores = [s for s in report.steps if s.kind == "restore_backup"]
    assert [(s.state, s.detail) for s in restores] == [
        ("skipped", "an unfenced command may be in it")
    ]
    assert "restore_backup" not in [c["call"] for c in calls(tmp_path)]
    later = o.apply(now + o.fence.unfenced_grace + timedelta(minutes=1))
    assert [s.state for s in later.steps if s.kind == "restore_backup"] != ["skipped"]
