"""What every part of the libvirt driver shares: its settings, its connection, and reading.

A service's machine is the domain ``svc-<service id>`` and its disk the
volume ``svc-<service id>.qcow2`` (an overlay of ``base_volume``) or
``.img`` (raw) in ``pool``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import libvirt

from drivers.base import (
    Capability,
    ComputeDriver,
    MachineSpec,
    Observed,
    PermanentError,
    Power,
    ServiceRef,
)
from drivers.libvirt import domain as domains
from drivers.libvirt import nwfilter, storage
from drivers.libvirt.connection import Connection, is_test_uri

BASE_CAPABILITIES = frozenset(
    {
        Capability.CREATE,
        Capability.SUSPEND_PAUSE,
        Capability.SUSPEND_SHUTDOWN,
        Capability.SUSPEND_CUT_NETWORK,
        Capability.ARCHIVE,
        Capability.RESTORE,
        Capability.PURGE,
        Capability.RESIZE,
    }
)


class LibvirtMachines(ComputeDriver):
    def __init__(
        self,
        uri: str = "test:///default",
        pool: str = "default-pool",
        domain_type: str | None = None,
        base_volume: str | None = None,
        network: str = "default",
        boot: dict[str, str] | None = None,
        console_dir: str | None = None,
        shutdown_timeout: float = 60.0,
        domain_type_from: str | None = None,
        backup_pool: str | None = None,
        boot_banner: str | None = None,
        verify_timeout: float = 300.0,
    ) -> None:
        self.uri, self.pool_name, self.network = uri, pool, network
        self.domain_type = domains.domain_type(uri, domain_type, domain_type_from)
        self.base_volume, self.console_dir = base_volume, console_dir
        self.boot = domains.Boot(**boot) if boot else None
        self.shutdown_timeout = shutdown_timeout
        self.backup_pool = backup_pool
        self.boot_banner, self.verify_timeout = boot_banner, verify_timeout
        self.connection = Connection(uri)
        wire = set() if self.is_test else {Capability.BIND_ADDRESSES}  # nwfilter needs libvirtd
        backups = (
            {Capability.BACKUP, Capability.RESTORE_BACKUP}
            if backup_pool and not self.is_test
            else set()
        )
        if backups and boot_banner:  # a boot is judged by what the guest prints
            backups.add(Capability.VERIFY_BACKUP)
        self.capabilities = BASE_CAPABILITIES | wire | backups

    @property
    def is_test(self) -> bool:
        """Decided by the URI, never by the XML's type: a purge must not skip the wipe."""
        return is_test_uri(self.uri)

    def _call(self, action: str) -> AbstractContextManager[libvirt.virConnect]:
        return self.connection.call(action)

    # -- reading -------------------------------------------------------------

    def _volume_name(self, ref: ServiceRef) -> str:
        return f"{ref.name}.qcow2" if self.base_volume else f"{ref.name}.img"

    @property
    def _disk_format(self) -> str:
        return "qcow2" if self.base_volume else "raw"

    def _domain(self, conn: libvirt.virConnect, ref: ServiceRef) -> libvirt.virDomain | None:
        try:
            return conn.lookupByName(ref.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _volume(self, conn: libvirt.virConnect, ref: ServiceRef) -> libvirt.virStorageVol | None:
        pool = conn.storagePoolLookupByName(self.pool_name)
        return storage.lookup(pool, self._volume_name(ref))

    def _existing(
        self, conn: libvirt.virConnect, ref: ServiceRef, hint: str = ""
    ) -> libvirt.virDomain:
        domain = self._domain(conn, ref)
        if domain is None:
            raise PermanentError(f"{ref.name} does not exist" + (f": {hint}" if hint else ""))
        return domain

    def inspect(self, ref: ServiceRef) -> Observed:
        with self._call(f"inspect {ref.name}") as conn:
            return self._observe(conn, ref)

    def _observe(self, conn: libvirt.virConnect, ref: ServiceRef) -> Observed:
        domain = self._domain(conn, ref)
        volume = self._volume(conn, ref)
        has_data = volume is not None
        if domain is None:
            return Observed(Power.ABSENT, archived=has_data, data_present=has_data)
        power = domains.STATES.get(domain.state()[0], Power.OFF)
        vcpus, memory_mib = domains.configured_size(domain)
        return Observed(
            power,
            network_cut=domains.network_cut(domain),
            data_present=has_data,
            vcpus=vcpus,
            memory_mib=memory_mib,
            addresses=nwfilter.bound_addresses(domain) or (),
            disk_gib=volume.info()[1] // 1024**3 if volume is not None else 0,
            autostart=bool(domain.autostart()),
        )

    # -- the domain's XML ----------------------------------------------------

    def _domain_xml(self, conn: libvirt.virConnect, ref: ServiceRef, spec: MachineSpec) -> str:
        volume = self._volume(conn, ref)
        if volume is None:
            raise PermanentError(f"{ref.name} has no volume to boot from")
        devices = (
            domains.disk_xml(volume.path(), self._disk_format)
            + domains.interface_xml(self.network)
            + self._console_xml(ref)
        )
        os_xml = domains.os_xml(self.boot, ref)
        return domains.domain_xml(self.domain_type, ref, spec, os_xml, devices)

    def _console_xml(self, ref: ServiceRef) -> str:
        if self.is_test or self.console_dir is None:
            return ""
        return domains.console_file_xml(f"{self.console_dir}/{ref.name}.log")
