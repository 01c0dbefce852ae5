"""Restoring a chosen vzdump backup, and verifying one by a test restore, on the PVE emulator.

Checks read the emulator through proxmoxer directly, never through the driver.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from drivers.base import MachineSpec, PermanentError, ServiceRef
from drivers.proxmox import ProxmoxCompute
from lab.pve.harness import PveLab
from tests.pve.test_proxmox_driver import HOST, driver, secret_file, vm_named  # noqa: F401

SMALL = MachineSpec(1, 512, 2)
LARGE = MachineSpec(2, 1024, 4)


def config_of(pve: PveLab, name: str) -> dict[str, Any]:
    vm = vm_named(pve, name)
    assert vm is not None, f"no VM named {name}"
    config: dict[str, Any] = pve.client().nodes(vm["node"]).qemu(vm["vmid"]).config.get()
    return config


def shape(pve: PveLab, name: str) -> tuple[int, str, str, str]:
    """What differs between the backups: cores, memory, description, disk size."""
    config = config_of(pve, name)
    size = re.search(r"size=(\w+)", str(config["scsi0"]))
    disk = size.group(1) if size else ""
    return int(config["cores"]), str(config["memory"]), str(config["description"]), disk


def status_of(pve: PveLab, name: str) -> str:
    vm = vm_named(pve, name)
    assert vm is not None
    return str(pve.client().nodes(vm["node"]).qemu(vm["vmid"]).status.current.get()["status"])


def all_vms(pve: PveLab) -> list[tuple[int, str]]:
    return sorted((int(vm["vmid"]), str(vm.get("name", "")))
                  for vm in pve.client().cluster.resources.get(type="vm"))


def disks_of(pve: PveLab, vmid: int) -> list[str]:
    client, found = pve.client(), []
    for storage in client.cluster.resources.get(type="storage"):
        content = client.nodes(storage["node"]).storage(storage["storage"]).content.get()
        found += [c["volid"] for c in content if c.get("vmid") == vmid and c["content"] == "images"]
    return sorted(found)


def backup_volids(pve: PveLab, name: str) -> list[str]:
    client, found = pve.client(), []
    for storage in client.cluster.resources.get(type="storage"):
        content = client.nodes(storage["node"]).storage(storage["storage"]).content.get()
        found += [c["volid"] for c in content if str(c.get("notes", "")).split()[:1] == [name]]
    return sorted(found)


def three_backups(pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef) -> list[str]:  # noqa: F811
    """Backups of a VM at three sizes and descriptions; returns their ids, oldest first."""
    driver.create(ref, SMALL)
    ids = []
    for n, spec in enumerate((SMALL, LARGE, MachineSpec(3, 2048, 6))):
        driver.resize(ref, spec)
        vm = vm_named(pve, ref.name)
        assert vm is not None
        pve.client().nodes(vm["node"]).qemu(vm["vmid"]).config.put(description=f"generation {n}")
        pve.advance_clock(3600)
        ids.append(str(driver.backup(ref).evidence["backup"]))
    return ids


@pytest.fixture
def ref() -> ServiceRef:
    return ServiceRef(f"t{uuid.uuid4().hex[:7]}", HOST)


def test_a_chosen_backup_brings_back_its_own_config_over_the_vm(
    pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef  # noqa: F811
) -> None:
    first, second, _third = three_backups(pve, driver, ref)
    vm = vm_named(pve, ref.name)
    assert vm is not None
    outcome = driver.restore_backup(ref, SMALL, first)
    assert outcome.evidence["over_existing"] is True and outcome.evidence["vmid"] == vm["vmid"]
    assert shape(pve, ref.name) == (1, "512", "generation 0", "2G")
    assert status_of(pve, ref.name) == "running"
    assert len(disks_of(pve, vm["vmid"])) == 1  # PVE destroyed the old disks
    driver.restore_backup(ref, SMALL, second)
    assert shape(pve, ref.name) == (2, "1024", "generation 1", "4G")
    assert len(backup_volids(pve, ref.name)) == 3  # every backup stays


def test_a_destroyed_vm_comes_back_from_a_chosen_backup(
    pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef  # noqa: F811
) -> None:
    _first, second, _third = three_backups(pve, driver, ref)
    vm = vm_named(pve, ref.name)
    assert vm is not None
    api = pve.client().nodes(vm["node"]).qemu(vm["vmid"])
    api.status.stop.post()
    _wait_stopped(pve, ref.name)
    api.delete(purge=1)
    _wait_gone(pve, ref.name)
    driver.restore_backup(ref, SMALL, second)
    assert shape(pve, ref.name) == (2, "1024", "generation 1", "4G")
    assert status_of(pve, ref.name) == "running"


def test_someone_elses_or_an_unknown_backup_is_refused_and_nothing_changes(
    pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef  # noqa: F811
) -> None:
    other = ServiceRef(f"o{uuid.uuid4().hex[:7]}", HOST)
    driver.create(other, SMALL)
    theirs = str(driver.backup(other).evidence["backup"])
    (mine,) = three_backups(pve, driver, ref)[:1]
    before, vms = config_of(pve, ref.name), all_vms(pve)
    for wrong in (theirs, mine + "x", "pve1/local:backup/nothing.vma.zst"):
        with pytest.raises(PermanentError, match="has no backup"):
            driver.restore_backup(ref, SMALL, wrong)
        with pytest.raises(PermanentError, match="has no backup"):
            driver.verify_backup(ref, wrong)
    assert config_of(pve, ref.name)["digest"] == before["digest"] and all_vms(pve) == vms


def test_verify_boots_a_scratch_vm_and_leaves_nothing_behind(
    pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef  # noqa: F811
) -> None:
    backup = three_backups(pve, driver, ref)[0]
    before, vms = config_of(pve, ref.name), all_vms(pve)
    nextid = int(pve.client().cluster.nextid.get())
    outcome = driver.verify_backup(ref, backup)
    evidence = outcome.evidence
    assert evidence["booted"] is True and evidence["verified"] is True, evidence
    assert evidence["scratch"] == f"scratch-{ref.service_id}-{nextid}"
    assert evidence["vmid"] == nextid and "status running" in evidence["checked"]
    assert all_vms(pve) == vms and disks_of(pve, nextid) == []
    assert config_of(pve, ref.name)["digest"] == before["digest"]
    assert status_of(pve, ref.name) == "running"
    assert int(pve.client().cluster.nextid.get()) == nextid


@pytest.mark.parametrize(
    ("task", "log"),
    [("qmrestore", "vma: restore failed - short vma extent (2801664 < 3801088)"),
     ("qmstart", "kvm: -drive file=/dev/pve/vm-disk-0: Could not open: Input/output error")],
)
def test_a_backup_that_does_not_restore_or_start_fails_verification(
    pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef, task: str, log: str  # noqa: F811
) -> None:
    backup = three_backups(pve, driver, ref)[0]
    vms = all_vms(pve)
    pve.fail_next(task, "command failed: exit code 133", [log])
    outcome = driver.verify_backup(ref, backup)
    evidence = outcome.evidence
    assert evidence["booted"] is False and evidence["verified"] is False, evidence
    assert log in evidence["why"] and "FAILED" in outcome.detail
    assert all_vms(pve) == vms and disks_of(pve, evidence["vmid"]) == []
    assert status_of(pve, ref.name) == "running"


def test_restore_and_verify_ask_for_another_vmid_when_theirs_was_taken(
    pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef  # noqa: F811
) -> None:
    """/cluster/nextid only proposes: a lost race is asked again, as a clone does."""
    backup = three_backups(pve, driver, ref)[0]
    pve.lose_nextid_races(1)
    evidence = driver.verify_backup(ref, backup).evidence
    assert evidence["verified"] is True and evidence["scratch_removed"] is True, evidence
    racer = evidence["vmid"] - 1
    assert (racer, f"racer-{racer}") in all_vms(pve)  # the other client's VM is untouched
    vm = vm_named(pve, ref.name)
    assert vm is not None
    api = pve.client().nodes(vm["node"]).qemu(vm["vmid"])
    api.status.stop.post()
    _wait_stopped(pve, ref.name)
    api.delete(purge=1)
    _wait_gone(pve, ref.name)
    pve.lose_nextid_races(1)
    outcome = driver.restore_backup(ref, SMALL, backup)
    taken = [vmid for vmid, name in all_vms(pve) if name.startswith("racer-")]
    assert outcome.evidence["vmid"] not in taken and status_of(pve, ref.name) == "running"


def _wait_stopped(pve: PveLab, name: str) -> None:
    _until(lambda: status_of(pve, name) == "stopped", f"{name} did not stop")


def _wait_gone(pve: PveLab, name: str) -> None:
    _until(lambda: vm_named(pve, name) is None, f"{name} was not destroyed")


def _until(condition: Any, message: str, seconds: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def test_a_backup_kept_on_another_node_replaces_the_vm_there(
    pve: PveLab, driver: ProxmoxCompute, ref: ServiceRef  # noqa: F811
) -> None:
    """A local archive is readable only on its node: the VM elsewhere goes, and the archive's
    node gets the restore, under the same vmid."""
    driver.create(ref, SMALL)
    backup = str(driver.backup(ref).evidence["backup"])
    first = vm_named(pve, ref.name)
    assert first is not None and backup.startswith(f"{first['node']}/")
    # vzdump names an archive by the second it starts: the emulator's tasks are quick
    # enough for the archive to start in the backup's second and take its name.
    pve.advance_clock(2)
    driver.archive(ref)
    other = "pve2" if first["node"] == "pve1" else "pve1"
    vmid = int(pve.client().cluster.nextid.get())
    _task(pve, other, pve.client().nodes(other).qemu.post(
        vmid=vmid, name=ref.name, cores=4, memory="4096"))
    outcome = driver.restore_backup(ref, SMALL, backup)
    assert outcome.evidence["over_existing"] is False
    vm = vm_named(pve, ref.name)
    assert vm is not None and (vm["node"], vm["vmid"]) == (first["node"], vmid)
    assert shape(pve, ref.name)[:2] == (1, "512") and status_of(pve, ref.name) == "running"
    assert all_vms(pve).count((vmid, ref.name)) == 1


def _task(pve: PveLab, node: str, upid: str) -> None:
    tasks = pve.client().nodes(node).tasks
    _until(lambda: tasks(upid).status.get()["status"] == "stopped", f"task {upid} never ended")
    assert tasks(upid).status.get()["exitstatus"] == "OK"
