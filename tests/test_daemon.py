"""The daemon as real processes on SQLite: one leads, one waits, a restart catches up once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import REPO

ORCHESTRATOR = str(REPO / ".venv" / "bin" / "orchestrator")


def _start(db: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ORCHESTRATOR, "--db", db, "run", "--tick", "1", "--takeover", "0.5"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def _events(log: Path) -> list[str]:
    return [
        json.loads(line)["event"] for line in log.read_text().splitlines() if line.startswith("{")
    ]


def _wait_for(log: Path, event: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while event not in _events(log):
        assert time.monotonic() < deadline, f"no {event!r} in {log.read_text()}"
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def test_one_leads_the_other_waits_and_takes_over(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'o.db'}"
    subprocess.run([ORCHESTRATOR, "--db", db, "init"], check=True, capture_output=True)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    leader = _start(db, first)
    _wait_for(first, "leader")
    standby = _start(db, second)
    _wait_for(second, "standby")
    assert _stop(leader) == 0 and "stopped" in _events(first)
    _wait_for(second, "leader")
    assert _stop(standby) == 0


def test_a_restart_after_downtime_runs_the_missed_tick_once_and_says_so(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'o.db'}"
    subprocess.run([ORCHESTRATOR, "--db", db, "init"], check=True, capture_output=True)
    before, after = tmp_path / "before.log", tmp_path / "after.log"
    daemon = _start(db, before)
    _wait_for(before, "leader")
    time.sleep(1.5)
    assert _stop(daemon) == 0
    time.sleep(4)  # down for several ticks
    daemon = _start(db, after)
    _wait_for(after, "catching up after downtime")
    assert _events(after).count("catching up after downtime") == 1
    assert _stop(daemon) == 0
