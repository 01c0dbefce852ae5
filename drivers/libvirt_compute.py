"""Compute driver for libvirt: KVM/QEMU guests, or libvirt's built-in test hypervisor.

A service's machine is a domain named ``svc-<service id>`` with one disk, a
volume ``svc-<service id>.img`` in a storage pool. Terminating removes the
domain and keeps the volume (the archive); purging destroys the volume.

Against ``test:///default`` (in-memory, per process) two things cannot be
done for real, and the driver says so rather than pretend: volumes cannot be
wiped (the purge deletes and verifies absence, and its evidence says
``delete-only``), and interface link state cannot change (a network cut is
recorded in the domain's metadata, which ``inspect`` reads back). On
qemu:///system both are real.

libvirt's errors cross into ours in one place, ``_translated``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt

from drivers.base import (
    Capability,
    ComputeDriver,
    DriverError,
    MachineSpec,
    Observed,
    Outcome,
    PermanentError,
    Power,
    ServiceRef,
    TemporaryError,
    Unsupported,
)

NETWORK_NS = "https://provisioning-orchestrator.invalid/network/1"
TEMPORARY_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
}
UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT}
STATES = {
    libvirt.VIR_DOMAIN_RUNNING: Power.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: Power.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: Power.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: Power.PAUSED,
}
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed


def _without_credentials(text: str) -> str:
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """The libvirt error boundary: every libvirt call of this driver runs inside it."""
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        message = _without_credentials(f"{action}: {exc.get_error_message()}")
        if code in UNSUPPORTED_CODES:
            raise Unsupported(message) from exc
        if code in TEMPORARY_CODES:
            raise TemporaryError(message, delay=10.0) from exc
        raise PermanentError(message) from exc


class LibvirtCompute(ComputeDriver):
    def __init__(
        self,
        uri: str = "test:///default",
        pool: str = "default-pool",
        domain_type: str | None = None,
    ) -> None:
        self.uri, self.pool_name = uri, pool
        self.domain_type = domain_type or ("test" if uri.startswith("test:") else "kvm")
        self._connection: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._calls = threading.BoundedSemaphore(5)  # libvirtd serves 5 calls per client
        self.capabilities = frozenset(
            {
                Capability.CREATE,
                Capability.SUSPEND_PAUSE,
                Capability.SUSPEND_SHUTDOWN,
                Capability.SUSPEND_CUT_NETWORK,
                Capability.ARCHIVE,
                Capability.RESTORE,
                Capability.PURGE,
            }
        )

    # -- connection ----------------------------------------------------------

    def _conn(self) -> libvirt.virConnect:
        """One connection, reopened when found dead."""
        with self._lock:
            if self._connection is not None and self._alive(self._connection):
                return self._connection
            with _translated(f"connect to {self.uri}"):
                self._connection = libvirt.open(self.uri)
            return self._connection

    @staticmethod
    def _alive(connection: libvirt.virConnect) -> bool:
        try:
            return bool(connection.isAlive())
        except libvirt.libvirtError:
            return False

    @contextmanager
    def _call(self, action: str) -> Iterator[libvirt.virConnect]:
        with self._calls, _translated(action):
            yield self._conn()

    # -- reading -------------------------------------------------------------

    def _domain(self, conn: libvirt.virConnect, ref: ServiceRef) -> libvirt.virDomain | None:
        try:
            return conn.lookupByName(ref.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _volume(self, conn: libvirt.virConnect, ref: ServiceRef) -> libvirt.virStorageVol | None:
        pool = conn.storagePoolLookupByName(self.pool_name)
        pool.refresh(0)
        if f"{ref.name}.img" not in pool.listVolumes():
            return None
        return pool.storageVolLookupByName(f"{ref.name}.img")

    def inspect(self, ref: ServiceRef) -> Observed:
        with self._call(f"inspect {ref.name}") as conn:
            return self._observe(conn, ref)

    def _observe(self, conn: libvirt.virConnect, ref: ServiceRef) -> Observed:
        domain = self._domain(conn, ref)
        has_data = self._volume(conn, ref) is not None
        if domain is None:
            return Observed(Power.ABSENT, archived=has_data, data_present=has_data)
        power = STATES.get(domain.state()[0], Power.OFF)
        return Observed(power, network_cut=_network_cut(domain), data_present=has_data)

    # -- acting --------------------------------------------------------------

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        with self._call(f"create {ref.name}") as conn:
            changed = self._ensure_volume(conn, ref, spec)
            domain = self._domain(conn, ref) or conn.defineXML(self._domain_xml(conn, ref, spec))
            changed |= _start(domain)
            return Outcome(changed, self._observe(conn, ref))

    def _ensure_volume(self, conn: libvirt.virConnect, ref: ServiceRef, spec: MachineSpec) -> bool:
        if self._volume(conn, ref) is not None:
            return False
        pool = conn.storagePoolLookupByName(self.pool_name)
        pool.createXML(
            f"<volume><name>{ref.name}.img</name><capacity unit='GiB'>{spec.disk_gib}</capacity>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
        return True

    def _domain_xml(self, conn: libvirt.virConnect, ref: ServiceRef, spec: MachineSpec) -> str:
        volume = self._volume(conn, ref)
        assert volume is not None
        return (
            f"<domain type='{self.domain_type}'><name>{ref.name}</name>"
            f"<memory unit='MiB'>{spec.memory_mib}</memory><vcpu>{spec.vcpus}</vcpu>"
            f"<metadata><o:service xmlns:o='{NETWORK_NS}'>{ref.service_id}</o:service></metadata>"
            "<os><type>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><source file='{volume.path()}'/>"
            "<target dev='vda' bus='virtio'/></disk>"
            "<interface type='network'><source network='default'/></interface>"
            "</devices></domain>"
        )

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        action = {"pause": _pause, "shutdown": _shut_down, "cut_network": self._cut}.get(method)
        if action is None:
            raise Unsupported(f"libvirt cannot suspend by {method!r}")
        with self._call(f"suspend {ref.name} by {method}") as conn:
            domain = self._domain(conn, ref)
            if domain is None:
                raise PermanentError(f"{ref.name} does not exist: nothing to suspend")
            changed = action(domain)
            return Outcome(changed, self._observe(conn, ref), f"suspended by {method}")

    def resume(self, ref: ServiceRef) -> Outcome:
        with self._call(f"resume {ref.name}") as conn:
            domain = self._domain(conn, ref)
            if domain is None:
                raise PermanentError(f"{ref.name} does not exist: restore it first")
            changed = self._restore_network(domain)
            state = domain.state()[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                domain.resume()
                changed = True
            changed |= _start(domain)
            return Outcome(changed, self._observe(conn, ref))

    def archive(self, ref: ServiceRef) -> Outcome:
        with self._call(f"terminate {ref.name}") as conn:
            domain = self._domain(conn, ref)
            if domain is not None:
                if domain.isActive():
                    domain.destroy()
                _undefine(domain)
            return Outcome(
                domain is not None, self._observe(conn, ref), "domain removed, volume kept"
            )

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        with self._call(f"restore {ref.name}") as conn:
            if self._volume(conn, ref) is None:
                raise PermanentError(f"{ref.name} has no archived volume: it was purged")
            domain = self._domain(conn, ref) or conn.defineXML(self._domain_xml(conn, ref, spec))
            changed = _start(domain)
            return Outcome(changed, self._observe(conn, ref), "restored from the archived volume")

    def purge(self, ref: ServiceRef) -> Outcome:
        self.archive(ref)
        with self._call(f"purge {ref.name}") as conn:
            volume = self._volume(conn, ref)
            evidence: dict[str, Any] = {"method": "none: already absent", "bytes": 0}
            if volume is not None:
                evidence = self._destroy_volume(volume)
            seen = self._observe(conn, ref)
            evidence["verified_absent"] = not seen.data_present and seen.power == Power.ABSENT
            if not evidence["verified_absent"]:
                raise PermanentError(f"purge of {ref.name} left data behind")
            return Outcome(volume is not None, seen, "volume destroyed", evidence)

    def _destroy_volume(self, volume: libvirt.virStorageVol) -> dict[str, Any]:
        size = volume.info()[1]
        method = "wipe:zero"
        try:
            volume.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT or self.domain_type != "test":
                raise
            method = "delete-only: the test hypervisor cannot wipe"
        volume.delete(0)
        return {"method": method, "bytes": size}

    # -- the network cut -----------------------------------------------------

    def _cut(self, domain: libvirt.virDomain) -> bool:
        if _network_cut(domain):
            return False
        self._set_link(domain, "down")
        return True

    def _restore_network(self, domain: libvirt.virDomain) -> bool:
        if not _network_cut(domain):
            return False
        self._set_link(domain, "up")
        return True

    def _set_link(self, domain: libvirt.virDomain, state: str) -> None:
        """The link itself where the hypervisor can; the record of it always."""
        if self.domain_type != "test":
            for interface in re.findall(r"<interface .*?</interface>", domain.XMLDesc(), re.S):
                changed = re.sub(r"<link state='\w+'/>", "", interface)
                changed = changed.replace("</interface>", f"<link state='{state}'/></interface>")
                domain.updateDeviceFlags(changed, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (
            libvirt.VIR_DOMAIN_AFFECT_LIVE if domain.isActive() else 0
        )
        domain.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<link state='{state}'/>", "o", NETWORK_NS, flags
        )


def _network_cut(domain: libvirt.virDomain) -> bool:
    try:
        return "down" in domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NETWORK_NS)
    except libvirt.libvirtError:
        return False


def _start(domain: libvirt.virDomain) -> bool:
    if domain.isActive():
        return False
    domain.create()
    return True


def _pause(domain: libvirt.virDomain) -> bool:
    if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        return False
    domain.suspend()
    return True


def _shut_down(domain: libvirt.virDomain) -> bool:
    """Graceful first; a guest that ignores it is stopped hard (timeouts arrive with issue 3)."""
    if not domain.isActive():
        return False
    domain.shutdown()
    if domain.isActive():
        domain.destroy()
    return True


def _undefine(domain: libvirt.virDomain) -> None:
    try:
        domain.undefineFlags(UNDEFINE_FLAGS | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        domain.undefineFlags(UNDEFINE_FLAGS)


__all__ = ["DriverError", "LibvirtCompute"]
