"""A Linux router whose interfaces are customers' switch ports, over SSH and Ansible.

Reads go over SSH (paramiko, host key pinned): one command prints the
port's link, its host routes and the forward filter's sets, so looking
costs a fraction of a playbook run. Changes go through the playbooks
``route-addresses.yml`` and ``switch-port.yml`` (ansible-runner, the key
through ssh-agent's FIFO), and only when the read shows something to
change; the playbooks read again before they act, so a change made
meanwhile by someone else is not undone twice.

One lock per router: two services' routes on one router are changed one
after the other, never interleaved (a route deleted twice would fail).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from pathlib import Path
from typing import Any

from drivers.ansible import AnsibleRunner
from drivers.base import (
    Capability,
    NetworkDriver,
    Observed,
    Outcome,
    PermanentError,
    PortState,
    Power,
    TemporaryError,
)
from drivers.ssh import SshRunner, SshTarget

# A Linux interface name: at most 15 characters, none that a shell would read.
PORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")
TABLE = "inet orchestrator"
SEPARATOR = "@@orchestrator@@"


class RouterNetwork(NetworkDriver):
    capabilities = frozenset({Capability.ROUTE_ADDRESSES, Capability.SWITCH_PORT})
    secret_options = frozenset({"ssh_key"})

    def __init__(
        self, *, name: str = "router", artifacts: str = "/var/lib/orchestrator/runs", **ssh: Any
    ) -> None:
        """``ssh`` is how to reach the router, as ``SshTarget.pinned`` takes it: address,
        ssh_key (a ``Secret``), ssh_user, ssh_port, host_keys, known_hosts."""
        self.name = name
        target = SshTarget.pinned(**ssh)
        self.ssh = SshRunner(target)
        self.runner = AnsibleRunner({name: target}, Path(artifacts))
        self._lock = threading.Lock()

    def port_state(self, router: str, port: str) -> PortState:
        completed = self.ssh.run(_read_command(_port(port)), timeout=30)
        if completed.exit_status != 0:
            raise _read_failed(router, port, completed.stderr)
        return _parse_state(port, completed.stdout)

    def set_port(
        self, router: str, port: str, up: bool, description: str | None = None
    ) -> Outcome:
        with self._lock:
            before = self.port_state(router, port)
            described = description is None or description == before.description
            restored = not up or set(before.addresses) <= set(before.routes)
            if before.up == up and described and restored:
                return _outcome(False, before, f"{port} already {'up' if up else 'down'}")
            variables: dict[str, Any] = {"port": port, "state": "up" if up else "down"}
            if description is not None:
                variables["description"] = description
            run = self.runner.run(self.name, "switch-port", variables)
            after = self.port_state(router, port)
        detail = f"{port} {'opened' if up else 'shut'} on {router}"
        return _outcome(True, after, detail, {"playbook_run": run.evidence["artifacts"]})

    def route(self, router: str, port: str, addresses: tuple[str, ...]) -> Outcome:
        wanted = tuple(sorted(_address(a) for a in addresses))
        with self._lock:
            before = self.port_state(router, port)
            if before.carries(wanted):
                return _outcome(False, before, f"{port} already carries {_words(wanted)}")
            run = self.runner.run(
                self.name, "route-addresses", {"port": port, "addresses": list(wanted)}
            )
            after = self.port_state(router, port)
        if not after.carries(wanted):
            raise PermanentError(
                f"{router} {port}: routed {_words(after.routes)} after asking for {_words(wanted)}"
            )
        evidence = {"playbook_run": run.evidence["artifacts"], "before": list(before.addresses)}
        return _outcome(True, after, f"{port} carries {_words(wanted)}", evidence)


def _port(port: str) -> str:
    if not PORT_NAME.match(port):
        raise PermanentError(f"{port!r} is not a port name (an interface name, up to 15 chars)")
    return port


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise PermanentError(f"{text!r} is not an IP address: nothing was routed") from None


def _read_command(port: str) -> str:
    """Link, IPv4 and IPv6 routes, both filter sets: one round trip, parts apart."""
    parts = [
        f"ip -j link show dev {port}",
        f"ip -j -4 route show dev {port}",
        f"ip -j -6 route show dev {port}",
        f"nft -j list set {TABLE} routed4",
        f"nft -j list set {TABLE} routed6",
    ]
    return f" && echo {SEPARATOR} && ".join(parts)


def _read_failed(router: str, port: str, stderr: str) -> PermanentError:
    if "does not exist" in stderr or "Cannot find device" in stderr:
        return PermanentError(f"{router} has no port {port}")
    if "routed4" in stderr or "routed6" in stderr or TABLE in stderr:
        return PermanentError(f"{router} is not prepared: no filter table {TABLE} with its sets")
    return PermanentError(f"{router} {port}: cannot read the port: {stderr.strip()[:200]}")


def _parse_state(port: str, text: str) -> PortState:
    try:
        link, routes4, routes6, set4, set6 = (json.loads(p) for p in text.split(SEPARATOR))
    except ValueError as exc:
        raise TemporaryError(f"{port}: the router's answer was cut short: {exc}") from None
    routes = [r.get("dst", "") for r in [*routes4, *routes6]]
    hosts = [d.split("/")[0] for d in routes if "/" not in d or d.endswith(("/32", "/128"))]
    members = [
        element["concat"][1]
        for listing in (set4, set6)
        for item in listing["nftables"]
        for element in item.get("set", {}).get("elem", [])
        if element["concat"][0] == port
    ]
    return PortState(
        up="UP" in link[0].get("flags", []),
        description=link[0].get("ifalias", ""),
        addresses=tuple(sorted(_address(a) for a in members)),
        routes=tuple(sorted(_address(a) for a in hosts)),
    )


def _outcome(
    changed: bool, state: PortState, detail: str, evidence: dict[str, Any] | None = None
) -> Outcome:
    observed = Observed(Power.RUNNING, network_cut=not state.up, addresses=state.routes)
    port = {"up": state.up, "addresses": list(state.addresses), "routes": list(state.routes)}
    return Outcome(changed, observed, detail, {"port": port, **(evidence or {})})


def _words(addresses: tuple[str, ...]) -> str:
    return ", ".join(addresses) or "no address"


__all__ = ["RouterNetwork"]
