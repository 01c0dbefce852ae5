"""Driver errors reach the operator's screen only through the redactor (finding 7).

A Proxmox endpoint that echoes the request's Authorization header (a proxy
in front of it, a debug build) puts the API token into every error text:
``apply``, ``backups list`` and ``drift`` must print those errors masked.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.faces.cli import app
from tests.conftest import created

TOKEN = "5e1f3a0c-9d7b-4c2e-8f61-2b9a7d4e0c13"
SERVICE = "echo-1"
Cli = Callable[..., Any]


class Echo(BaseHTTPRequestHandler):
    """Every call fails, quoting the credentials it was sent."""

    def _echo(self) -> None:
        self.send_response(500, f"echo Authorization: {self.headers['Authorization']}")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"data": null}')

    do_GET = do_POST = do_PUT = do_DELETE = _echo

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    where = tmp_path_factory.mktemp("echo-tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1]), cert
    server.shutdown()


@pytest.fixture
def cli(echo: tuple[int, Path], tmp_path: Path) -> Cli:
    port, cert = echo
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    host = {
        "driver": "proxmox", "uri": f"https://127.0.0.1:{port}", "pool": "lab-v4",
        "options": {"user": "root@pam", "token_name": "ci", "token_secret": f"file:{secret}",
                    "verify": str(cert), "template": "debian-12-tmpl", "poll": 0.05},
    }  # fmt: skip
    inventory = {
        "all": {
            "vars": {"pools": {"lab-v4": {"cidr": "192.0.2.0/24"}}},
            "children": {"proxmox": {"hosts": {"pve-echo": host}}},
        }
    }
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    base = [
        "--db",
        f"sqlite:///{tmp_path / 'cli.db'}",
        "--inventory",
        str(tmp_path / "inventory.yaml"),
    ]
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> Any:
        return runner.invoke(app, [*base, *args], input=stdin)

    assert run("init").exit_code == 0
    event = created(SERVICE, policy="herza", product="proxmox_vps", host="pve-echo")
    assert run("event", "-", stdin=json.dumps([event])).exit_code == 0
    with sqlite3.connect(tmp_path / "cli.db") as connection:  # as if it had been created
        connection.execute("UPDATE services SET applied_phase = 'active'")
    return run


@pytest.mark.parametrize(
    "command",
    [
        ("apply",),
        ("apply", "--json"),
        ("backups", "list", SERVICE),
        ("drift",),
        ("drift", "--json"),
    ],
)
def test_a_driver_error_quoting_the_token_is_shown_masked(
    cli: Cli, command: tuple[str, ...]
) -> None:
    result = cli(*command)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "echo Authorization" in result.output, result.output  # the error is shown...
    assert TOKEN not in result.output  # ...without the token
    assert "PVEAPIToken=root@pam!ci=***" in result.output.replace("\n", "")
