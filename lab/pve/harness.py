"""Start the emulator as a real process and drive its lab controls from tests.

``start_lab(directory)`` runs ``python -m lab.pve`` on a free port, waits until it answers
over HTTPS, and returns a ``PveLab``; secrets are read from the state file the emulator
wrote (0600), never passed on its command line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]


@dataclass
class PveLab:
    """Where the emulator listens and the credentials it issued."""

    host: str
    port: int
    verify: Path
    user: str
    password: str
    token_name: str
    token_secret: str = field(repr=False)
    restricted_token_name: str
    restricted_token_secret: str = field(repr=False)
    control_secret: str = field(repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def client(self, token_name: str | None = None, token_secret: str | None = None) -> Any:
        """A proxmoxer client with the full token (or the one given)."""
        import proxmoxer

        return proxmoxer.ProxmoxAPI(
            self.host, port=self.port, user=self.user,
            token_name=token_name or self.token_name,
            token_value=token_secret or self.token_secret, verify_ssl=str(self.verify),
        )

    def restricted_client(self) -> Any:
        return self.client(self.restricted_token_name, self.restricted_token_secret)

    def control(self, method: str, what: str, **args: Any) -> Any:
        response = requests.request(method, f"{self.url}/_lab/{what}", json=args,
                                    headers={"X-Lab-Secret": self.control_secret},
                                    verify=str(self.verify), timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"lab control {what}: {response.status_code} {response.text}")
        return response.json()["data"]

    def hold_lock(self, node: str, vmid: int, lock: str, seconds: float) -> None:
        """Put ``lock`` on the guest for ``seconds``, like a backup running elsewhere."""
        self.control("POST", "hold-lock", node=node, vmid=vmid, lock=lock, seconds=seconds)

    def fail_next(self, task_type: str, exitstatus: str, log_lines: list[str]) -> None:
        """The next task of ``task_type`` (vzdump, qmstart, ...) fails with this log."""
        self.control("POST", "fail-next", type=task_type, exitstatus=exitstatus, log=log_lines)

    def lose_nextid_races(self, count: int) -> None:
        """The next ``count`` vmids /cluster/nextid proposes go to another client at once."""
        self.control("POST", "nextid-races", count=count)

    def set_clock(self, when: datetime) -> int:
        """The emulator's clock (backup names, ctime) continues from ``when``."""
        return int(self.control("POST", "clock", set=when.isoformat()))

    def advance_clock(self, seconds: float) -> int:
        return int(self.control("POST", "clock", advance=seconds))

    def task_seconds(self, seconds: float) -> None:
        """How long every task runs from now on."""
        self.control("POST", "task-seconds", seconds=seconds)

    def state(self) -> dict[str, Any]:
        return dict(self.control("GET", "state"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_lab(directory: Path, timeout: float = 20.0) -> PveLab:
    """Run the emulator in a subprocess; the caller must ``stop()`` it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lab.pve", "--port", str(port), "--dir", str(directory)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        return _wait(process, directory, port, timeout)
    except BaseException:
        process.terminate()
        process.wait(timeout=10)
        raise


def _wait(process: subprocess.Popen[bytes], directory: Path, port: int,
          timeout: float) -> PveLab:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the PVE emulator exited with {process.returncode}")
        state = directory / "state.json"
        if state.exists():
            lab = _from_state(json.loads(state.read_text()), process)
            try:
                requests.get(f"{lab.url}/api2/json/version", verify=str(lab.verify), timeout=1)
                return lab
            except requests.RequestException:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"the PVE emulator did not answer on port {port} in {timeout}s")


def _from_state(data: dict[str, Any], process: subprocess.Popen[bytes]) -> PveLab:
    return PveLab(
        host="127.0.0.1", port=int(data["port"]), verify=Path(data["cert"]), user=data["user"],
        password=data["password"], token_name=data["token_name"],
        token_secret=data["token_secret"],
        restricted_token_name=data["restricted_token_name"],
        restricted_token_secret=data["restricted_token_secret"],
        control_secret=data["control_secret"], process=process,
    )
