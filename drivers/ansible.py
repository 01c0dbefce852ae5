"""Playbooks from playbooks/ run against inventory hosts, through ansible-runner.

Each run gets its own directory under ``artifacts`` (ansible-runner's
private data dir: the generated inventory, the job events, stdout, the
return code), kept for the audit trail; the outcome names it. The SSH key
reaches ansible through ansible-runner's ``ssh_key``: written into a FIFO
that ``ssh-agent`` reads once, so the key never lies on disk in clear text
and is on no command line (``suppress_env_files``: ansible-runner's default
would also copy it to ``env/ssh_key``; the lab's secrets test caught that).
Host keys are pinned as for ``drivers.ssh``: a known_hosts file written for
the run from the inventory's keys, with
``StrictHostKeyChecking=yes``. Secrets are never passed as extra vars,
which ansible-runner would write to ``env/extravars``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ansible_runner

from drivers.base import Observed, Outcome, PermanentError, Power, RunnerDriver, TemporaryError
from drivers.ssh import SshTarget

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"


class AnsibleRunner(RunnerDriver):
    """Runs one playbook at a time against one inventory host."""

    def __init__(
        self,
        targets: dict[str, SshTarget],
        artifacts: Path,
        playbooks: Path = PLAYBOOKS,
        timeout: float = 3600.0,
    ) -> None:
        self.targets = targets
        self.artifacts = artifacts
        self.playbooks = playbooks
        self.timeout = timeout

    def run(self, host: str, task: str, variables: dict[str, Any]) -> Outcome:
        target = self._target(host)
        playbook = self.playbooks / f"{task}.yml"
        if not playbook.is_file():
            raise PermanentError(f"no playbook {playbook.name} in {self.playbooks}")
        run_dir = self._run_dir(host, task)
        known_hosts = _known_hosts(run_dir, target)
        result = ansible_runner.run(
            private_data_dir=str(run_dir),
            project_dir=str(self.playbooks),
            playbook=playbook.name,
            inventory=_inventory(host, target, known_hosts),
            extravars=variables,
            ssh_key=target.key.reveal() + "\n",
            envvars=_environment(),
            timeout=int(self.timeout),
            quiet=True,
            # Without this, ansible-runner also writes the key to env/ssh_key in clear.
            suppress_env_files=True,
        )
        return _outcome(host, task, run_dir, result)

    def _target(self, host: str) -> SshTarget:
        try:
            return self.targets[host]
        except KeyError:
            raise PermanentError(f"no SSH target known for {host}") from None

    def _run_dir(self, host: str, task: str) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_dir = self.artifacts / f"{stamp}-{host}-{task}-{secrets.token_hex(3)}"
        run_dir.mkdir(parents=True, mode=0o700)
        return run_dir


def _environment() -> dict[str, str]:
    """ansible-playbook from this interpreter's environment, host keys checked."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {
        "PATH": path,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }


def _known_hosts(run_dir: Path, target: SshTarget) -> Path:
    path = run_dir / "known_hosts"
    lines = [f"{target.address} {' '.join(key.split()[:2])}" for key in target.host_keys]
    if target.known_hosts is not None:
        lines += target.known_hosts.read_text().splitlines()
    path.write_text("\n".join(lines) + "\n")
    return path


def _inventory(host: str, target: SshTarget, known_hosts: Path) -> dict[str, Any]:
    ssh_args = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    return {
        "all": {
            "hosts": {
                host: {
                    "ansible_host": target.address,
                    "ansible_port": target.port,
                    "ansible_user": target.user,
                    "ansible_ssh_common_args": ssh_args,
                    "ansible_python_interpreter": "auto_silent",
                }
            }
        }
    }


def _outcome(host: str, task: str, run_dir: Path, result: Any) -> Outcome:
    results = _task_results(result)
    evidence = {"run": task, "artifacts": str(run_dir), "rc": result.rc, "results": results}
    if result.status == "successful":
        return Outcome(True, Observed(Power.RUNNING), f"{task} ran on {host}", evidence)
    failures = _failures(result)
    message = f"{task} on {host} ended {result.status} (rc {result.rc}): {failures}"
    if result.status == "timeout" or _unreachable(result):
        raise TemporaryError(message, 300.0)
    raise PermanentError(message)


def _task_results(result: Any) -> dict[str, Any]:
    """Each task's returned values by task name (the module's own JSON).

    No secret is passed in as a variable, so none comes back; the caller's
    boundary still redacts whatever it stores.
    """
    found: dict[str, Any] = {}
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_ok", "runner_on_failed") and "res" in data:
            found[data.get("task", "?")] = _plain(data["res"])
    return found


def _failures(result: Any) -> str:
    messages = []
    for event in result.events:
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            res = event.get("event_data", {}).get("res", {})
            messages.append(f"{event['event_data'].get('task', '?')}: {res.get('msg', '')}")
    return "; ".join(messages) or "see the run's stdout"


def _unreachable(result: Any) -> bool:
    return any(e.get("event") == "runner_on_unreachable" for e in result.events)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = ["PLAYBOOKS", "AnsibleRunner"]
