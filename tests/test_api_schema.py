"""Schemathesis against the OpenAPI document the hooks API serves: no 5xx, no off-schema reply.

Writes need a signature over the exact body, which generated requests lack:
for them this explores the refusal paths (401, 422) and their documented
shapes; the signed paths are covered by tests/test_api.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import settings

from orchestrator.api import create_app
from orchestrator.engine import Orchestrator
from orchestrator.inventory import load_inventory
from orchestrator.policy import load_policies
from orchestrator.store.db import migrate, open_engine
from tests.conftest import REPO


def _app():  # type: ignore[no-untyped-def]
    engine = open_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'schema.db'}")
    migrate(engine)
    orchestrator = Orchestrator(
        engine,
        load_policies(REPO / "inventory" / "policies"),
        load_inventory(REPO / "inventory" / "lab.yaml"),
    )
    return create_app(orchestrator, [b"schemathesis-secret"])


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=40, deadline=None)
def test_the_api_keeps_to_its_schema(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate()
