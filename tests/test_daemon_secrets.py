"""The job store keeps no secret: the store's password is not pickled into it (finding 8).

A real daemon on PostgreSQL, given a URL with a password (the test server
trusts local connections, so any password opens it), runs its jobs; then
every pickled ``scheduler_jobs.job_state`` is read back.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_SERVER, REPO, created

ORCHESTRATOR = str(REPO / ".venv" / "bin" / "orchestrator")
PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_SERVER)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {name}"))
    yield name
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
    admin.dispose()


def _logged(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.postgres
def test_no_password_in_the_pickled_job_state(schema: str, tmp_path: Path) -> None:
    db = PG_SERVER.replace("postgres@", f"postgres:{PASSWORD}@") + (
        f"?options=-csearch_path%3D{schema}"
    )
    subprocess.run([ORCHESTRATOR, "--db", db, "init"], check=True, capture_output=True)
    events = json.dumps([created("s1")])
    subprocess.run([ORCHESTRATOR, "--db", db, "event", "-"], input=events.encode(), check=True)
    log = tmp_path / "run.log"
    daemon = subprocess.Popen(
        [ORCHESTRATOR, "--db", db, "run", "--tick", "1"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        while not any(e["event"] == "tick" for e in _logged(log)):  # a job ran, with the store
            assert daemon.poll() is None, log.read_text()
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert not any(e["event"] == "job failed" for e in _logged(log)), log.read_text()
    with create_engine(db).connect() as connection:
        states = connection.execute(text("SELECT id, job_state FROM scheduler_jobs")).all()
    assert {job for job, _ in states} >= {"reconcile-tick", "state-sync"}
    for job, state in states:
        assert PASSWORD.encode() not in bytes(state), job
        stored = pickle.loads(state)
        assert (stored["args"], stored["kwargs"]) == (("term",), {}), job
    assert PASSWORD not in log.read_text()
