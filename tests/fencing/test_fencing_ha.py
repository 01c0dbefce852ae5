"""Two daemons on PostgreSQL; the leader's lock connection is cut again and again mid-batch.

The daemons are real processes (``orchestrator run`` with the witness
driver, see ``witness.py``); the cut is ``pg_terminate_backend`` of the
backend holding the advisory lock, as a failover or a network blip does.
Judged by the witness's log of every driver call: no destructive call is
made twice, and no step is lost (every service ends purged, every step done).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from orchestrator.core.events import parse_events
from orchestrator.core.inventory import load_inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.state.leadership import advisory_keys
from orchestrator.state.models import StepRow
from tests.conftest import REPO
from tests.fencing.witness import DESTRUCTIVE_CALLS, calls, register

pytestmark = pytest.mark.postgres
CUTS = 20
SERVICES = 120
RUNNING = {"power": "running", "archived": False, "data": True}
INVENTORY = """
all:
  vars:
    pools:
      lab-v4: {{cidr: 192.0.2.0/24, gateway: 192.0.2.1}}
  children:
    hypervisors:
      hosts:
        kvm-jkt-1: {{driver: witness, uri: "{dir}", pool: lab-v4, max_concurrent: 4,
                    options: {{delay: 0.4}}}}
        kvm-jkt-2: {{driver: witness, uri: "{dir}", pool: lab-v4, max_concurrent: 4,
                    options: {{delay: 0.4}}}}
"""


class Daemon:
    def __init__(self, url: str, inventory: Path, log: Path) -> None:
        command = [
            sys.executable,
            "-m",
            "tests.fencing.witness",
            "--db",
            url,
            "--inventory",
            str(inventory),
            "run",
            "--tick",
            "0.3",
            "--takeover",
            "0.3",
            "--orphan-grace",
            "5",
        ]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture
def machines(tmp_path: Path) -> Path:
    (tmp_path / "machines").mkdir()
    return tmp_path / "machines"


@pytest.fixture
def orch(
    postgres_engine: Engine, policies: dict[str, Policy], tmp_path: Path, machines: Path
) -> Orchestrator:
    register()
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY.format(dir=machines))
    orch = Orchestrator(postgres_engine, policies, load_inventory(inventory))
    orch.seed_pools()
    return orch


@pytest.fixture
def start_daemons(postgres_engine: Engine, tmp_path: Path) -> Iterator[Callable[[], None]]:
    url = postgres_engine.url.render_as_string(hide_password=False)
    pair: list[Daemon] = []

    def start() -> None:
        pair.extend(
            Daemon(url, tmp_path / "inventory.yaml", tmp_path / f"d{n}.log") for n in (0, 1)
        )

    yield start
    for daemon in pair:
        daemon.stop()


def test_cutting_the_leaders_lock_mid_batch_runs_nothing_twice_and_loses_nothing(
    start_daemons: Callable[[], None], orch: Orchestrator, postgres_engine: Engine, machines: Path
) -> None:
    """Every service of the batch is running and 200 days overdue before the daemons start:
    each needs a terminate and a purge, all at once, while the cuts come."""
    services = [f"f{uuid.uuid4().hex[:6]}{n:03d}" for n in range(SERVICES)]
    for service in services:
        (machines / f"{service}.json").write_text(json.dumps(RUNNING))
    now = datetime.now(UTC)
    batch = [event for s in services for event in (_created(s, now), _unpaid(s, now))]
    orch.ingest(parse_events(json.dumps(batch)), now)
    keys = _lock_keys(postgres_engine)
    start_daemons()
    cuts = 0
    while cuts < CUTS and _destructive_open(orch, services):
        holder = _lock_holder(postgres_engine, keys)
        if holder is not None and _destructive_running(orch, services):
            _terminate(postgres_engine, holder)
            cuts += 1
            _wait_for_another_leader(postgres_engine, keys, holder)
        time.sleep(0.02)
    assert cuts == CUTS, "the batch ended before the cuts did: make it larger"
    wait_for(lambda: _done(orch, services, ("terminate", "purge")) == 2 * len(services), 180)

    made = Counter((c["service"], c["call"]) for c in calls(machines))
    twice = {k: n for k, n in made.items() if k[1] in DESTRUCTIVE_CALLS and n > 1}
    assert twice == {}
    for service in services:
        assert made[(service, "archive")] == made[(service, "purge")] == 1, service
        assert json.loads((machines / f"{service}.json").read_text())["data"] is False
    with orch.sessions() as session:
        rows = session.execute(
            select(StepRow.service_id, StepRow.kind, StepRow.state).where(
                StepRow.service_id.in_(services)
            )
        ).all()
    assert {state for _, _, state in rows} == {"done"}, rows
    assert sorted(Counter((s, k) for s, k, _ in rows).values()) == [1] * 2 * len(services)


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _wait_for_another_leader(engine: Engine, keys: tuple[int, int], old: int) -> None:
    wait_for(lambda: _lock_holder(engine, keys) not in (None, old))


def _created(service: str, now: datetime) -> dict[str, object]:
    data = {
        "type": "service.created",
        "customer": service,
        "policy": "klikserver",
        "product": "kvm_vps",
        "host": f"kvm-jkt-{1 + int(service[-1]) % 2}",
    }
    return {"id": f"{service}-created", "service": service, "at": now.isoformat(), "data": data}


def _unpaid(service: str, now: datetime) -> dict[str, object]:
    """An invoice 200 days overdue: the service is past its purge at once."""
    due = (now - timedelta(days=200)).date().isoformat()
    data = {"type": "invoice.issued", "invoice": "inv-1", "due": due}
    return {"id": f"{service}-inv-1", "service": service, "at": now.isoformat(), "data": data}


def _states(orch: Orchestrator, services: list[str], destructive: bool) -> list[str]:
    with orch.sessions() as session:
        return list(
            session.scalars(
                select(StepRow.state).where(
                    StepRow.service_id.in_(services), StepRow.destructive.is_(destructive)
                )
            )
        )


def _destructive_open(orch: Orchestrator, services: list[str]) -> bool:
    """Until the leader journaled the batch, and while any of it is left to run."""
    states = set(_states(orch, services, True))
    return not states or bool({"pending", "running", "retry", "paused", "held"} & states)


def _destructive_running(orch: Orchestrator, services: list[str]) -> bool:
    return "running" in _states(orch, services, True)


def _done(orch: Orchestrator, services: list[str], kinds: tuple[str, ...]) -> int:
    with orch.sessions() as session:
        found = session.scalars(
            select(StepRow.id).where(
                StepRow.service_id.in_(services),
                StepRow.kind.in_(kinds),
                StepRow.state == "done",
            )
        ).all()
    return len(found)


def _lock_keys(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        return advisory_keys(str(connection.scalar(text("SELECT current_schema()"))))


def _lock_holder(engine: Engine, keys: tuple[int, int]) -> int | None:
    query = text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = :a AND objid = :b AND objsubid = 2"
    )
    with engine.connect() as connection:
        pid = connection.scalar(query, {"a": keys[0], "b": keys[1]})
    return int(pid) if pid is not None else None


def _terminate(engine: Engine, pid: int) -> None:
    with engine.connect() as connection:
        connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
