"""Backups of a libvirt guest: taken while it runs, listed, deleted, restored, verified.

A backup is a full, flattened qcow2 copy ``svc-<id>--<UTC stamp>.qcow2`` in
``backup_pool``, with a sidecar ``<copy>.sha256`` holding its SHA-256 when
taken, so that a later restore or verification can tell a copy that rotted
or was tampered with from the one taken. Verification boots the copy in a
scratch machine (``drivers.libvirt.scratch``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import libvirt

from drivers.base import (
    BackupCopy,
    Capability,
    MachineSpec,
    Outcome,
    PermanentError,
    ServiceRef,
    TemporaryError,
)
from drivers.libvirt import domain as domains
from drivers.libvirt import nwfilter, scratch, storage
from drivers.libvirt.machines import LibvirtMachines
from drivers.libvirt.storage import CHECKSUM_SUFFIX

BACKUP_SEPARATOR = "--"
BACKUP_STAMP = "%Y%m%dT%H%M%SZ"
BACKUP_SUFFIX = ".qcow2"


class LibvirtBackups(LibvirtMachines):
    def backup(self, ref: ServiceRef) -> Outcome:
        """A full, flattened qcow2 copy in the backup pool; a running guest keeps running.

        A running guest is copied by libvirt's push-mode backup job (QEMU copies
        a point-in-time view while the guest writes on); a stopped one by a
        volume clone. The copy's SHA-256, read back through libvirt, is the
        evidence that it was written whole; it is also kept beside the copy.
        """
        self.require(Capability.BACKUP)
        with self._call(f"back up {ref.name}") as conn:
            volume = self._volume(conn, ref)
            if volume is None:
                raise PermanentError(f"{ref.name} has no volume to back up")
            pool = conn.storagePoolLookupByName(str(self.backup_pool))
            stamp = time.strftime(BACKUP_STAMP, time.gmtime())
            name = f"{ref.name}{BACKUP_SEPARATOR}{stamp}{BACKUP_SUFFIX}"
            domain = self._domain(conn, ref)
            if domain is not None and domain.isActive():
                _push_backup(domain, f"{storage.pool_path(pool)}/{name}")
                pool.refresh(0)
                copy = pool.storageVolLookupByName(name)
            else:
                xml = storage.volume_xml(name, volume.info()[1], "qcow2")
                copy = pool.createXMLFrom(xml, volume, 0)
            if (image := storage.volume_format(copy)) != "qcow2":  # libvirt probes the file
                raise PermanentError(f"backup {name} of {ref.name} reads as {image}, not qcow2")
            digest = storage.sha256(conn, copy)
            storage.write_checksum(conn, pool, name, digest)
            evidence = {"backup": name, "bytes": copy.info()[1], "sha256": digest, "image": image}
            return Outcome(True, self._observe(conn, ref), f"backup {name}", evidence)

    def backups(self, ref: ServiceRef) -> list[BackupCopy]:
        self.require(Capability.BACKUP)
        with self._call(f"list backups of {ref.name}") as conn:
            found = [
                BackupCopy(v.name(), _backup_time(v.name()), v.info()[1])
                for v in self._backup_volumes(conn, ref, refresh=True)
            ]
        return sorted(found, key=lambda b: b.taken_at, reverse=True)

    def delete_backup(self, ref: ServiceRef, backup_id: str) -> Outcome:
        self.require(Capability.BACKUP)
        with self._call(f"delete backup {backup_id}") as conn:
            by_name = {v.name(): v for v in self._backup_files(conn, ref)}
            if backup_id not in by_name or not backup_id.endswith(BACKUP_SUFFIX):
                return Outcome(False, self._observe(conn, ref), f"no backup {backup_id}")
            by_name[backup_id].delete(0)
            if (sidecar := by_name.get(backup_id + CHECKSUM_SUFFIX)) is not None:
                sidecar.delete(0)
            return Outcome(True, self._observe(conn, ref), f"deleted {backup_id}")

    def _backup_files(
        self, conn: libvirt.virConnect, ref: ServiceRef, refresh: bool = False
    ) -> list[libvirt.virStorageVol]:
        """The service's volumes in the backup pool: copies and their checksum sidecars."""
        if not self.backup_pool:
            return []
        pool = conn.storagePoolLookupByName(self.backup_pool)
        if refresh:
            storage.refreshed(pool)
        prefix = f"{ref.name}{BACKUP_SEPARATOR}"
        return [v for v in pool.listAllVolumes(0) if v.name().startswith(prefix)]

    def _backup_volumes(
        self, conn: libvirt.virConnect, ref: ServiceRef, refresh: bool = False
    ) -> list[libvirt.virStorageVol]:
        files = self._backup_files(conn, ref, refresh)
        return [v for v in files if v.name().endswith(BACKUP_SUFFIX)]

    def _delete_backups(self, conn: libvirt.virConnect, ref: ServiceRef) -> list[str]:
        """Backups are data too: a purge leaves none (they hold no secrets but the guest's)."""
        deleted = []
        for volume in self._backup_files(conn, ref, refresh=True):
            if volume.name().endswith(BACKUP_SUFFIX):
                deleted.append(volume.name())
            volume.delete(0)
        return deleted

    def _chosen_backup(
        self, conn: libvirt.virConnect, ref: ServiceRef, backup_id: str
    ) -> libvirt.virStorageVol:
        """Only one of this service's own copies; anything else is refused before any change."""
        by_name = {v.name(): v for v in self._backup_volumes(conn, ref, refresh=True)}
        if backup_id not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise PermanentError(f"{ref.name} has no backup {backup_id!r} (it has: {known})")
        return by_name[backup_id]

    def _checksum(self, conn: libvirt.virConnect, copy: libvirt.virStorageVol) -> dict[str, Any]:
        """The copy's SHA-256 now, and whether it is the one recorded when it was taken."""
        pool = conn.storagePoolLookupByName(str(self.backup_pool))
        recorded = storage.read_checksum(conn, pool, copy.name())
        digest = storage.sha256(conn, copy)
        if recorded is None:
            verdict = "not recorded"
        else:
            verdict = "match" if recorded == digest else "mismatch"
        return {"sha256": digest, "sha256_recorded": recorded, "checksum": verdict}

    def restore_backup(self, ref: ServiceRef, spec: MachineSpec, backup_id: str) -> Outcome:
        """The service's machine and disk become the backup's; the backup itself stays.

        The copy is checked against its recorded SHA-256 first: a copy that
        changed since it was taken is refused, and the service's machine is
        left as it was. Then the machine is stopped hard (its disk is being
        replaced, so nothing it would write on the way down matters), its
        volume is replaced by a full copy of the backup, and the domain is
        defined anew from ``spec`` keeping the addresses it was bound to.
        Should the copy fail half-way (a full pool), the service is left with
        no machine and the backup intact: the same call, retried, finishes it.
        """
        self.require(Capability.RESTORE_BACKUP)
        with self._call(f"restore {ref.name} from {backup_id}") as conn:
            copy = self._chosen_backup(conn, ref, backup_id)
            checks = self._checksum(conn, copy)
            if checks["checksum"] == "mismatch":
                raise PermanentError(
                    f"backup {backup_id} of {ref.name} is not the copy taken (SHA-256 "
                    f"{checks['sha256']}, recorded {checks['sha256_recorded']}): not restored"
                )
            if (image := storage.volume_format(copy)) != "qcow2":
                raise PermanentError(
                    f"backup {backup_id} of {ref.name} is no qcow2 image any more (libvirt "
                    f"reads it as {image}): not restored"
                )
            bound = self._retire_machine(conn, ref)
            addresses = spec.addresses or bound
            self._replace_volume(conn, ref, copy)
            domain = conn.defineXML(self._domain_xml(conn, ref, spec))
            if addresses and Capability.BIND_ADDRESSES in self.capabilities:
                nwfilter.bind(conn, domain, addresses, live=False)
            domains.start(domain)
            domains.autostart(domain, True)
            evidence = {"backup": backup_id, **checks, "volume": self._volume_name(ref)}
            detail = f"restored from {backup_id}"
            return Outcome(True, self._observe(conn, ref), detail, evidence)

    def verify_backup(self, ref: ServiceRef, backup_id: str) -> Outcome:
        """A test restore that never touches the service's own machine.

        The copy's SHA-256 is compared with the one recorded when it was taken
        (a mismatch fails the verification without booting), and a copy that no
        longer reads as qcow2 fails it too. Then it boots in a scratch machine
        (``scratch.boot``); the scratch machine is removed whatever happened.
        """
        self.require(Capability.VERIFY_BACKUP)
        with self._call(f"verify backup {backup_id} of {ref.name}") as conn:
            copy = self._chosen_backup(conn, ref, backup_id)
            evidence: dict[str, Any] = {"backup": backup_id, **self._checksum(conn, copy)}
            image = storage.volume_format(copy)
            if evidence["checksum"] == "mismatch":
                evidence.update(booted=False, scratch=None, checked=["sha256"])
            elif image != "qcow2":  # QEMU could not even open it as the disk it was
                evidence.update(booted=False, scratch=None, checked=["sha256", "format"])
                evidence["why"] = f"the copy is no qcow2 image (libvirt reads it as {image})"
            else:
                evidence.update(scratch.boot(conn, self._scratch(conn, ref), copy))
            evidence["verified"] = bool(evidence["booted"]) and evidence["checksum"] != "mismatch"
            verdict = "verified" if evidence["verified"] else "FAILED verification"
            detail = f"backup {backup_id} {verdict}: checksum {evidence['checksum']}, " + (
                "booted" if evidence["booted"] else "did not boot"
            )
            return Outcome(False, self._observe(conn, ref), detail, evidence)

    def _scratch(self, conn: libvirt.virConnect, ref: ServiceRef) -> scratch.Scratch:
        """The service's boot and size (read only from its live machine, if any)."""
        domain = self._domain(conn, ref)
        vcpus, memory_mib = domains.configured_size(domain) if domain is not None else (0, 0)
        default = MachineSpec()
        return scratch.Scratch(
            service_id=ref.service_id,
            pool=self.pool_name,
            domain_type=self.domain_type,
            os_xml=domains.os_xml(self.boot, ref),
            vcpus=vcpus or default.vcpus,
            memory_mib=memory_mib or default.memory_mib,
            banner=str(self.boot_banner),
            timeout=self.verify_timeout,
        )

    def _retire_machine(self, conn: libvirt.virConnect, ref: ServiceRef) -> tuple[str, ...]:
        """Stop and undefine the service's domain; returns the addresses it was bound to."""
        domain = self._domain(conn, ref)
        if domain is None:
            return ()
        addresses = nwfilter.bound_addresses(domain) or ()
        domains.retire(domain)
        return addresses

    def _replace_volume(
        self, conn: libvirt.virConnect, ref: ServiceRef, copy: libvirt.virStorageVol
    ) -> None:
        """A flat volume (no backing file): the backup already holds the whole disk."""
        if (old := self._volume(conn, ref)) is not None:
            old.delete(0)
        name, capacity = self._volume_name(ref), copy.info()[1]
        pool = conn.storagePoolLookupByName(self.pool_name)
        pool.createXMLFrom(storage.volume_xml(name, capacity, self._disk_format), copy, 0)


def _push_backup(domain: libvirt.virDomain, target: str, timeout: float = 3600.0) -> None:
    """Run libvirt's push-mode backup job to ``target`` and wait for its end."""
    domain.backupBegin(
        "<domainbackup mode='push'><disks><disk name='vda' backup='yes' type='file'>"
        f"<driver type='qcow2'/><target file='{escape(target)}'/></disk></disks></domainbackup>",
        None,
        0,
    )
    deadline = time.monotonic() + timeout
    while domain.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        if time.monotonic() > deadline:
            domain.abortJob()
            raise TemporaryError(f"backup of {domain.name()} took over {timeout:g}s; aborted")
        time.sleep(0.2)
    stats = domain.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    if stats.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED or not stats.get("success", True):
        raise PermanentError(f"backup job of {domain.name()} failed: {stats.get('errmsg', stats)}")


def _backup_time(name: str) -> datetime:
    stamp = name.rsplit(BACKUP_SEPARATOR, 1)[-1].removesuffix(BACKUP_SUFFIX)
    return datetime.strptime(stamp, BACKUP_STAMP).replace(tzinfo=UTC)
