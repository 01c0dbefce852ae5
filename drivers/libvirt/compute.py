"""The libvirt compute driver: a service's machine through its lifecycle.

Each operation reads the domain and its volume first and changes only what
differs; its outcome carries what it saw afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import libvirt

from drivers.base import (
    Capability,
    MachineSpec,
    Outcome,
    PermanentError,
    ServiceRef,
    Unsupported,
)
from drivers.libvirt import domain as domains
from drivers.libvirt import nwfilter, storage
from drivers.libvirt.backup import LibvirtBackups


class LibvirtCompute(LibvirtBackups):
    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        with self._call(f"create {ref.name}") as conn:
            changed = self._ensure_volume(conn, ref, spec)
            domain = self._domain(conn, ref) or conn.defineXML(self._domain_xml(conn, ref, spec))
            changed |= domains.start(domain) | domains.autostart(domain, True)
            return Outcome(changed, self._observe(conn, ref))

    def _ensure_volume(self, conn: libvirt.virConnect, ref: ServiceRef, spec: MachineSpec) -> bool:
        """Thin: space is taken as the guest writes, as hosting providers overcommit disks."""
        if self._volume(conn, ref) is not None:
            return False
        pool = conn.storagePoolLookupByName(self.pool_name)
        backing = None
        if self.base_volume:
            backing = (pool.storageVolLookupByName(self.base_volume).path(), "raw")
        xml = storage.volume_xml(
            self._volume_name(ref), spec.disk_gib, self._disk_format,
            unit="GiB", thin=True, backing=backing,
        )
        pool.createXML(xml, 0)
        return True

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        actions: dict[str, Callable[[libvirt.virDomain], bool]] = {
            "pause": lambda d: domains.pause(d, self.is_test),
            "shutdown": lambda d: domains.shut_down(d, self.shutdown_timeout),
            "cut_network": self._cut,
        }
        if method not in actions:
            raise Unsupported(f"libvirt cannot suspend by {method!r}")
        with self._call(f"suspend {ref.name} by {method}") as conn:
            domain = self._existing(conn, ref, "nothing to suspend")
            changed = actions[method](domain) | domains.autostart(domain, False)
            return Outcome(changed, self._observe(conn, ref), f"suspended by {method}")

    def resume(self, ref: ServiceRef) -> Outcome:
        """Undoes any suspension: the network comes back first, then the guest runs."""
        with self._call(f"resume {ref.name}") as conn:
            domain = self._existing(conn, ref, "restore it first")
            changed = self._restore_network(domain) | domains.unpause(domain)
            changed |= domains.start(domain) | domains.autostart(domain, True)
            return Outcome(changed, self._observe(conn, ref))

    def archive(self, ref: ServiceRef) -> Outcome:
        with self._call(f"terminate {ref.name}") as conn:
            domain = self._domain(conn, ref)
            if domain is not None:
                domains.retire(domain)
            detail = "domain removed, volume kept"
            return Outcome(domain is not None, self._observe(conn, ref), detail)

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        with self._call(f"restore {ref.name}") as conn:
            if self._volume(conn, ref) is None:
                raise PermanentError(f"{ref.name} has no archived volume: it was purged")
            domain = self._domain(conn, ref) or conn.defineXML(self._domain_xml(conn, ref, spec))
            changed = domains.start(domain) | domains.autostart(domain, True)
            return Outcome(changed, self._observe(conn, ref), "restored from the archived volume")

    def purge(self, ref: ServiceRef) -> Outcome:
        """A purge that cannot be verified is a failure, never a success.

        libvirt's zero wipe (on a thin file, a deallocation, and the evidence
        says which), samples read back across the volume, its deletion, every
        backup's deletion, then the pool's listing checked for all of them.
        """
        self.archive(ref)
        with self._call(f"purge {ref.name}") as conn:
            volume = self._volume(conn, ref)
            evidence: dict[str, Any] = {"method": "none: already absent", "bytes": 0}
            if volume is not None:
                evidence = self._destroy_volume(conn, volume)
            evidence["backups_deleted"] = self._delete_backups(conn, ref)
            evidence.update(self._absence(conn, ref))
            if not evidence["verified_absent"]:
                raise PermanentError(f"purge of {ref.name} left data behind: {evidence}")
            seen = self._observe(conn, ref)
            return Outcome(volume is not None, seen, "volume destroyed", evidence)

    def _absence(self, conn: libvirt.virConnect, ref: ServiceRef) -> dict[str, Any]:
        """No domain, no volume by name, and none in the pool's listing."""
        pool = conn.storagePoolLookupByName(self.pool_name)
        refreshed = storage.refreshed(pool)
        listed = self._volume_name(ref) in pool.listVolumes()
        listed |= bool(self._backup_files(conn, ref, refresh=True))
        gone = self._domain(conn, ref) is None and self._volume(conn, ref) is None
        listing = "refreshed pool listing" if refreshed else "pool listing (refresh refused)"
        return {"verified_absent": gone and not listed, "verified_by": listing}

    def _destroy_volume(
        self, conn: libvirt.virConnect, volume: libvirt.virStorageVol
    ) -> dict[str, Any]:
        if self.is_test:
            size = volume.info()[1]
            volume.delete(0)
            return {"method": "delete-only: the test hypervisor cannot wipe", "bytes": size}
        evidence = storage.wipe_verified(conn, volume)
        volume.delete(0)
        return evidence

    def bind_addresses(self, ref: ServiceRef, addresses: tuple[str, ...]) -> Outcome:
        """Traffic from the guest only from its assigned addresses (nwfilter clean-traffic)."""
        self.require(Capability.BIND_ADDRESSES)
        wanted = tuple(sorted(addresses))
        with self._call(f"bind addresses of {ref.name}") as conn:
            domain = self._existing(conn, ref, "nothing to bind")
            changed = not nwfilter.is_bound(domain, wanted)
            if changed:
                nwfilter.bind(conn, domain, wanted, live=bool(domain.isActive()))
            return Outcome(changed, self._observe(conn, ref), f"bound to {list(wanted)}")

    def resize(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        """New vCPUs and memory take effect by a restart of a running guest; disks only grow."""
        with self._call(f"resize {ref.name}") as conn:
            domain = self._existing(conn, ref)
            changed = domains.resize_config(domain, spec)
            if changed and domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                domains.shut_down(domain, self.shutdown_timeout)
                domain.create()
            changed |= self._grow_disk(conn, ref, domain, spec)
            return Outcome(
                changed, self._observe(conn, ref), f"{spec.vcpus} vCPU, {spec.memory_mib} MiB"
            )

    def _grow_disk(
        self,
        conn: libvirt.virConnect,
        ref: ServiceRef,
        domain: libvirt.virDomain,
        spec: MachineSpec,
    ) -> bool:
        volume = self._volume(conn, ref)
        wanted = spec.disk_gib * 1024**3
        if volume is None or volume.info()[1] >= wanted:
            return False
        if self.is_test:
            raise Unsupported("the test hypervisor cannot grow volumes")
        if domain.isActive():
            domain.blockResize("vda", wanted, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        else:
            volume.resize(wanted, 0)
        return True

    # -- the network cut ---------------------------------------------------------

    def _cut(self, domain: libvirt.virDomain) -> bool:
        if domains.network_cut(domain):
            return False
        domains.set_link(domain, "down", self.is_test)
        return True

    def _restore_network(self, domain: libvirt.virDomain) -> bool:
        if not domains.network_cut(domain):
            return False
        domains.set_link(domain, "up", self.is_test)
        return True


__all__ = ["LibvirtCompute"]
