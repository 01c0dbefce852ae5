"""The lab's shared fixtures: bring it up once, and leave no guest behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.inventory import Inventory, load_inventory
from tests.conftest import REPO

LAB_DIR = Path("/var/lib/orchestrator-lab")
VIRSH = ["virsh", "-q", "-c", "qemu:///system"]


@pytest.fixture(scope="module")
def lab() -> str:
    subprocess.run(
        ["bash", str(REPO / "lab" / "libvirt.sh"), "up"], check=True, capture_output=True
    )
    return (LAB_DIR / "accel").read_text().strip()


@pytest.fixture(scope="module")
def lab_inventory(lab: str) -> Inventory:
    return load_inventory(REPO / "inventory" / "lab-libvirt.yaml")


@pytest.fixture(autouse=True)
def remove_guests_afterwards() -> Iterator[None]:
    """Each test's guests go when it ends, whatever happened: the lab is shared."""
    before = set(virsh("list", "--all", "--name").stdout.split())
    yield
    for name in set(virsh("list", "--all", "--name").stdout.split()) - before:
        virsh("destroy", name)
        virsh("undefine", name, "--snapshots-metadata")
        virsh("vol-delete", "--pool", "orchestrator-lab", f"{name}.qcow2")
        for volume in virsh("vol-list", "orchestrator-lab-backups").stdout.split():
            if volume.startswith(f"{name}--"):
                virsh("vol-delete", "--pool", "orchestrator-lab-backups", volume)


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True)


def domain_state(service: str) -> str:
    result = virsh("domstate", f"svc-{service}")
    return result.stdout.strip() if result.returncode == 0 else "absent"
