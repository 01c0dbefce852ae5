"""Planning at scale: a full plan, an incremental tick, and a naive loop, in one run.

    .venv/bin/python bench/plan_bench.py --services 1000000

Fills a SQLite store with N services of the five policies (a third with an
unpaid invoice somewhere in the two months around the plan date), exactly
100 of them due at the tick, and measures:

- the full plan: every service's lifecycle and steps, streamed from the
  store (``Orchestrator.plan``);
- an incremental tick: the indexed read of the services due, and their plan;
- a naive per-service loop, as a cron script would do it: one query per
  service for its row and its addresses, then the same lifecycle. It runs
  on a sample (``--naive-sample``) and is scaled to N; the ratio compares
  time per service, both measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.core.facts import Facts  # noqa: E402
from orchestrator.core.inventory import load_inventory  # noqa: E402
from orchestrator.core.policy import load_policies  # noqa: E402
from orchestrator.engine import Orchestrator  # noqa: E402
from orchestrator.engine.tick import plan_one  # noqa: E402
from orchestrator.state import services  # noqa: E402
from orchestrator.state.db import migrate, open_engine  # noqa: E402
from orchestrator.state.models import AddressRow, ServiceRow  # noqa: E402

WIB = ZoneInfo("Asia/Jakarta")
TICK = datetime(2026, 12, 10, 0, 1, tzinfo=WIB)
CHUNK = 50_000


def _facts(n: int, rng: random.Random, policies: list[tuple[str, str]]) -> Facts:
    policy, product = policies[n % len(policies)]
    unpaid = {}
    if n % 3 == 0:
        unpaid["inv"] = date(2026, 11, 15) + timedelta(days=rng.randrange(40))
    return Facts(
        service_id=f"svc-{n:07d}",
        customer=f"cust-{n}",
        policy=policy,
        product=product,
        host="kvm-jkt-1",
        spec={"vcpus": 1, "memory_mib": 512, "disk_gib": 1},
        created_at=datetime(2026, 1, 1, tzinfo=WIB),
        unpaid=unpaid,
        revision=3,
    )


def fill(orchestrator: Orchestrator, count: int, due: int) -> None:
    rng = random.Random(7)
    pairs = [(p.name, k.value) for p in orchestrator.policies.values() for k in p.products]
    far = datetime(2027, 6, 1, tzinfo=WIB)
    with orchestrator.sessions.begin() as session:
        for start in range(0, count, CHUNK):
            rows = []
            for n in range(start, min(start + CHUNK, count)):
                facts = _facts(n, rng, pairs)
                rows.append(
                    {
                        "id": facts.service_id,
                        "customer": facts.customer,
                        "policy": facts.policy,
                        "product": facts.product,
                        "host": facts.host,
                        "phase": "active",
                        "applied_phase": "active",
                        "facts": facts.to_json(),
                        "updated_at": TICK,
                        "next_at": TICK - timedelta(minutes=1) if n < due else far,
                    }
                )
            session.execute(insert(ServiceRow), rows)
        addresses = [
            {
                "address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                "pool": "bench",
                "state": "assigned",
                "service_id": f"svc-{n:07d}",
            }
            for n in range(count)
        ]
        session.execute(insert(AddressRow), addresses)


def full_plan(orchestrator: Orchestrator) -> tuple[float, int]:
    started = time.perf_counter()
    planned = sum(1 for _ in orchestrator.plan(TICK))
    return time.perf_counter() - started, planned


def tick(orchestrator: Orchestrator) -> tuple[float, int]:
    started = time.perf_counter()
    with orchestrator.sessions() as session:
        due = services.due(session, TICK)
        rows = session.execute(
            select(ServiceRow.id, ServiceRow.applied_phase, ServiceRow.facts).where(
                ServiceRow.id.in_(due)
            )
        ).all()
        held = {
            sid: (a,)
            for sid, a in session.execute(
                select(AddressRow.service_id, AddressRow.address).where(
                    AddressRow.service_id.in_(due)
                )
            )
        }
    for service_id, applied, facts_json in rows:
        plan_one(orchestrator, Facts.from_json(facts_json), applied, held.get(service_id, ()), TICK)
    return time.perf_counter() - started, len(rows)


def naive(orchestrator: Orchestrator, sample: int) -> float:
    """One query per service for its row and one for its addresses, then the same plan."""
    started = time.perf_counter()
    for n in range(sample):
        service_id = f"svc-{n:07d}"
        with orchestrator.sessions() as session:
            row = session.get(ServiceRow, service_id)
            assert row is not None
            held = tuple(
                session.scalars(
                    select(AddressRow.address).where(AddressRow.service_id == service_id)
                )
            )
            plan_one(orchestrator, Facts.from_json(row.facts), row.applied_phase, held, TICK)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=100)
    parser.add_argument("--naive-sample", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        engine = open_engine(f"sqlite:///{workdir}/bench.db")
        migrate(engine)
        orchestrator = Orchestrator(
            engine,
            load_policies(REPO / "inventory" / "policies"),
            load_inventory(REPO / "inventory" / "lab.yaml"),
        )
        started = time.perf_counter()
        fill(orchestrator, args.services, args.due)
        print(f"filled {args.services:,} services in {time.perf_counter() - started:.1f} s")
        full_seconds, planned = full_plan(orchestrator)
        tick_seconds, due = tick(orchestrator)
        sample = min(args.naive_sample, args.services)
        naive_seconds = naive(orchestrator, sample)
    per_full = full_seconds / args.services
    per_naive = naive_seconds / sample
    print(
        f"full plan:        {full_seconds:8.2f} s for {args.services:,} services "
        f"({per_full * 1e6:.1f} us each; {planned:,} with steps)"
    )
    print(f"incremental tick: {tick_seconds * 1000:8.2f} ms for {due} due services")
    print(
        f"naive loop:       {naive_seconds:8.2f} s for a sample of {sample:,} "
        f"({per_naive * 1e6:.1f} us each; {per_naive * args.services:.1f} s scaled to all)"
    )
    print(f"ratio naive/full per service: {per_naive / per_full:.2f}x")
    print(f"ratio full plan/tick: {full_seconds / tick_seconds:.0f}x")


if __name__ == "__main__":
    main()
