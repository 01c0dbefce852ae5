"""The Proxmox driver's readings of what the API says, without a server."""

from __future__ import annotations

import pytest

from drivers.base import PermanentError, Power, TemporaryError
from drivers.proxmox import _address, _disk_gib, _power, _volid, _volume_node
from drivers.proxmox_api import Locked, _from_status, upid_node


@pytest.mark.parametrize(
    ("drive", "gib"),
    [
        ("local-lvm:vm-100-disk-0,size=32G", 32),
        ("local-lvm:vm-100-disk-0,discard=on,size=2048M,ssd=1", 2),
        ("nfs:100/vm-100-disk-0.qcow2,size=1T", 1024),
        ("local-lvm:vm-100-disk-0", 0),
        ("", 0),
    ],
)
def test_disk_size_is_read_from_the_drive_string(drive: str, gib: int) -> None:
    assert _disk_gib(drive) == gib


@pytest.mark.parametrize(
    ("status", "power"),
    [
        ({"status": "running", "qmpstatus": "running"}, Power.RUNNING),
        ({"status": "running", "qmpstatus": "paused"}, Power.PAUSED),
        ({"status": "running", "qmpstatus": "suspended"}, Power.PAUSED),
        ({"status": "stopped", "qmpstatus": "stopped"}, Power.OFF),
    ],
)
def test_power_comes_from_status_and_qmp_status(status: dict[str, str], power: Power) -> None:
    assert _power(status) == power


def test_ipset_entries_read_back_as_plain_addresses_unless_a_network() -> None:
    assert _address("192.0.2.10") == "192.0.2.10"
    assert _address("192.0.2.10/32") == "192.0.2.10"
    assert _address("2001:db8::10/128") == "2001:db8::10"
    assert _address("192.0.2.0/28") == "192.0.2.0/28"


def test_backup_ids_carry_their_node() -> None:
    backup = "pve2/local:backup/vzdump-qemu-101-2026_11_22-01_00_00.vma.zst"
    assert _volume_node(backup) == "pve2"
    assert _volid(backup) == "local:backup/vzdump-qemu-101-2026_11_22-01_00_00.vma.zst"
    assert _volume_node("local:backup/x.vma.zst") == ""


def test_a_task_id_names_its_node() -> None:
    upid = "UPID:pve2:000A1B2C:0000D00D:6740A1B2:vzdump:101:orchestrator@pve!lab:"
    assert upid_node(upid) == "pve2"
    with pytest.raises(PermanentError, match="not a task id"):
        upid_node("pve2:1234")


def test_api_errors_become_the_drivers_error_tree() -> None:
    locked = _from_status("PUT config", 500, "VM 101 is locked (backup)", None)
    assert isinstance(locked, Locked) and locked.lock == "backup"
    unreachable = _from_status("GET status", 595, "Connection refused", None)
    assert isinstance(unreachable, TemporaryError) and not isinstance(unreachable, Locked)
    refused = _from_status("POST start", 403, "Permission check failed (/vms/101, VM.PowerMgmt)",
                           None)
    assert type(refused) is PermanentError and "VM.PowerMgmt" in str(refused)
    invalid = _from_status("POST clone", 400, "Parameter verification failed.",
                           {"newid": "invalid format"})
    assert type(invalid) is PermanentError and "newid" in str(invalid)
