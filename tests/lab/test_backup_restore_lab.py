"""Restoring a chosen backup, and verifying a backup by booting it, on the lab's libvirtd.

Each test names its own markers: the guest writes ``LABDATA:<marker>:<sector>``
at fixed sectors of its disk at every boot, from ``lab.marker=`` on its
kernel command line, so a driver whose command line carries a marker of the
test's choosing tells one boot's data from another's; an empty marker boots
without writing. Every check reads libvirt's real state (``virsh``, the
volume's bytes by ``vol-download``, the console log), never the driver.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from drivers.base import MachineSpec, PermanentError, ServiceRef
from drivers.libvirt import LibvirtCompute
from orchestrator.core.inventory import Inventory
from tests.lab.conftest import LAB_DIR, domain_state, virsh

SPEC = MachineSpec(1, 128, 1)
HOST = "kvm-jkt-1"
BOOT_SECONDS = 240  # TCG on a shared two-core machine


def driver_writing(lab_inventory: Inventory, marker: str) -> LibvirtCompute:
    """The lab's driver, its guests writing ``marker`` (nothing when it is empty)."""
    options: dict[str, Any] = dict(lab_inventory.hosts()[HOST].options)
    boot = dict(options["boot"])
    boot["cmdline"] = f"{boot['cmdline']} lab.marker={marker}"
    return LibvirtCompute(uri="qemu:///system", **{**options, "boot": boot})


def console(ref: ServiceRef) -> Path:
    return LAB_DIR / "console" / f"{ref.name}.log"


def console_size(ref: ServiceRef) -> int:
    return console(ref).stat().st_size if console(ref).exists() else 0


def wait_console(ref: ServiceRef, text: str, after: int, seconds: float = BOOT_SECONDS) -> None:
    """``text`` on the guest's serial console, written after byte ``after`` (this boot's)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if console(ref).exists():
            with console(ref).open("rb") as log:
                log.seek(after)
                if text.encode() in log.read():
                    return
        time.sleep(0.5)
    raise AssertionError(f"{ref.name} never printed {text!r}")


def volume_bytes(pool: str, volume: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"{volume}.download"
    result = virsh("vol-download", "--pool", pool, volume, str(out))
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


def marked_sectors(data: bytes, marker: str) -> list[int]:
    """The sectors whose ``LABDATA`` record names ``marker``, as the guest wrote them."""
    sectors = (0, 2048, 16384, 65536, 131000)
    return [s for s in sectors if f"LABDATA:{marker}:{s}\n".encode() in data]


def scratch_left(ref: ServiceRef) -> list[str]:
    domains = virsh("list", "--all", "--name").stdout.split()
    virsh("pool-refresh", "orchestrator-lab")
    volumes = virsh("vol-list", "orchestrator-lab").stdout.split()
    prefix = f"scratch-{ref.service_id}-"
    return [n for n in domains + volumes if n.startswith(prefix)]


@pytest.fixture
def ref() -> ServiceRef:
    return ServiceRef(f"r{uuid.uuid4().hex[:7]}", HOST)


@pytest.fixture
def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def guest_with_data_backed_up(
    lab_inventory: Inventory, ref: ServiceRef, marker: str
) -> tuple[LibvirtCompute, str]:
    """A running guest that wrote ``marker``, and the name of its backup taken after that."""
    writer = driver_writing(lab_inventory, marker)
    start = console_size(ref)
    writer.create(ref, SPEC)
    wait_console(ref, f"LAB-GUEST-WROTE {marker}", start)
    return writer, str(writer.backup(ref).evidence["backup"])


def test_a_chosen_backup_replaces_an_overwritten_disk(
    lab: str, lab_inventory: Inventory, ref: ServiceRef, marker: str, tmp_path: Path
) -> None:
    writer, backup = guest_with_data_backed_up(lab_inventory, ref, marker)
    later = f"{marker}-later"
    writer.archive(ref)  # the guest comes back from its own volume and writes over its data
    start = console_size(ref)
    driver_writing(lab_inventory, later).restore(ref, SPEC)
    wait_console(ref, f"LAB-GUEST-WROTE {later}", start)
    live = volume_bytes("orchestrator-lab", f"{ref.name}.qcow2", tmp_path)
    assert marked_sectors(live, later) and not marked_sectors(live, marker)

    quiet = driver_writing(lab_inventory, "")  # the restored guest boots without writing
    start = console_size(ref)
    outcome = quiet.restore_backup(ref, SPEC, backup)
    assert outcome.changed and outcome.evidence["checksum"] == "match"
    wait_console(ref, "LAB-GUEST-UP", start)
    assert domain_state(ref.service_id) == "running"
    restored = volume_bytes("orchestrator-lab", f"{ref.name}.qcow2", tmp_path)
    assert marked_sectors(restored, marker) == [0, 2048, 16384, 65536, 131000]
    assert not marked_sectors(restored, later)
    assert f"{backup}" in virsh("vol-list", "orchestrator-lab-backups").stdout  # it stays


def test_a_destroyed_guest_comes_back_from_its_backup(
    lab: str, lab_inventory: Inventory, ref: ServiceRef, marker: str, tmp_path: Path
) -> None:
    writer, backup = guest_with_data_backed_up(lab_inventory, ref, marker)
    writer.archive(ref)
    assert virsh("vol-delete", "--pool", "orchestrator-lab", f"{ref.name}.qcow2").returncode == 0
    assert domain_state(ref.service_id) == "absent"
    start = console_size(ref)
    driver_writing(lab_inventory, "").restore_backup(ref, SPEC, backup)
    wait_console(ref, "LAB-GUEST-UP", start)
    restored = volume_bytes("orchestrator-lab", f"{ref.name}.qcow2", tmp_path)
    assert marked_sectors(restored, marker) == [0, 2048, 16384, 65536, 131000]
    info = virsh("dominfo", ref.name).stdout
    assert "131072 KiB" in info and "Autostart:      enable" in info


def test_an_unknown_backup_is_refused_and_nothing_changes(
    lab: str, lab_inventory: Inventory, ref: ServiceRef, marker: str
) -> None:
    writer, backup = guest_with_data_backed_up(lab_inventory, ref, marker)
    uuid_before = virsh("domuuid", ref.name).stdout
    other = f"svc-someone-else--{backup.split('--', 1)[1]}"
    for wrong in (other, backup + ".sha256", "../etc/passwd"):
        with pytest.raises(PermanentError, match="has no backup"):
            writer.restore_backup(ref, SPEC, wrong)
        with pytest.raises(PermanentError, match="has no backup"):
            writer.verify_backup(ref, wrong)
    assert virsh("domuuid", ref.name).stdout == uuid_before
    assert domain_state(ref.service_id) == "running"


def test_verify_boots_a_scratch_copy_and_leaves_the_live_guest_alone(
    lab: str, lab_inventory: Inventory, ref: ServiceRef, marker: str, tmp_path: Path
) -> None:
    writer, backup = guest_with_data_backed_up(lab_inventory, ref, marker)
    pid_file = Path(f"/run/libvirt/qemu/{ref.name}.pid")
    pid_before, xml_before = pid_file.read_text(), virsh("dumpxml", ref.name).stdout
    copy_before = volume_bytes("orchestrator-lab-backups", backup, tmp_path)
    outcome = writer.verify_backup(ref, backup)
    evidence = outcome.evidence
    assert evidence["booted"] is True and evidence["verified"] is True, evidence
    assert evidence["checksum"] == "match" and evidence["scratch"] == f"scratch-{ref.service_id}-1"
    assert any("LAB-GUEST-UP" in check for check in evidence["checked"])
    assert scratch_left(ref) == []
    assert pid_file.read_text() == pid_before and virsh("dumpxml", ref.name).stdout == xml_before
    assert domain_state(ref.service_id) == "running"
    assert volume_bytes("orchestrator-lab-backups", backup, tmp_path) == copy_before


def corrupt(backup: str, offset: int, length: int) -> None:
    """Overwrite part of the backup file in place, as rot or tampering would."""
    path = LAB_DIR / "backups" / backup
    with path.open("r+b") as raw:
        raw.seek(offset)
        raw.write(b"\xa5" * length)


def test_a_corrupted_backup_fails_verification_and_is_not_restored(
    lab: str, lab_inventory: Inventory, ref: ServiceRef, marker: str, tmp_path: Path
) -> None:
    writer, backup = guest_with_data_backed_up(lab_inventory, ref, marker)
    copy = volume_bytes("orchestrator-lab-backups", backup, tmp_path)
    corrupt(backup, copy.index(f"LABDATA:{marker}:2048".encode()), 64)
    outcome = writer.verify_backup(ref, backup)
    assert outcome.evidence["verified"] is False and outcome.evidence["checksum"] == "mismatch"
    assert "FAILED" in outcome.detail and scratch_left(ref) == []
    uuid_before = virsh("domuuid", ref.name).stdout
    with pytest.raises(PermanentError, match="not the copy taken"):
        writer.restore_backup(ref, SPEC, backup)
    assert virsh("domuuid", ref.name).stdout == uuid_before
    assert domain_state(ref.service_id) == "running"


def test_a_backup_that_is_no_image_any_more_fails_without_a_checksum(
    lab: str, lab_inventory: Inventory, ref: ServiceRef, marker: str
) -> None:
    """With no checksum recorded, what libvirt reads in the file judges: a broken header fails."""
    writer, backup = guest_with_data_backed_up(lab_inventory, ref, marker)
    sidecar = f"{backup}.sha256"
    assert virsh("vol-delete", "--pool", "orchestrator-lab-backups", sidecar).returncode == 0
    corrupt(backup, 0, 512)  # the qcow2 header
    evidence = writer.verify_backup(ref, backup).evidence
    assert evidence["checksum"] == "not recorded" and evidence["booted"] is False, evidence
    assert evidence["verified"] is False and "no qcow2 image" in evidence["why"]
    assert scratch_left(ref) == [] and domain_state(ref.service_id) == "running"
    uuid_before = virsh("domuuid", ref.name).stdout
    with pytest.raises(PermanentError, match="no qcow2 image"):
        writer.restore_backup(ref, SPEC, backup)
    assert virsh("domuuid", ref.name).stdout == uuid_before


def test_a_scratch_that_does_not_come_up_in_time_fails_and_is_removed(
    lab: str, lab_inventory: Inventory, ref: ServiceRef, marker: str
) -> None:
    _, backup = guest_with_data_backed_up(lab_inventory, ref, marker)
    impatient = driver_writing(lab_inventory, marker)
    impatient.verify_timeout = 0.5  # no guest prints its banner that soon, even under KVM
    evidence = impatient.verify_backup(ref, backup).evidence
    assert evidence["checksum"] == "match" and evidence["booted"] is False, evidence
    assert evidence["verified"] is False and evidence["scratch"] == f"scratch-{ref.service_id}-1"
    assert scratch_left(ref) == [] and domain_state(ref.service_id) == "running"


def test_scratch_names_do_not_collide(
    lab: str, lab_inventory: Inventory, ref: ServiceRef
) -> None:
    """A name taken (here by a volume someone left) is skipped, and left as it was."""
    taken = f"scratch-{ref.service_id}-1.qcow2"
    created = virsh("vol-create-as", "orchestrator-lab", taken, "1M", "--format", "raw")
    assert created.returncode == 0, created.stderr
    try:
        writer, backup = guest_with_data_backed_up(lab_inventory, ref, f"n{ref.service_id}")
        evidence = writer.verify_backup(ref, backup).evidence
        assert evidence["scratch"] == f"scratch-{ref.service_id}-2" and evidence["booted"]
        assert scratch_left(ref) == [taken]
    finally:
        subprocess.run(["virsh", "-c", "qemu:///system", "vol-delete", "--pool",
                        "orchestrator-lab", taken], capture_output=True)
