"""The one flow end to end on libvirt's test hypervisor, checked through libvirt itself."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from drivers.base import MachineSpec, Outcome, PermanentError, ServiceRef, TemporaryError
from drivers.libvirt import LibvirtCompute
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import ApplyReport, Orchestrator, Settings, tick
from orchestrator.faces.cli import app
from orchestrator.run.guards import BreakerSettings
from orchestrator.state import ipam, journal
from orchestrator.state.models import ServiceRow, StepRow
from tests.conftest import created, events, invoice, package_changed, paid, wib


@pytest.fixture(scope="module")
def virt() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


def state_of(virt: libvirt.virConnect, service: str) -> str:
    """The domain's state as libvirt reports it, independently of our driver."""
    try:
        domain = virt.lookupByName(f"svc-{service}")
    except libvirt.libvirtError:
        return "absent"
    return {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTOFF: "off",
    }.get(domain.state()[0], str(domain.state()[0]))


def volume_exists(virt: libvirt.virConnect, service: str) -> bool:
    pool = virt.storagePoolLookupByName("default-pool")
    pool.refresh()
    return f"svc-{service}.img" in pool.listVolumes()


def unpaid_from_december(orch: Orchestrator, service: str) -> None:
    """A Klikserver VPS whose invoice falls due on 1 December and is not paid."""
    orch.ingest(events(created(service), invoice(service, "2026-12-01")), wib(2026, 11, 20))


@pytest.fixture
def sid() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _steps(orch: Orchestrator, service: str) -> list[tuple[str, str]]:
    with orch.sessions() as session:
        rows = session.scalars(
            select(StepRow).where(StepRow.service_id == service).order_by(StepRow.id)
        )
        return [(r.kind, r.state) for r in rows]


def test_klikserver_vps_lives_through_the_ladder(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 11, 20, 0, 1))
    assert state_of(virt, sid) == "running"
    with orchestrator.sessions() as session:
        row = session.get(ServiceRow, sid)
        assert row is not None and row.next_at == wib(2026, 12, 2)
    orchestrator.apply(wib(2026, 12, 5, 23))
    assert state_of(virt, sid) == "running"
    orchestrator.apply(wib(2026, 12, 6, 0, 1))
    assert state_of(virt, sid) == "paused"
    orchestrator.apply(wib(2026, 12, 9, 0, 1))
    assert state_of(virt, sid) == "absent" and volume_exists(virt, sid)
    orchestrator.apply(wib(2026, 12, 16, 0, 1))
    assert not volume_exists(virt, sid)
    kinds = [k for k, s in _steps(orchestrator, sid) if s == "done"]
    assert kinds == [
        "create",
        "assign_ips",
        "notice",  # the invoice, 14 days before it falls due
        "notice",  # overdue, on day 1
        "suspend",
        "reclaim_ips",
        "terminate",
        "purge",
    ]


def test_payment_undoes_the_suspension(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 12, 6, 0, 1))
    assert state_of(virt, sid) == "paused"
    orchestrator.ingest(events(paid(sid, "2026-12-06T10:00:00+07:00")), wib(2026, 12, 6, 10))
    orchestrator.apply(wib(2026, 12, 6, 10, 1))
    assert state_of(virt, sid) == "running"
    assert _steps(orchestrator, sid)[-1] == ("resume", "done")


def test_payment_after_termination_restores_the_archive_and_the_same_ip(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 11, 20, 0, 1))
    first = _addresses(orchestrator, sid)
    orchestrator.apply(wib(2026, 12, 9, 0, 1))
    assert state_of(virt, sid) == "absent" and _addresses(orchestrator, sid) == ()
    orchestrator.ingest(events(paid(sid, "2026-12-10T10:00:00+07:00")), wib(2026, 12, 10, 10))
    orchestrator.apply(wib(2026, 12, 10, 10, 1))
    assert state_of(virt, sid) == "running"
    assert _addresses(orchestrator, sid) == first


def _addresses(orch: Orchestrator, service: str) -> tuple[str, ...]:
    with orch.sessions() as session:
        return ipam.held_by(session, service)


def test_legal_hold_keeps_the_data(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 11, 20, 0, 1))
    orchestrator.apply(wib(2026, 12, 9, 0, 1))
    assert state_of(virt, sid) == "absent" and volume_exists(virt, sid)
    hold = {
        "id": f"{sid}-hold",
        "service": sid,
        "at": "2026-12-10T10:00:00+07:00",
        "data": {"type": "hold.placed", "hold": "h1", "kind": "legal"},
    }
    orchestrator.ingest(events(hold), wib(2026, 12, 10, 10))
    orchestrator.apply(wib(2027, 1, 20))
    assert volume_exists(virt, sid)
    release = {
        "id": f"{sid}-release",
        "service": sid,
        "at": "2027-01-21T10:00:00+07:00",
        "data": {"type": "hold.released", "hold": "h1"},
    }
    orchestrator.ingest(events(release), wib(2027, 1, 21, 10))
    orchestrator.apply(wib(2027, 1, 21, 10, 1))
    assert not volume_exists(virt, sid)


def test_a_step_whose_billing_changed_is_cancelled(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 12, 5))
    tick.journal_service(orchestrator, sid, wib(2026, 12, 6, 0, 1), ApplyReport(), {})
    assert ("suspend", "pending") in _steps(orchestrator, sid)
    orchestrator.ingest(events(paid(sid, "2026-12-06T00:02:00+07:00")), wib(2026, 12, 6, 0, 2))
    orchestrator.apply(wib(2026, 12, 6, 0, 3))
    assert ("suspend", "cancelled") in _steps(orchestrator, sid)
    assert state_of(virt, sid) == "running"


def test_a_payment_landing_within_the_tick_cancels_the_suspend_it_journaled(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    """The tick judges each service once and hands the verdict down; a payment that
    lands between journaling and the guard changes the facts, and the guard judges
    the new facts, not the tick's memory of the old ones."""
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 12, 5))
    now = wib(2026, 12, 6, 0, 1)
    verdicts = tick.Verdicts(orchestrator.policies, now)
    tick.journal_service(orchestrator, sid, now, ApplyReport(), {}, verdicts=verdicts)
    assert ("suspend", "pending") in _steps(orchestrator, sid)
    orchestrator.ingest(events(paid(sid, "2026-12-06T00:00:30+07:00")), now)
    with orchestrator.sessions() as session:
        runnable = journal.runnable(session, now, False)
    assert [s.kind for s in runnable] == ["suspend"]
    tick.executor(orchestrator, now, False, verdicts).run(runnable, now)
    assert ("suspend", "cancelled") in _steps(orchestrator, sid)
    assert state_of(virt, sid) == "running"


def test_paid_after_the_purge_date_but_before_the_purge_ran_is_restored_not_purged(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    """The scheduler was down from before the purge's date; the customer paid after that
    date. The data still exists, so the next tick restores it and purges nothing."""
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 11, 20, 0, 1))
    orchestrator.apply(wib(2026, 12, 9, 0, 1))  # terminated: archived, addresses reclaimed
    assert state_of(virt, sid) == "absent" and volume_exists(virt, sid)
    orchestrator.ingest(events(paid(sid, "2026-12-17T10:00:00+07:00")), wib(2026, 12, 17, 10))
    orchestrator.apply(wib(2026, 12, 20))
    assert volume_exists(virt, sid) and state_of(virt, sid) == "running"
    assert "purge" not in [kind for kind, _ in _steps(orchestrator, sid)]


def test_a_step_left_running_by_a_crash_completes_once(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    unpaid_from_december(orchestrator, sid)
    orchestrator.apply(wib(2026, 12, 5))
    tick.journal_service(orchestrator, sid, wib(2026, 12, 6, 0, 1), ApplyReport(), {})
    with orchestrator.sessions.begin() as session:  # the process died after claiming the step
        session.execute(
            update(StepRow)
            .where(StepRow.kind == "suspend", StepRow.service_id == sid)
            .values(state="running", attempts=1)
        )
    orchestrator.apply(wib(2026, 12, 6, 0, 5))
    assert state_of(virt, sid) == "paused"
    assert [s for s in _steps(orchestrator, sid) if s[0] == "suspend"] == [("suspend", "done")]


class Flaky(LibvirtCompute):
    """The real driver, failing its first suspends the way a dropped connection does."""

    def __init__(self, failures: int, error: type[Exception] = TemporaryError) -> None:
        super().__init__("test:///default")
        self.failures, self.error, self.calls = failures, error, 0

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("connection reset by peer")
        return super().suspend(ref, method)


def _with_driver(
    engine: Engine, policies: dict[str, Policy], inventory: Inventory, driver: Any, **settings: Any
) -> Orchestrator:
    orch = Orchestrator(
        engine,
        policies,
        inventory,
        Settings(**settings),
        drivers=lambda *_: driver,
        sleep=lambda _: None,
    )
    orch.seed_pools()
    return orch


@pytest.mark.parametrize(
    ("failures", "error", "state"),
    [
        (2, TemporaryError, "done"),
        (5, TemporaryError, "retry"),
        (1, PermanentError, "failed"),
    ],
)
def test_retries_follow_the_error_type(
    sqlite_engine: Engine,
    policies: dict[str, Policy],
    inventory: Inventory,
    virt: libvirt.virConnect,
    sid: str,
    failures: int,
    error: type[Exception],
    state: str,
) -> None:
    driver = Flaky(failures, error)
    orch = _with_driver(sqlite_engine, policies, inventory, driver)
    unpaid_from_december(orch, sid)
    orch.apply(wib(2026, 12, 6, 0, 1))
    assert ("suspend", state) in _steps(orch, sid)
    assert state_of(virt, sid) == ("paused" if state == "done" else "running")
    if state == "retry":
        orch.apply(wib(2026, 12, 6, 0, 2))  # too early: not retried yet
        assert driver.calls == 3
        driver.failures = 0
        orch.apply(wib(2026, 12, 6, 0, 30))
        assert state_of(virt, sid) == "paused"


def test_breaker_pauses_a_mass_suspension(
    sqlite_engine: Engine,
    policies: dict[str, Policy],
    inventory: Inventory,
    virt: libvirt.virConnect,
) -> None:
    orch = _with_driver(
        sqlite_engine,
        policies,
        inventory,
        LibvirtCompute("test:///default"),
        breaker=BreakerSettings(max_share=0.3, min_count=5),
    )
    run = uuid.uuid4().hex[:6]
    ids = [f"b{run}{n}" for n in range(10)]
    batch = [e for s in ids for e in (created(s), invoice(s, "2026-12-01"))]
    orch.ingest(events(*batch), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    report = orch.apply(wib(2026, 12, 6, 0, 1))
    assert {s.state for s in report.steps if s.kind == "suspend"} <= {"paused"}
    assert all(state_of(virt, s) == "running" for s in ids)
    with orch.sessions() as session:
        assert "BREAKER OPEN" in (orch.breaker.status(session) or "")
    with orch.sessions.begin() as session:
        assert orch.breaker.reset(session, "operator:test", wib(2026, 12, 6, 9))
    calmer = _with_driver(
        sqlite_engine,
        policies,
        inventory,
        LibvirtCompute("test:///default"),
        breaker=BreakerSettings(max_share=1.0, min_count=5),
    )
    calmer.apply(wib(2026, 12, 6, 9, 1))
    assert all(state_of(virt, s) == "paused" for s in ids)


def test_a_step_the_policy_does_not_make_automatic_waits_for_yes(
    orchestrator: Orchestrator, sid: str
) -> None:
    closing = {
        "id": f"{sid}-closed",
        "service": sid,
        "at": "2026-12-01T10:00:00+07:00",
        "data": {"type": "service.cancelled"},
    }
    orchestrator.ingest(
        events(created(sid, product="colocation", host="metal-jkt-1"), closing),
        wib(2026, 12, 1, 10),
    )
    orchestrator.apply(wib(2027, 3, 2))
    assert ("hand_over", "awaiting") in _steps(orchestrator, sid)
    orchestrator.apply(wib(2027, 3, 2, 1), yes=True)
    assert ("hand_over", "done") in _steps(orchestrator, sid)


def test_explain_json_for_the_klikserver_acceptance(tmp_path: Any, sid: str) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    assert runner.invoke(app, ["--db", db, "init"]).exit_code == 0
    source = tmp_path / "events.json"
    source.write_text(json.dumps([created(sid), invoice(sid, "2026-12-01")]))
    assert (
        runner.invoke(app, ["--db", db, "event", str(source), "--at", "2026-11-20"]).exit_code == 0
    )
    result = runner.invoke(app, ["--db", db, "explain", sid, "--at", "2026-12-01", "--json"])
    data = json.loads(result.output)
    days = {e["step"]: e["day"] for e in data["timeline"]}
    assert days["suspend"] == "2026-12-06"
    assert days["reclaim_ips"] == "2026-12-09"
    assert days["terminate"] == "2026-12-09"
    assert all(e["clause"] for e in data["timeline"])
    payment = tmp_path / "paid.json"
    payment.write_text(json.dumps(paid(sid, "2026-12-06T10:00:00+07:00")))
    assert (
        runner.invoke(
            app, ["--db", db, "event", str(payment), "--at", "2026-12-06T10:00:00+07:00"]
        ).exit_code
        == 0
    )
    after = json.loads(
        runner.invoke(app, ["--db", db, "explain", sid, "--at", "2026-12-06", "--json"]).output
    )
    assert after["phase"] == "active" and after["timeline"] == []
    assert after["undo"] == ["unsuspend"]
    again = runner.invoke(app, ["--db", db, "event", str(payment)])
    assert "0 accepted, 1 already known" in again.output


def test_cli_refuses_a_bad_event_and_stores_nothing(tmp_path: Any) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    runner.invoke(app, ["--db", db, "init"])
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"id": "x", "service": "s", "at": "2026-12-01", "data": {"type": "invoice.paid"}}'
    )
    result = runner.invoke(app, ["--db", db, "event", str(bad)])
    assert result.exit_code == 2 and "nothing was stored" in result.output
    listing = runner.invoke(app, ["--db", db, "services", "list", "--json"])
    assert json.loads(listing.output) == []


def test_audit_verify_cli(tmp_path: Any, sid: str) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    runner.invoke(app, ["--db", db, "init"])
    source = tmp_path / "events.json"
    source.write_text(json.dumps([created(sid)]))
    runner.invoke(app, ["--db", db, "event", str(source)])
    assert runner.invoke(app, ["--db", db, "audit", "verify"]).exit_code == 0
    with sqlite3.connect(tmp_path / "cli.db") as connection:
        connection.execute("UPDATE audit SET actor = 'mallory'")
    result = runner.invoke(app, ["--db", db, "audit", "verify", "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["ok"] is False


class Crowded(LibvirtCompute):
    """The real driver, counting how many creates run at once."""

    def __init__(self) -> None:
        super().__init__("test:///default")
        self.running = self.most = 0
        self.lock = threading.Lock()

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)  # long enough for the other workers to pile in
        try:
            return super().create(ref, spec)
        finally:
            with self.lock:
                self.running -= 1


def test_no_host_runs_more_than_its_limit(
    sqlite_engine: Engine,
    policies: dict[str, Policy],
    inventory: Inventory,
    virt: libvirt.virConnect,
) -> None:
    driver = Crowded()
    orch = _with_driver(sqlite_engine, policies, inventory, driver)
    run = uuid.uuid4().hex[:6]
    ids = [f"c{run}{n}" for n in range(6)]
    orch.ingest(events(*(created(s) for s in ids)), wib(2026, 11, 20))
    report = orch.apply(wib(2026, 11, 20, 0, 1))
    assert sum(1 for s in report.steps if s.kind == "create" and s.state == "done") == 6
    limit = inventory.hosts()["kvm-jkt-1"].max_concurrent
    assert driver.most == limit  # parallel, and never over the host's limit
    assert all(state_of(virt, s) == "running" for s in ids)


def test_a_package_change_resizes_the_machine(
    orchestrator: Orchestrator, virt: libvirt.virConnect, sid: str
) -> None:
    orchestrator.ingest(events(created(sid)), wib(2026, 11, 20))
    orchestrator.apply(wib(2026, 11, 20, 0, 1))
    change = package_changed(sid, 2, 1024, 1)
    orchestrator.ingest(events(change), wib(2026, 11, 25, 10))
    orchestrator.apply(wib(2026, 11, 25, 10, 1))
    assert _steps(orchestrator, sid)[-1] == ("resize", "done")
    xml = virt.lookupByName(f"svc-{sid}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert ">2</vcpu>" in xml and "<memory unit='KiB'>1048576</memory>" in xml


def test_an_exhausted_pool_is_retried_later_not_a_crash(
    sqlite_engine: Engine, policies: dict[str, Policy], inventory: Inventory, sid: str
) -> None:
    orch = Orchestrator(sqlite_engine, policies, inventory, sleep=lambda _: None)  # no pools seeded
    orch.ingest(events(created(sid)), wib(2026, 11, 20))
    report = orch.apply(wib(2026, 11, 20, 0, 1))
    assert [(s.kind, s.state) for s in report.steps] == [
        ("create", "done"),
        ("assign_ips", "retry"),
    ]
    assert "no address free" in report.steps[-1].detail
