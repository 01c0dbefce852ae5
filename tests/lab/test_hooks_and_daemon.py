"""The billing system, the hooks API and the daemon as real processes, on the lab.

A signed ``invoice.paid`` for a suspended VPS leads, within a tick, to the
resume step, and the guest runs again (as libvirt says).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from orchestrator.secrets.signing import signed_headers
from tests.conftest import REPO
from tests.lab.conftest import domain_state

ORCHESTRATOR = str(REPO / ".venv" / "bin" / "orchestrator")
SECRET = b"hooks-test-secret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def stack(tmp_path: Path, lab: str) -> Iterator[tuple[httpx.Client, list[subprocess.Popen[bytes]]]]:
    base = [
        ORCHESTRATOR,
        "--db",
        f"sqlite:///{tmp_path / 'o.db'}",
        "--inventory",
        str(REPO / "inventory" / "lab-libvirt.yaml"),
    ]
    subprocess.run([*base, "init"], check=True, capture_output=True)
    port = _free_port()
    env = {**os.environ, "ORCHESTRATOR_HOOK_SECRETS": SECRET.decode()}
    processes = [
        subprocess.Popen(
            [*base, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "serve.log").open("w"),
        ),
        subprocess.Popen(
            [*base, "run", "--tick", "1"],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "run.log").open("w"),
        ),
    ]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        _wait(lambda: _healthy(client))
        yield client, processes
    for process in processes:
        process.send_signal(signal.SIGTERM)
    serve, daemon = (p.wait(timeout=60) for p in processes)
    assert daemon == 0
    # uvicorn shuts down cleanly, then re-raises the signal it caught.
    assert serve in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _wait(condition, seconds: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _post(client: httpx.Client, payload: object) -> httpx.Response:
    body = json.dumps(payload).encode()
    signed = signed_headers(SECRET, "POST", "/v1/events", int(time.time()), body)
    headers = {**signed, "Content-Type": "application/json"}
    return client.post("/v1/events", content=body, headers=headers)


def test_a_signed_payment_resumes_a_suspended_vps_within_a_tick(
    stack: tuple[httpx.Client, list[subprocess.Popen[bytes]]],
) -> None:
    client, _ = stack
    sid = f"h{uuid.uuid4().hex[:7]}"
    now = datetime.now(UTC)
    # Klikserver suspends 5 days after the due date and terminates after 8.
    due = (now - timedelta(days=6)).date().isoformat()
    created = {
        "id": f"{sid}-c",
        "service": sid,
        "at": (now - timedelta(days=40)).isoformat(),
        "data": {
            "type": "service.created",
            "customer": sid,
            "policy": "klikserver",
            "product": "kvm_vps",
            "host": "kvm-jkt-1",
            "spec": {"vcpus": 1, "memory_mib": 128, "disk_gib": 1},
        },
    }
    unpaid = {
        "id": f"{sid}-i",
        "service": sid,
        "at": (now - timedelta(days=20)).isoformat(),
        "data": {"type": "invoice.issued", "invoice": "inv-1", "due": due},
    }
    assert _post(client, [created, unpaid]).status_code == 202
    suspended = 'orchestrator_steps{kind="suspend",state="done"} 1'
    _wait(lambda: suspended in client.get("/metrics").text)  # a booting guest looks paused too
    assert domain_state(sid) == "paused"
    assert client.get(f"/v1/services/{sid}").json()["phase"] == "suspended"
    payment = {
        "id": f"{sid}-p",
        "service": sid,
        "at": datetime.now(UTC).isoformat(),
        "data": {"type": "invoice.paid", "invoice": "inv-1"},
    }
    assert _post(client, payment).status_code == 202
    resumed = 'orchestrator_steps{kind="resume",state="done"} 1'
    _wait(lambda: resumed in client.get("/metrics").text, seconds=30)
    assert domain_state(sid) == "running"
    assert client.get(f"/v1/services/{sid}").json()["phase"] == "active"
