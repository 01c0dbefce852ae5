"""A real ``orchestrator serve`` refuses a 100 MB body without holding it (finding 9).

Its peak resident memory is read from /proc, reset just before the upload
(``clear_refs``), so what is measured is what the upload cost.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

ORCHESTRATOR = str(REPO / ".venv" / "bin" / "orchestrator")
HUNDRED_MB = 100 << 20
CHUNK = 1 << 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[httpx.Client, int]]:
    port = _free_port()
    env = {**os.environ, "ORCHESTRATOR_HOOK_SECRETS": "limits-test-secret"}
    command = [ORCHESTRATOR, "--db", f"sqlite:///{tmp_path / 'o.db'}", "serve", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w")
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        while not _healthy(client):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield client, process.pid
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _hundred_mb() -> Iterator[bytes]:
    block = b"[" * CHUNK
    for _ in range(HUNDRED_MB // CHUNK):
        yield block


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_with_little_memory(
    server: tuple[httpx.Client, int], declared: bool
) -> None:
    client, pid = server
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _kib(pid, "VmRSS")
    headers = {"Content-Length": str(HUNDRED_MB)} if declared else {}
    response = client.post("/v1/events", content=_hundred_mb(), headers=headers)
    assert response.status_code == 413 and "too large" in response.json()["detail"]
    grown_mib = (_kib(pid, "VmHWM") - before) / 1024
    assert grown_mib < 50, f"the server grew by {grown_mib:.0f} MiB"
