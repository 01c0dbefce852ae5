"""A plain ``pip install .`` (no extras) gives a daemon that can tell billing what it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import Engine

from orchestrator.engine import Orchestrator
from tests.conftest import REPO, created, events


class Billing(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def billing() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Billing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    server.shutdown()


def test_a_plain_install_delivers_a_notification(
    orchestrator: Orchestrator, sqlite_engine: Engine, billing: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    orchestrator.ingest(events(created("plain1", at=now.isoformat())), now)
    orchestrator.apply(now)  # its address assigned: a notification for billing is queued
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", str(REPO)]
    subprocess.run(pip, check=True, capture_output=True, timeout=1200)
    # The term the leader's scheduler hands its notification job: the store, billing's URL.
    config = {
        "db": sqlite_engine.url.render_as_string(hide_password=False),
        "policies": str(REPO / "inventory" / "policies"),
        "inventory": str(REPO / "inventory" / "lab.yaml"),
        "billing_url": billing,
    }
    script = (
        "from orchestrator.faces import daemon; "
        f"daemon.notify_billing(daemon.open_term(daemon.DaemonConfig(**{config!r})))"
    )
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", script],
        cwd=tmp_path,  # the installed package, not the checkout
        env={**os.environ, "ORCHESTRATOR_BILLING_SECRET": "plain-install-secret"},
        check=True,
        timeout=120,
    )
    (body,) = Billing.received
    sent = json.loads(body)
    assert (sent["type"], sent["service"]) == ("ip.assigned", "plain1")
