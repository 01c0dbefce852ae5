"""Shared fixtures: the shipped policies and inventory, and stores on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from hypothesis import settings
from sqlalchemy import Engine, create_engine, func, select, text

from orchestrator.core.events import Event, parse_events
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.policy import Policy, load_policies
from orchestrator.engine import Orchestrator
from orchestrator.faces.api import create_app
from orchestrator.secrets.signing import signed_headers
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import EventRow

REPO = Path(__file__).resolve().parents[1]
# ``pytest --hypothesis-profile=long`` for a longer search of the properties.
settings.register_profile("long", max_examples=100_000)
WIB = ZoneInfo("Asia/Jakarta")
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# The audit chain is keyed in every test, as in production; the CLI's subprocesses inherit it.
os.environ.setdefault("ORCHESTRATOR_TEST_AUDIT_KEY", "audit-key-of-the-test-suite")
os.environ.setdefault("ORCHESTRATOR_AUDIT_KEY", "env:ORCHESTRATOR_TEST_AUDIT_KEY")


@pytest.fixture(scope="session")
def policies() -> dict[str, Policy]:
    return load_policies(REPO / "inventory" / "policies")


@pytest.fixture(scope="session")
def inventory() -> Inventory:
    return load_inventory(REPO / "inventory" / "lab.yaml")


def wib(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=WIB)


def events(*items: dict[str, Any]) -> list[Event]:
    return parse_events(json.dumps(list(items)))


def created(
    service: str,
    policy: str = "klikserver",
    product: str = "kvm_vps",
    at: str = "2026-11-01T10:00:00+07:00",
    host: str = "kvm-jkt-1",
    **extra: Any,
) -> dict[str, Any]:
    data = {
        "type": "service.created",
        "customer": f"cust-{service}",
        "policy": policy,
        "product": product,
        "host": host,
        **extra,
    }
    return {"id": f"{service}-created", "service": service, "at": at, "data": data}


def invoice(
    service: str, due: str, invoice_id: str = "inv-1", at: str = "2026-11-17T10:00:00+07:00"
) -> dict[str, Any]:
    return {
        "id": f"{service}-{invoice_id}-issued",
        "service": service,
        "at": at,
        "data": {"type": "invoice.issued", "invoice": invoice_id, "due": due},
    }


def paid(service: str, at: str, invoice_id: str = "inv-1") -> dict[str, Any]:
    return {
        "id": f"{service}-{invoice_id}-paid-{at}",
        "service": service,
        "at": at,
        "data": {"type": "invoice.paid", "invoice": invoice_id},
    }


def package_changed(
    service: str,
    vcpus: int,
    memory_mib: int,
    disk_gib: int,
    at: str = "2026-11-25T10:00:00+07:00",
) -> dict[str, Any]:
    spec = {"vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib}
    return {
        "id": f"{service}-package-{at}",
        "service": service,
        "at": at,
        "data": {"type": "service.package_changed", "spec": spec},
    }


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    return engine


@pytest.fixture
def postgres_engine() -> Iterator[Engine]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_SERVER)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    engine = open_engine(f"{PG_SERVER}?options=-csearch_path%3D{schema}")
    migrate(engine)
    yield engine
    engine.dispose()
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "postgres_engine"
    engine: Engine = request.getfixturevalue(name)
    return engine


@pytest.fixture
def orchestrator(
    sqlite_engine: Engine, policies: dict[str, Policy], inventory: Inventory
) -> Orchestrator:
    orch = Orchestrator(sqlite_engine, policies, inventory, sleep=lambda _: None)
    orch.seed_pools()
    return orch


# -- the hooks, served by uvicorn on loopback ---------------------------------

OLD, NEW = b"rotating-out-secret", b"rotating-in-secret"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Served:
    client: httpx.Client
    clock: Clock
    orchestrator: Orchestrator

    def post(
        self,
        path: str,
        payload: object,
        secret: bytes = NEW,
        skew: int = 0,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        request_id: str | None = None,
    ) -> httpx.Response:
        raw = json.dumps(payload).encode()
        stamp = int(self.clock.now.timestamp()) + skew
        sent = {
            **signed_headers(secret, "POST", path, stamp, raw, request_id),
            "Content-Type": "application/json",
            **(headers or {}),
        }
        return self.client.post(path, content=body if body is not None else raw, headers=sent)

    def events(self) -> int:
        with self.orchestrator.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(EventRow)) or 0)


@pytest.fixture
def served(orchestrator: Orchestrator) -> Iterator[Served]:
    clock = Clock(wib(2026, 11, 20, 10))
    config = uvicorn.Config(
        create_app(orchestrator, [OLD, NEW], clock), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield Served(client, clock, orchestrator)
    server.should_exit = True
    thread.join()
