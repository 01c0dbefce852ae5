"""Signed billing events over loopback: accepted per second, p50/p99, against a bare baseline.

    .venv/bin/python bench/hooks_bench.py --events 2000

Two servers, each its own process on loopback: ``orchestrator serve`` (HMAC
check, replay check, validation, storage in SQLite, facts refreshed) and a
baseline with the same route that only parses the events (no signature
check, no storage). This process is the billing system: it posts the same
signed events, one request at a time, to each, and prints both and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.secrets.signing import signed_headers  # noqa: E402

SECRET = b"bench-secret"
BASELINE = """
import sys, uvicorn
from fastapi import FastAPI, Request
from orchestrator.core.events import parse_events
app = FastAPI()
@app.post("/v1/events", status_code=202)
async def events(request: Request):
    parsed = parse_events(await request.body())
    return {"accepted": [e.id for e in parsed], "duplicates": []}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server on {port} did not start")


def _events(count: int) -> list[bytes]:
    """Half new services, half an invoice for each: billing's everyday traffic."""
    now = datetime.now(UTC).isoformat()
    bodies = []
    for n in range(count):
        service = f"bench-{n // 2}"
        data = (
            {
                "type": "service.created",
                "customer": service,
                "policy": "klikserver",
                "product": "kvm_vps",
                "host": "kvm-jkt-1",
            }
            if n % 2 == 0
            else {"type": "invoice.issued", "invoice": f"inv-{n}", "due": "2027-01-01"}
        )
        event = {"id": f"bench-{n}", "service": service, "at": now, "data": data}
        bodies.append(json.dumps(event).encode())
    return bodies


def _post_all(port: int, bodies: list[bytes]) -> tuple[float, list[float]]:
    latencies = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        started = time.perf_counter()
        for body in bodies:
            headers = {
                **signed_headers(SECRET, int(time.time()), body),
                "Content-Type": "application/json",
            }
            sent = time.perf_counter()
            response = client.post("/v1/events", content=body, headers=headers)
            latencies.append(time.perf_counter() - sent)
            assert response.status_code == 202, response.text
        return time.perf_counter() - started, latencies


def _summary(name: str, seconds: float, latencies: list[float]) -> tuple[float, float, float]:
    rate = len(latencies) / seconds
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    print(f"{name:<12} {rate:8.1f} events/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    return rate, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    bodies = _events(args.events)
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "ORCHESTRATOR_HOOK_SECRETS": SECRET.decode()}
        db = ["--db", f"sqlite:///{workdir}/bench.db"]
        cli = str(REPO / ".venv" / "bin" / "orchestrator")
        subprocess.run([cli, *db, "init"], check=True, capture_output=True, env=env)
        ours_port, base_port = _port(), _port()
        servers = [
            _start([cli, *db, "serve", "--port", str(ours_port)], ours_port, env),
            _start([sys.executable, "-c", BASELINE, str(base_port)], base_port, env),
        ]
        try:
            ours = _summary("orchestrator", *_post_all(ours_port, bodies))
            base = _summary("baseline", *_post_all(base_port, bodies))
        finally:
            for server in servers:
                server.terminate()
                server.wait()
    print(
        f"throughput ratio orchestrator/baseline: {ours[0] / base[0]:.2f}x; "
        f"p50 ratio {ours[1] / base[1]:.2f}x; p99 ratio {ours[2] / base[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
