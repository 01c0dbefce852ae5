"""The libvirt driver on libvirt's test hypervisor, judged through libvirt's own API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import libvirt
import pytest

from drivers.base import (
    DriverError,
    MachineSpec,
    PermanentError,
    Power,
    ServiceRef,
    TemporaryError,
    Unsupported,
    load_compute,
)
from drivers.libvirt_compute import LibvirtCompute, _translated


@pytest.fixture(scope="module")
def virt() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


@pytest.fixture
def ref() -> ServiceRef:
    return ServiceRef(f"d{uuid.uuid4().hex[:8]}", "kvm-jkt-1")


@pytest.fixture
def driver() -> LibvirtCompute:
    return LibvirtCompute("test:///default")


def domain_state(virt: libvirt.virConnect, ref: ServiceRef) -> int | None:
    try:
        return int(virt.lookupByName(ref.name).state()[0])
    except libvirt.libvirtError:
        return None


def has_volume(virt: libvirt.virConnect, ref: ServiceRef) -> bool:
    pool = virt.storagePoolLookupByName("default-pool")
    pool.refresh(0)
    return f"{ref.name}.img" in pool.listVolumes()


def test_create_is_idempotent(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    first = driver.create(ref, MachineSpec(vcpus=2, memory_mib=256))
    second = driver.create(ref, MachineSpec(vcpus=2, memory_mib=256))
    assert first.changed and not second.changed
    assert domain_state(virt, ref) == libvirt.VIR_DOMAIN_RUNNING and has_volume(virt, ref)
    assert virt.lookupByName(ref.name).info()[3] == 2


@pytest.mark.parametrize(
    ("method", "state"),
    [
        ("pause", libvirt.VIR_DOMAIN_PAUSED),
        ("shutdown", libvirt.VIR_DOMAIN_SHUTOFF),
        ("cut_network", libvirt.VIR_DOMAIN_RUNNING),
    ],
)
def test_suspend_and_resume_by_each_method(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef, method: str, state: int
) -> None:
    driver.create(ref, MachineSpec())
    outcome = driver.suspend(ref, method)
    assert outcome.changed and domain_state(virt, ref) == state
    assert not driver.suspend(ref, method).changed
    if method == "cut_network":
        assert "down" in virt.lookupByName(ref.name).metadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            "https://provisioning-orchestrator.invalid/network/1",
        )
        assert driver.inspect(ref).network_cut
    resumed = driver.resume(ref)
    assert resumed.changed and domain_state(virt, ref) == libvirt.VIR_DOMAIN_RUNNING
    assert not resumed.observed.network_cut
    assert not driver.resume(ref).changed


def test_archive_keeps_the_volume_and_restore_brings_it_back(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    archived = driver.archive(ref)
    assert archived.observed.power == Power.ABSENT and archived.observed.archived
    assert domain_state(virt, ref) is None and has_volume(virt, ref)
    assert not driver.archive(ref).changed
    driver.restore(ref, MachineSpec())
    assert domain_state(virt, ref) == libvirt.VIR_DOMAIN_RUNNING


def test_purge_destroys_the_volume_and_says_how(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    outcome = driver.purge(ref)
    assert outcome.evidence["verified_absent"] is True
    assert outcome.evidence["method"].startswith("delete-only")  # the test hypervisor cannot wipe
    assert outcome.evidence["bytes"] == 1024**3
    assert domain_state(virt, ref) is None and not has_volume(virt, ref)
    with pytest.raises(PermanentError, match="purged"):
        driver.restore(ref, MachineSpec())


def test_an_unknown_method_is_unsupported(driver: LibvirtCompute, ref: ServiceRef) -> None:
    driver.create(ref, MachineSpec())
    with pytest.raises(Unsupported):
        driver.suspend(ref, "power_off")


def test_suspending_a_missing_machine_is_a_permanent_error(
    driver: LibvirtCompute, ref: ServiceRef
) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        driver.suspend(ref, "pause")


def test_a_connection_that_cannot_open_is_a_driver_error(ref: ServiceRef) -> None:
    with pytest.raises(DriverError):
        LibvirtCompute("test:///nonexistent/file.xml").inspect(ref)


def test_a_dropped_connection_is_temporary_and_credentials_are_not_repeated() -> None:
    error = libvirt.libvirtError("lost")
    error.err = (
        libvirt.VIR_ERR_SYSTEM_ERROR,
        0,
        "cannot talk to qemu+ssh://admin:hunter2@host/system",
        0,
        "",
        None,
        None,
        0,
        0,
    )
    with pytest.raises(TemporaryError) as caught, _translated("inspect"):
        raise error
    assert "hunter2" not in str(caught.value)


def test_a_dead_connection_is_reopened(driver: LibvirtCompute, ref: ServiceRef) -> None:
    driver.create(ref, MachineSpec())
    assert driver._connection is not None
    driver._connection.close()
    assert driver.inspect(ref).power == Power.RUNNING


def test_drivers_are_registered_by_name() -> None:
    assert isinstance(load_compute("libvirt", uri="test:///default"), LibvirtCompute)
    with pytest.raises(PermanentError, match="no compute driver named 'nova'"):
        load_compute("nova")


def test_suspended_guests_do_not_autostart(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    assert virt.lookupByName(ref.name).autostart() == 1
    driver.suspend(ref, "pause")
    assert virt.lookupByName(ref.name).autostart() == 0
    driver.resume(ref)
    assert virt.lookupByName(ref.name).autostart() == 1


def test_snapshots_are_taken_listed_reverted_and_deleted(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    assert driver.snapshot(ref, "weekly-1").changed
    assert not driver.snapshot(ref, "weekly-1").changed
    assert virt.lookupByName(ref.name).snapshotListNames() == ["weekly-1"]
    assert driver.snapshots(ref) == ["weekly-1"]
    assert driver.revert(ref, "weekly-1").changed
    assert driver.delete_snapshot(ref, "weekly-1").changed
    assert not driver.delete_snapshot(ref, "weekly-1").changed
    assert virt.lookupByName(ref.name).snapshotListNames() == []


def test_resize_changes_the_configuration(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec(vcpus=1, memory_mib=512, disk_gib=1))
    bigger = MachineSpec(vcpus=2, memory_mib=1024, disk_gib=1)
    assert driver.inspect(ref).differs_from(bigger)
    assert driver.resize(ref, bigger).changed
    xml = virt.lookupByName(ref.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert ">2</vcpu>" in xml and "<memory unit='KiB'>1048576</memory>" in xml
    with pytest.raises(Unsupported, match="cannot grow"):  # the lab test grows real volumes
        driver.resize(ref, MachineSpec(vcpus=2, memory_mib=1024, disk_gib=2))
    assert not driver.inspect(ref).differs_from(bigger)
    assert not driver.resize(ref, bigger).changed
