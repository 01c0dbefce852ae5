"""The libvirt driver on libvirt's test hypervisor, judged through libvirt's own API."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from drivers.base import (
    Capability,
    DriverError,
    MachineSpec,
    PermanentError,
    Power,
    ServiceRef,
    TemporaryError,
    Unsupported,
    load_compute,
)
from drivers.libvirt import LibvirtCompute
from drivers.libvirt.connection import translated
from drivers.libvirt.domain import shut_down
from drivers.libvirt.storage import wipe_method
from orchestrator.secrets.redact import redact_text

SERVICE_NS = "https://provisioning-orchestrator.invalid/service/1"
NETWORK_NS = "https://provisioning-orchestrator.invalid/network/1"


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


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    """A libvirtError as the bindings raise it, with the code set."""
    error = libvirt.libvirtError(message)
    error.err = (code, 0, message, 0, "", None, None, 0, 0)
    return error


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
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, NETWORK_NS
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


def test_a_dropped_connection_is_temporary_and_the_boundary_masks_credentials() -> None:
    error = libvirt_error(
        libvirt.VIR_ERR_SYSTEM_ERROR, "cannot talk to qemu+ssh://admin:hunter2@host/system"
    )
    with pytest.raises(TemporaryError) as caught, translated("inspect"):
        raise error
    shown = redact_text(str(caught.value))  # as the executor journals and logs it
    assert "hunter2" not in shown and "admin:***@host" in shown
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (libvirt.VIR_ERR_RPC, TemporaryError),
        (libvirt.VIR_ERR_NO_CONNECT, TemporaryError),
        (libvirt.VIR_ERR_INVALID_CONN, TemporaryError),
        (libvirt.VIR_ERR_NO_SUPPORT, Unsupported),
        (libvirt.VIR_ERR_OPERATION_UNSUPPORTED, Unsupported),
        (libvirt.VIR_ERR_XML_ERROR, PermanentError),
        (libvirt.VIR_ERR_OPERATION_INVALID, PermanentError),
    ],
)
def test_libvirt_error_codes_cross_into_the_error_tree(code: int, kind: type[DriverError]) -> None:
    error = libvirt_error(code, "failed for qemu+tls://host/system?password=hunter2&x=1")
    with pytest.raises(kind) as caught, translated("inspect"):
        raise error
    assert type(caught.value) is kind and caught.value.__cause__ is error
    shown = redact_text(str(caught.value))
    assert "hunter2" not in shown and "password=***&x=1" in shown


def test_what_the_test_hypervisor_lacks_is_translated_to_unsupported(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    domain = virt.lookupByName(ref.name)
    volume = virt.storagePoolLookupByName("default-pool").storageVolLookupByName(f"{ref.name}.img")
    with pytest.raises(Unsupported, match="virDomainUpdateDeviceFlags"), translated("link"):
        domain.updateDeviceFlags("<interface type='network'/>", libvirt.VIR_DOMAIN_AFFECT_LIVE)
    with pytest.raises(Unsupported, match="virStorageVolWipe"), translated("wipe"):
        volume.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)


def test_a_dead_connection_is_reopened(driver: LibvirtCompute, ref: ServiceRef) -> None:
    driver.create(ref, MachineSpec())
    assert driver.connection.current is not None
    driver.connection.current.close()
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


def test_the_domain_is_built_from_the_spec_and_carries_the_service_id(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec(vcpus=2, memory_mib=256, disk_gib=2))
    domain = virt.lookupByName(ref.name)
    xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<domain type='test'>" in xml and f"/default-pool/{ref.name}.img" in xml
    assert domain.maxMemory() == 256 * 1024 and domain.vcpusFlags(0) == 2
    volume = virt.storagePoolLookupByName("default-pool").storageVolLookupByName(f"{ref.name}.img")
    assert volume.info()[1] == 2 * 1024**3
    service = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, SERVICE_NS)
    assert service == f"<service>{ref.service_id}</service>"


def test_the_domain_has_acpi_so_a_graceful_shutdown_can_reach_the_guest(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    xml = virt.lookupByName(ref.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert re.search(r"<features>\s*<acpi/>", xml)


def test_create_starts_a_machine_that_is_defined_but_off(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    virt.lookupByName(ref.name).destroy()
    outcome = driver.create(ref, MachineSpec())
    assert outcome.changed and outcome.observed.power == Power.RUNNING
    assert domain_state(virt, ref) == libvirt.VIR_DOMAIN_RUNNING


def test_a_network_cut_keeps_the_service_id_and_an_id_with_down_in_it_is_not_cut(
    driver: LibvirtCompute, virt: libvirt.virConnect
) -> None:
    ref = ServiceRef(f"down{uuid.uuid4().hex[:8]}", "kvm-jkt-1")
    assert not driver.create(ref, MachineSpec()).observed.network_cut
    assert driver.suspend(ref, "cut_network").changed
    domain = virt.lookupByName(ref.name)
    service = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, SERVICE_NS)
    assert service == f"<service>{ref.service_id}</service>"
    assert domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NETWORK_NS) == (
        '<link state="down"/>'
    )
    assert domain_state(virt, ref) == libvirt.VIR_DOMAIN_RUNNING
    driver.resume(ref)
    assert domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NETWORK_NS) == '<link state="up"/>'


def test_pausing_a_stopped_machine_leaves_it_paused(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    driver.suspend(ref, "shutdown")
    outcome = driver.suspend(ref, "pause")
    assert outcome.changed and outcome.observed.power == Power.PAUSED
    assert domain_state(virt, ref) == libvirt.VIR_DOMAIN_PAUSED


def test_archive_removes_managed_save_and_snapshot_metadata_too(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    snapshot = "<domainsnapshot><name>before-archive</name></domainsnapshot>"
    virt.lookupByName(ref.name).snapshotCreateXML(snapshot)  # taken by hand: not the driver's
    virt.lookupByName(ref.name).managedSave(0)
    assert driver.archive(ref).changed
    assert domain_state(virt, ref) is None and has_volume(virt, ref)


def test_purge_says_how_absence_was_verified_and_is_idempotent(
    driver: LibvirtCompute, virt: libvirt.virConnect, ref: ServiceRef
) -> None:
    driver.create(ref, MachineSpec())
    driver.archive(ref)
    outcome = driver.purge(ref)
    assert outcome.changed and outcome.evidence["verified_by"] == "refreshed pool listing"
    assert outcome.observed.power == Power.ABSENT and not outcome.observed.data_present
    again = driver.purge(ref)
    assert not again.changed and again.evidence["verified_absent"] is True
    assert again.evidence["method"].startswith("none") and not has_volume(virt, ref)


class Forgetful(LibvirtCompute):
    """The real driver, reporting a destruction it did not do."""

    def _destroy_volume(self, conn: libvirt.virConnect, volume: Any) -> dict[str, Any]:
        return {"method": "delete-only", "bytes": 0}


def test_a_purge_that_cannot_be_verified_fails(virt: libvirt.virConnect, ref: ServiceRef) -> None:
    driver = Forgetful("test:///default")
    driver.create(ref, MachineSpec())
    with pytest.raises(PermanentError, match="left data behind"):
        driver.purge(ref)
    assert has_volume(virt, ref)


def test_a_bad_uri_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="nonexistent"):
        LibvirtCompute("test:///nonexistent/file.xml").inspect(ServiceRef("x", "h"))


def test_a_domain_type_that_does_not_fit_the_uri_is_refused() -> None:
    with pytest.raises(PermanentError) as caught:
        LibvirtCompute("qemu+ssh://root:hunter2@kvm1/system", domain_type="test")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(PermanentError):
        LibvirtCompute("test:///default", domain_type="kvm")
    assert LibvirtCompute("qemu:///system").domain_type == "kvm"


def test_capabilities_declare_exactly_what_works(driver: LibvirtCompute) -> None:
    suspends = {c for c in driver.capabilities if c.startswith("suspend:")}
    assert suspends == {
        Capability.SUSPEND_PAUSE,
        Capability.SUSPEND_SHUTDOWN,
        Capability.SUSPEND_CUT_NETWORK,
    }
    assert {Capability.ARCHIVE, Capability.RESTORE, Capability.PURGE} <= driver.capabilities
    assert Capability.BIND_ADDRESSES not in driver.capabilities
    assert Capability.SNAPSHOT not in driver.capabilities  # the lifecycle takes backups instead


@pytest.mark.parametrize(
    ("allocated_after", "method"), [(0, "deallocate"), (4096, "overwrite:zero")]
)
def test_a_wipe_is_named_by_what_it_left_allocated(allocated_after: int, method: str) -> None:
    assert wipe_method(allocated_after) == method


class _PoweringOff:
    """A guest that finishes its own ACPI power-off just as the timeout ends."""

    def __init__(self) -> None:
        self.checks = 0

    def shutdown(self) -> None:
        pass

    def isActive(self) -> bool:
        self.checks += 1
        return self.checks <= 3  # not stopped, still running at the deadline, at the check

    def destroy(self) -> None:
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID,
                            "Requested operation is not valid: domain is not running")


def test_a_guest_that_powers_off_as_the_timeout_ends_is_off_not_an_error() -> None:
    assert shut_down(_PoweringOff(), timeout=0) is True
