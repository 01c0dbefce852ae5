"""Routers and uplinks in the inventory: what is refused, and where the file says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.inventory import load_inventory
from orchestrator.core.yamlerrors import PolicyError
from tests.conftest import REPO

LAB_NET = (REPO / "inventory" / "lab-net.yaml").read_text()


def _load(tmp_path: Path, text: str) -> PolicyError:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as refused:
        load_inventory(path)
    return refused.value


def _line(text: str, needle: str, nth: int = 0) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[nth]


def test_the_lab_inventory_names_each_hosts_port() -> None:
    inventory = load_inventory(REPO / "inventory" / "lab-net.yaml")
    ports = {name: host.uplink.port for name, host in inventory.hosts().items() if host.uplink}
    assert ports == {"hv-net-1": "cport1", "hv-net-2": "cport2", "colo-net-3": "cport3"}
    assert set(inventory.routers) == {"rtr-lab-1"}


def test_an_uplink_naming_an_unknown_router_is_refused_at_its_line(tmp_path: Path) -> None:
    text = LAB_NET.replace("{router: rtr-lab-1, port: cport2}", "{router: rtr-lab-9, port: cport2}")
    error = _load(tmp_path, text)
    [problem] = error.problems
    assert problem.line == _line(text, "rtr-lab-9") and problem.file.endswith("inventory.yaml")
    assert problem.field == "all.children.hypervisors.hosts.hv-net-2.uplink.router"
    assert "unknown router 'rtr-lab-9' (known: rtr-lab-1)" in str(error)


def test_two_hosts_on_one_port_are_refused(tmp_path: Path) -> None:
    text = LAB_NET.replace("port: cport3}", "port: cport1}")
    error = _load(tmp_path, text)
    assert "both name rtr-lab-1 port cport1: a port serves one host" in str(error)
    assert error.problems[0].line in (_line(text, "port: cport1"), _line(text, "port: cport1", 1))


def test_a_colocated_box_without_an_uplink_is_refused(tmp_path: Path) -> None:
    text = LAB_NET.replace("          uplink: {router: rtr-lab-1, port: cport3}\n", "")
    error = _load(tmp_path, text)
    assert "host colo-net-3 (driver colo) needs an uplink" in str(error)
    assert error.problems[0].line == _line(text, "colo-net-3:")


def test_a_port_name_a_shell_would_read_is_refused(tmp_path: Path) -> None:
    error = _load(tmp_path, LAB_NET.replace("port: cport2}", "port: 'cport2; reboot'}"))
    assert "uplink.port" in str(error) and "should match pattern" in str(error)
