"""Cron runs take the daemon's leadership lock: a second run at once exits 75 and says who."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from orchestrator.core.events import parse_events
from orchestrator.core.inventory import load_inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.faces.cli import EX_TEMPFAIL, app
from orchestrator.state import journal
from orchestrator.state.leadership import leadership_for
from tests.conftest import REPO, created

INVENTORY = """
all:
  vars:
    pools:
      lab-v4: {cidr: 192.0.2.0/24, gateway: 192.0.2.1}
  children:
    hypervisors:
      hosts:
        kvm-jkt-1: {driver: witness, uri: "%s", pool: lab-v4, max_concurrent: 2,
                    options: {gate: "%s"}}
"""


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _apply(url: str, inventory: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.fencing.witness", "--db", url]
    return subprocess.Popen(
        [*command, "--inventory", str(inventory), "apply"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _wait_for_holder(orch: Orchestrator, pid: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        with orch.sessions() as session:
            row = journal.leader(session)
        if row is not None and row.holder.endswith(f"pid {pid}"):
            return
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)


def test_a_second_apply_while_one_runs_exits_75_naming_the_first(
    store_engine: Engine, policies: dict[str, Policy], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY % (tmp_path, gate))
    orch = Orchestrator(store_engine, policies, load_inventory(inventory))
    orch.seed_pools()
    now = datetime.now(UTC)
    orch.ingest(parse_events(json.dumps([created("cron1", at=now.isoformat())])), now)
    first = _apply(_url(store_engine), inventory)
    _wait_for_holder(orch, first.pid)  # and its create waits at the gate
    second = _apply(_url(store_engine), inventory)
    _, reason = second.communicate(timeout=60)
    gate.touch()
    _, first_err = first.communicate(timeout=60)
    assert first.returncode == 0, first_err
    assert second.returncode == EX_TEMPFAIL == 75
    assert len(reason.strip().splitlines()) == 1
    assert "orchestrator apply not run" in reason and f"pid {first.pid}" in reason


@pytest.mark.parametrize(
    "command", [["drift", "--mark"], ["backups", "plan", "--schedule"], ["apply"]], ids=str
)
def test_writing_commands_refuse_while_the_daemon_leads(
    store_engine: Engine, command: list[str]
) -> None:
    daemon = leadership_for(_url(store_engine), "daemon")
    assert daemon.acquire()
    try:
        result = CliRunner().invoke(app, ["--db", _url(store_engine), *command])
    finally:
        daemon.release()
    assert result.exit_code == EX_TEMPFAIL, result.output
    assert "the store is led by daemon on" in result.output
