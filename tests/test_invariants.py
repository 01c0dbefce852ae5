"""Safety invariants 1-4 of ARCHITECTURE.md, as properties over random billing histories.

1. A service in good standing never gets a suspend, reclaim, terminate or purge step.
2. Nothing is purged before its retention window ends or while a hold covers it.
3. A reclaimed IP is not given to another service before its quarantine ends;
   an IP is never held by two services.
4. Every step is journaled before it runs.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from drivers.base import ComputeDriver, MachineSpec, Observed, Outcome, Power, ServiceRef
from drivers.libvirt import LibvirtCompute
from orchestrator.core.events import Event, parse_events
from orchestrator.core.facts import derive_facts
from orchestrator.core.holds import hold_end
from orchestrator.core.inventory import Inventory
from orchestrator.core.lifecycle import lifecycle
from orchestrator.core.policy import load_policies
from orchestrator.core.reconcile import Current, reconcile
from orchestrator.core.steps import Action, StepKind
from orchestrator.engine import Orchestrator
from orchestrator.run.guards import covering_hold, still_warranted
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.ingest import UnmatchedPayment
from orchestrator.state.models import EventRow, StepRow
from tests.conftest import REPO, WIB

START = datetime(2026, 11, 1, tzinfo=WIB)
PROFILES = ["klikserver", "cybernet", "herza", "cbncloud", "cloudmatika"]
POLICIES = load_policies(REPO / "inventory" / "policies")


def _at(hours: int) -> str:
    return (START + timedelta(hours=hours)).isoformat()


@st.composite
def histories(draw: st.DrawFn, service: str = "s1") -> list[dict[str, Any]]:
    """A service's billing life: invoices, payments, renewals, deposits, holds, abuse."""
    policy = draw(st.sampled_from(PROFILES))
    product = draw(st.sampled_from(sorted(POLICIES[policy].products)))
    items: list[dict[str, Any]] = [
        {
            "type": "service.created",
            "customer": "c",
            "policy": policy,
            "product": product,
            "host": "kvm-jkt-1",
            "subscription_end": draw(
                st.none() | st.dates(START.date(), START.date() + timedelta(days=60)).map(str)
            ),
        }
    ]
    for n in range(draw(st.integers(0, 8))):
        items.append(draw(_billing_event(n)))
    hours = sorted(
        draw(st.lists(st.integers(0, 24 * 90), min_size=len(items), max_size=len(items)))
    )
    hours[0] = 0
    return [
        {"id": f"{service}-{n}", "service": service, "at": _at(h), "data": data}
        for n, (h, data) in enumerate(zip(hours, items, strict=True))
    ]


def _billing_event(n: int) -> st.SearchStrategy[dict[str, Any]]:
    invoice = st.sampled_from(["a", "b", "c"])
    due = st.dates(START.date(), START.date() + timedelta(days=60)).map(str)
    return st.one_of(
        st.builds(lambda i, d: {"type": "invoice.issued", "invoice": i, "due": d}, invoice, due),
        st.builds(lambda i: {"type": "invoice.paid", "invoice": i}, invoice),
        st.builds(lambda d: {"type": "service.renewed", "until": d}, due),
        st.builds(lambda b: {"type": "deposit.changed", "balance": str(b)}, st.integers(-5, 5)),
        st.just({"type": "hold.placed", "hold": f"h{n}", "kind": "legal"}),
        st.just({"type": "hold.released", "hold": f"h{n - 1}"}),
        st.just({"type": "admin.suspended"}),
        st.just({"type": "admin.unsuspended"}),
    )


observed_states = st.builds(
    Observed,
    power=st.sampled_from(list(Power)),
    network_cut=st.booleans(),
    archived=st.booleans(),
    data_present=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(
    history=histories(),
    hours=st.integers(0, 24 * 120),
    seen=observed_states,
    addresses=st.sampled_from([(), ("192.0.2.9",)]),
    was_purged=st.booleans(),
)
def test_good_standing_never_gets_a_destructive_step(
    history: list[dict[str, Any]],
    hours: int,
    seen: Observed,
    addresses: tuple[str, ...],
    was_purged: bool,
) -> None:
    facts = derive_facts("s1", parse_events(json.dumps(history)))
    now = START + timedelta(hours=hours)
    verdict = lifecycle(facts, POLICIES[facts.policy], now)
    steps = reconcile("s1", verdict, Current(seen, addresses, was_purged), facts.revision)
    if verdict.good_standing:
        assert not [s for s in steps if s.destructive]
    for step in steps:
        if step.destructive:
            assert still_warranted(step.action, verdict), (step, verdict.phase)


@settings(max_examples=400, deadline=None)
@given(history=histories(), hours=st.integers(0, 24 * 120))
def test_purge_never_before_its_day_nor_under_a_hold(
    history: list[dict[str, Any]],
    hours: int,
) -> None:
    facts = derive_facts("s1", parse_events(json.dumps(history)))
    policy = POLICIES[facts.policy]
    now = START + timedelta(hours=hours)
    verdict = lifecycle(facts, policy, now)
    for entry in verdict.reached:
        assert entry.planned_at is not None and entry.at >= entry.planned_at
        if entry.step == StepKind.PURGE:
            for hold in facts.holds:
                end = hold_end(hold, policy)
                in_force = hold.placed_at <= entry.at and (end is None or end > entry.at)
                assert not in_force, (hold, entry)


# -- through the engine, on the libvirt test hypervisor ---------------------


class JournalWitness(ComputeDriver):
    """The real driver, checking before each change that the journal says it is running."""

    def __init__(self, inner: LibvirtCompute, orchestrator_box: list[Orchestrator]) -> None:
        self.inner, self.box = inner, orchestrator_box
        self.capabilities = inner.capabilities
        self.calls: list[tuple[str, str]] = []

    def _witness(self, kind: str, ref: ServiceRef) -> None:
        with self.box[0].sessions() as session:
            running = session.scalars(
                select(StepRow.kind).where(
                    StepRow.service_id == ref.service_id, StepRow.state == "running"
                )
            ).all()
        assert running, f"{kind} on {ref.service_id} with no running journal step"
        self.calls.append((ref.service_id, kind))

    def inspect(self, ref: ServiceRef) -> Observed:
        return self.inner.inspect(ref)

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        self._witness("create", ref)
        return self.inner.create(ref, spec)

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        self._witness("suspend", ref)
        return self.inner.suspend(ref, method)

    def resume(self, ref: ServiceRef) -> Outcome:
        self._witness("resume", ref)
        return self.inner.resume(ref)

    def archive(self, ref: ServiceRef) -> Outcome:
        self._witness("archive", ref)
        return self.inner.archive(ref)

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        self._witness("restore", ref)
        return self.inner.restore(ref, spec)

    def purge(self, ref: ServiceRef) -> Outcome:
        self._witness("purge", ref)
        return self.inner.purge(ref)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    lives=st.lists(histories(), min_size=3, max_size=3),
    ticks=st.lists(st.integers(1, 72), min_size=5, max_size=25),
)
def test_engine_keeps_the_invariants(
    tmp_path_factory: Any,
    inventory: Inventory,
    lives: list[list[dict[str, Any]]],
    ticks: list[int],
) -> None:
    run = uuid.uuid4().hex[:8]
    engine = open_engine(f"sqlite:///{Path(tmp_path_factory.mktemp('inv')) / 'store.db'}")
    migrate(engine)
    box: list[Orchestrator] = []
    witness = JournalWitness(LibvirtCompute("test:///default"), box)
    orch = Orchestrator(
        engine, POLICIES, inventory, drivers=lambda *_: witness, sleep=lambda _: None
    )
    box.append(orch)
    with orch.sessions.begin() as session:
        from orchestrator.state import ipam

        ipam.seed_pool(session, "lab-v4", ["192.0.2.50", "192.0.2.51", "192.0.2.52"])
    pending = sorted(
        (
            json.loads(json.dumps(e).replace('"s1', f'"{run}-{n}'))
            for n, life in enumerate(lives)
            for e in life
        ),
        key=lambda e: e["at"],
    )
    now = START
    for hours in ticks:
        now += timedelta(hours=hours)
        due = [e for e in pending if e["at"] <= now.isoformat()]
        pending = [e for e in pending if e not in due]
        for item in due:  # one at a time: an unmatched payment is refused alone
            with contextlib.suppress(UnmatchedPayment):
                orch.ingest(parse_events(json.dumps(item)), now)
        orch.apply(now, yes=True)
        _check_addresses(orch)
    _check_destructive_steps(orch, now)


def _check_addresses(orch: Orchestrator) -> None:
    """Walk the journal: no address goes to another service while it rests in quarantine."""
    with orch.sessions() as session:
        rows = session.scalars(
            select(StepRow)
            .where(StepRow.state == "done", StepRow.kind.in_(["assign_ips", "reclaim_ips"]))
            .order_by(StepRow.finished_at, StepRow.id)
        ).all()
    holder: dict[str, str] = {}
    resting: dict[str, tuple[str, datetime]] = {}
    for row in rows:
        result = json.loads(row.result or "{}")
        for address in result.get("addresses", []):
            if row.kind == "reclaim_ips":
                holder.pop(address, None)
                resting[address] = (
                    row.service_id,
                    datetime.fromisoformat(result["quarantine_until"]),
                )
                continue
            owner = holder.get(address)
            assert owner in (None, row.service_id), (
                f"{address} held by {owner} and {row.service_id}"
            )
            if address in resting and resting[address][0] != row.service_id:
                assert row.finished_at is not None and row.finished_at >= resting[address][1]
            holder[address] = row.service_id


def _check_destructive_steps(orch: Orchestrator, now: datetime) -> None:
    """Each destructive step, judged on the facts known when it started, was warranted."""
    with orch.sessions() as session:
        rows = session.scalars(
            select(StepRow).where(StepRow.destructive.is_(True), StepRow.state == "done")
        ).all()
        for row in rows:
            assert row.started_at is not None
            known = session.scalars(
                select(EventRow)
                .where(
                    EventRow.service_id == row.service_id, EventRow.received_at <= row.started_at
                )
                .order_by(EventRow.occurred_at, EventRow.seq)
            )
            facts = derive_facts(row.service_id, (Event.model_validate_json(e.body) for e in known))
            verdict = orch.verdict(facts, row.started_at)
            assert not verdict.good_standing, (row.kind, row.service_id, row.started_at)
            if row.kind == "purge":  # invariant 2: no purge under a hold, none before its day
                assert (
                    covering_hold(Action.PURGE, facts, POLICIES[facts.policy], row.started_at)
                    is None
                )
                purge_days = [e.at for e in verdict.reached if e.step == StepKind.PURGE]
                assert purge_days and min(purge_days) <= row.started_at
