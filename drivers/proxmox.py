"""Compute driver for Proxmox VE: QEMU guests of a cluster, through its REST API.

A service's machine is the VM named ``svc-<service id>``, found by name
across the cluster (``/cluster/resources``), so it may be migrated between
nodes without the orchestrator noticing. The lifecycle maps to Proxmox as:

    create     clone the template (full clone by default) onto the node with
               the most free memory that can take it, set cores, memory and
               disk size, bind the addresses, start
    suspend    pause: qm suspend (RAM kept); shutdown: ACPI shutdown, stop
               after the timeout; cut_network: net0 link_down=1;
               power_off: stop
    resume     undo whichever of those holds
    terminate  vzdump the stopped VM into the backup storage (the archive,
               protected, notes "svc-... archive"), then destroy the VM with
               its disks
    restore    a new VM from the newest archive (``POST /nodes/{node}/qemu``
               with ``archive``), started
    restore a  the VM stopped and restored over (``archive`` with ``force=1``,
    backup     same vmid; PVE destroys the old disks), or a new VM when there
               is none, started
    verify a   qmrestore to a scratch vmid from ``/cluster/nextid`` named
    backup     ``scratch-<service>-<vmid>``, new MACs, its network devices
               removed before it starts; started, seen running, stopped and
               destroyed with its disks, and its absence checked
    purge      destroy the VM if any, delete every backup of the service on
               every storage of the cluster (protection lifted first), then
               scan every storage again: the evidence lists what was deleted
               and what the scan found

Backups are vzdump archives whose notes name the service (notes-template
``{{guestname}}``), so they are found after the VM itself is gone. Addresses
are bound by the VM firewall's ``ipfilter-net0`` IP set, which Proxmox
uses to drop traffic from any other source address, with ``firewall=1`` on
net0; binding is refused while the datacenter firewall is off, as the set
would filter nothing, and addresses are reported bound only while all of
that holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from drivers.base import (
    BackupCopy,
    Capability,
    ComputeDriver,
    MachineSpec,
    Observed,
    Outcome,
    PermanentError,
    Power,
    ServiceRef,
    TemporaryError,
    Unsupported,
)
from drivers.proxmox_api import PveApi, TaskFailed

IPSET = "ipfilter-net0"
VMID_TAKEN = re.compile(r"VM \d+: config file already exists|VM \d+ already exists")
VMID_ATTEMPTS = 5
ARCHIVE_NOTE = "archive"
DISK_SIZE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
SIZE_GIB = {"K": 1 / 1024 / 1024, "M": 1 / 1024, "G": 1, "T": 1024, "": 1 / 1024**3}


@dataclass(frozen=True)
class Guest:
    """Where a VM is in the cluster: enough to address it in the API; ``shared``, for a
    template, whether its disk is on storage every node reaches (clones go anywhere)."""

    node: str
    vmid: int
    shared: bool = False

    @property
    def path(self) -> str:
        return f"nodes/{self.node}/qemu/{self.vmid}"


class ProxmoxCompute(ComputeDriver):
    capabilities = frozenset(
        {
            Capability.CREATE,
            Capability.SUSPEND_PAUSE,
            Capability.SUSPEND_SHUTDOWN,
            Capability.SUSPEND_CUT_NETWORK,
            Capability.SUSPEND_POWER_OFF,
            Capability.ARCHIVE,
            Capability.RESTORE,
            Capability.PURGE,
            Capability.SNAPSHOT,
            Capability.RESIZE,
            Capability.BIND_ADDRESSES,
            Capability.BACKUP,
            Capability.RESTORE_BACKUP,
            Capability.VERIFY_BACKUP,
        }
    )

    secret_options = frozenset({"token_secret"})

    def __init__(
        self,
        uri: str,
        *,
        template: str,
        storage: str = "local-lvm",
        backup_storage: str = "local",
        disk: str = "scsi0",
        linked_clone: bool = False,
        nodes: list[str] | None = None,
        shutdown_timeout: int = 60,
        **api: Any,
    ) -> None:
        """``api`` is how to reach the cluster: ``PveApi``'s options (user, token_name,
        token_secret, verify, the timeouts, poll, sleep)."""
        self.api = PveApi(uri, **api)
        self.template = template
        self.storage = storage
        self.backup_storage = backup_storage
        self.disk = disk
        self.linked_clone = linked_clone
        self.nodes = nodes
        self.shutdown_timeout = shutdown_timeout

    # --- finding things ------------------------------------------------------------

    def _guest(self, ref: ServiceRef) -> Guest | None:
        found = [
            vm for vm in self.api.get("cluster/resources", type="vm")
            if vm.get("name") == ref.name and vm.get("type") == "qemu" and not vm.get("template")
        ]
        if len(found) > 1:
            ids = ", ".join(str(vm["vmid"]) for vm in found)
            raise PermanentError(f"{ref.name}: several VMs carry this name ({ids}); fix by hand")
        return Guest(found[0]["node"], int(found[0]["vmid"])) if found else None

    def _templates(self) -> list[Guest]:
        templates = []
        for vm in self.api.get("cluster/resources", type="vm"):
            if vm.get("template") and vm.get("name") == self.template:
                config = self.api.get(f"nodes/{vm['node']}/qemu/{vm['vmid']}/config")
                storage = str(config.get(self.disk, "")).split(":", 1)[0]
                templates.append(Guest(vm["node"], int(vm["vmid"]), self._shared(storage)))
        if not templates:
            raise PermanentError(f"no template named {self.template!r} in the cluster")
        return templates

    def _shared(self, storage: str) -> bool:
        return any(
            s.get("storage") == storage and s.get("shared")
            for s in self.api.get("cluster/resources", type="storage")
        )

    def _placement(self, spec: MachineSpec) -> tuple[Guest, str]:
        """The template to clone and the node to clone onto: the most free memory wins."""
        templates = self._templates()
        # PVE clones onto another node only from a template on shared storage and onto
        # shared storage ("can't clone to non-shared storage"); else only where it lives.
        shared = next((t for t in templates if t.shared), None) if self._shared(
            self.storage) else None
        local = {t.node: t for t in templates}
        needed = spec.memory_mib * 1024 * 1024
        candidates = []
        for node in self.api.get("nodes"):
            name = node["node"]
            if node.get("status") != "online" or (self.nodes and name not in self.nodes):
                continue
            template = local.get(name) or shared
            free = int(node.get("maxmem", 0)) - int(node.get("mem", 0))
            if template is not None and free >= needed:
                candidates.append((free, -float(node.get("cpu", 0)), name, template))
        if not candidates:
            reach = "" if shared else f" (storage {self.storage!r} is not shared)"
            raise TemporaryError(
                f"no online node that can take a clone of template {self.template!r}{reach} "
                f"has {spec.memory_mib} MiB free", delay=300.0,
            )
        _, _, node, template = max(candidates, key=lambda c: (c[0], c[1], c[2]))
        return template, node

    # --- reading state -------------------------------------------------------------

    def inspect(self, ref: ServiceRef) -> Observed:
        guest = self._guest(ref)
        if guest is None:
            archived = any(b.archive for b in self.backups(ref))
            return Observed(Power.ABSENT, archived=archived, data_present=archived)
        return self._observe(guest)

    def _observe(self, guest: Guest) -> Observed:
        status = self.api.get(f"{guest.path}/status/current")
        config = self.api.get(f"{guest.path}/config")
        return Observed(
            _power(status),
            network_cut="link_down=1" in str(config.get("net0", "")),
            data_present=True,
            addresses=tuple(sorted(self._bound(guest, config))),
            vcpus=int(config.get("cores", 1)) * int(config.get("sockets", 1)),
            memory_mib=int(config.get("memory", 0)),
            disk_gib=_disk_gib(str(config.get(self.disk, ""))),
            autostart=bool(int(config.get("onboot", 0))),
        )

    def _bound(self, guest: Guest, config: dict[str, Any]) -> list[str]:
        """The IP set's addresses, only while they filter: PVE applies a VM's ``ipfilter``
        when the datacenter firewall is on, the VM's firewall and ipfilter are on, and
        ``net0`` has ``firewall=1``; otherwise nothing is bound, whatever the set holds."""
        base = f"{guest.path}/firewall"
        if not (_nic_firewalled(config) and self._datacenter_firewall()
                and _options_filter(self.api.get(f"{base}/options"))):
            return []
        if IPSET not in {s["name"] for s in self.api.get(f"{base}/ipset")}:
            return []
        return [_address(e["cidr"]) for e in self.api.get(f"{base}/ipset/{IPSET}")]

    def _datacenter_firewall(self) -> bool:
        return bool(int(self.api.get("cluster/firewall/options").get("enable", 0)))

    # --- lifecycle -----------------------------------------------------------------

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        guest = self._guest(ref)
        changed = guest is None
        if guest is None:
            guest = self._clone(ref, spec)
        changed |= self._configure(guest, ref, spec)
        if spec.addresses:
            changed |= self._bind(guest, spec.addresses)
        changed |= self._start(guest)
        return Outcome(changed, self._observe(guest), f"VM {guest.vmid} on {guest.node}")

    def _clone(self, ref: ServiceRef, spec: MachineSpec) -> Guest:
        template, node = self._placement(spec)
        options: dict[str, Any] = {"name": ref.name, "description": f"service {ref.service_id}"}
        if self.linked_clone and node == template.node:
            options["full"] = 0
        else:
            options.update(full=1, storage=self.storage)
        if node != template.node:
            options["target"] = node
        source = f"nodes/{template.node}/qemu/{template.vmid}"
        vmid = self._with_new_vmid(
            f"clone {ref.name}",
            lambda vmid: self.api.post(f"{source}/clone", newid=vmid, **options),
        )
        return Guest(node, vmid)

    def _with_new_vmid(self, action: str, start: Callable[[int], Any]) -> int:
        """Run a task that creates a VM under a free VMID; returns the VMID it got.

        ``/cluster/nextid`` only proposes an ID: two creations at once may
        both be given it, and the second is refused ("config file already
        exists"). It then asks again, as ``qm`` users do by hand.
        """
        for _ in range(VMID_ATTEMPTS):
            vmid = int(self.api.get("cluster/nextid"))
            try:
                self.api.task(action, partial(start, vmid))
            except PermanentError as exc:
                if not VMID_TAKEN.search(str(exc)):
                    raise
                continue
            return vmid
        raise TemporaryError(f"{action}: every VMID proposed was taken meanwhile", delay=5.0)

    def _configure(self, guest: Guest, ref: ServiceRef, spec: MachineSpec) -> bool:
        config = self.api.get(f"{guest.path}/config")
        wanted = {"cores": spec.vcpus, "memory": spec.memory_mib, "onboot": 1}
        change = {k: v for k, v in wanted.items() if str(config.get(k, "")) != str(v)}
        if change:
            self.api.put(f"{guest.path}/config", **change)
        return bool(change) | self._grow(guest, config, spec)

    def _grow(self, guest: Guest, config: dict[str, Any], spec: MachineSpec) -> bool:
        if _disk_gib(str(config.get(self.disk, ""))) >= spec.disk_gib:
            return False
        self.api.task(
            f"resize {guest.vmid}",
            lambda: self.api.put(f"{guest.path}/resize", disk=self.disk, size=f"{spec.disk_gib}G"),
        )
        return True

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        guest = self._require(ref)
        before = self._observe(guest)
        if method == "cut_network":
            changed = self._set_link(guest, down=True)
        elif method == "pause":
            changed = before.power == Power.RUNNING and self._power(guest, "suspend")
        elif method == "shutdown":
            changed = before.power != Power.OFF and self._power(
                guest, "shutdown", timeout=self.shutdown_timeout, forceStop=1
            )
        elif method == "power_off":
            changed = before.power != Power.OFF and self._power(guest, "stop")
        else:
            raise Unsupported(f"Proxmox VMs suspend by pause, shutdown, cut_network or "
                              f"power_off, not {method}")
        return Outcome(changed, self._observe(guest), f"{method} VM {guest.vmid}")

    def resume(self, ref: ServiceRef) -> Outcome:
        guest = self._require(ref)
        changed = self._set_link(guest, down=False)
        changed |= self._start(guest)
        return Outcome(changed, self._observe(guest), f"VM {guest.vmid} running")

    def archive(self, ref: ServiceRef) -> Outcome:
        guest = self._guest(ref)
        if guest is None:
            observed = self.inspect(ref)
            if not observed.archived:
                raise PermanentError(f"{ref.name}: no VM and no archive to keep")
            return Outcome(False, observed, "already archived")
        if self._observe(guest).power != Power.OFF:
            self._power(guest, "stop")
        volid = self._vzdump(guest, mode="stop", notes=f"{{{{guestname}}}} {ARCHIVE_NOTE}")
        self._destroy(guest)
        return Outcome(True, self.inspect(ref), f"archived as {volid}", {"archive": volid})

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        guest = self._guest(ref)
        if guest is not None:
            return self.resume(ref)
        archives = [b for b in self.backups(ref) if b.archive]
        if not archives:
            raise PermanentError(f"{ref.name}: no archive to restore from")
        node = _volume_node(archives[0].backup_id) or self._placement(spec)[1]
        vmid = self._with_new_vmid(
            f"restore {ref.name}",
            lambda vmid: self.api.post(
                f"nodes/{node}/qemu", vmid=vmid, archive=_volid(archives[0].backup_id),
                storage=self.storage, unique=1,
            ),
        )
        restored = Guest(node, vmid)
        self._start(restored)
        detail = f"VM {vmid} restored from {archives[0].backup_id}"
        return Outcome(True, self._observe(restored), detail)

    def purge(self, ref: ServiceRef) -> Outcome:
        guest = self._guest(ref)
        deleted: list[str] = []
        if guest is not None:
            if self._observe(guest).power != Power.OFF:
                self._power(guest, "stop")
            self._destroy(guest)
            deleted.append(f"vm {guest.vmid} on {guest.node} with its disks")
        for backup in self.backups(ref):
            self.delete_backup(ref, backup.backup_id)
            deleted.append(backup.backup_id)
        remaining = self._scan(ref, guest)
        evidence = {"deleted": deleted, "scan": self._storages(),
                    "remaining": remaining, "verified_absent": not remaining}
        if remaining:
            raise PermanentError(f"{ref.name}: still present after purge: {', '.join(remaining)}")
        return Outcome(bool(deleted), Observed(Power.ABSENT), "every copy deleted", evidence)

    def bind_addresses(self, ref: ServiceRef, addresses: tuple[str, ...]) -> Outcome:
        guest = self._require(ref)
        changed = self._bind(guest, addresses)
        return Outcome(changed, self._observe(guest), f"bound {', '.join(addresses) or 'none'}")

    def resize(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        guest = self._require(ref)
        changed = self._configure(guest, ref, spec)
        return Outcome(changed, self._observe(guest), f"{spec.vcpus} vCPU, {spec.memory_mib} MiB")

    # --- snapshots -----------------------------------------------------------------

    def snapshot(self, ref: ServiceRef, name: str) -> Outcome:
        guest = self._require(ref)
        if name in self.snapshots(ref):
            return Outcome(False, self._observe(guest), f"snapshot {name} exists")
        self.api.task(f"snapshot {ref.name}",
                      lambda: self.api.post(f"{guest.path}/snapshot", snapname=name))
        return Outcome(True, self._observe(guest), f"snapshot {name} taken")

    def snapshots(self, ref: ServiceRef) -> list[str]:
        guest = self._require(ref)
        return [s["name"] for s in self.api.get(f"{guest.path}/snapshot") if s["name"] != "current"]

    def revert(self, ref: ServiceRef, name: str) -> Outcome:
        guest = self._require(ref)
        self.api.task(f"rollback {ref.name}",
                      lambda: self.api.post(f"{guest.path}/snapshot/{name}/rollback"))
        return Outcome(True, self._observe(guest), f"rolled back to {name}")

    def delete_snapshot(self, ref: ServiceRef, name: str) -> Outcome:
        guest = self._require(ref)
        if name not in self.snapshots(ref):
            return Outcome(False, self._observe(guest), f"no snapshot {name}")
        self.api.task(f"delete snapshot {ref.name}",
                      lambda: self.api.delete(f"{guest.path}/snapshot/{name}"))
        return Outcome(True, self._observe(guest), f"snapshot {name} deleted")

    # --- backups -------------------------------------------------------------------

    def _chosen_backup(self, ref: ServiceRef, backup_id: str) -> BackupCopy:
        """Only one of this service's own backups (by its notes); else refused, nothing changed."""
        found = {b.backup_id: b for b in self.backups(ref)}
        if backup_id not in found:
            known = ", ".join(sorted(found)) or "none"
            raise PermanentError(f"{ref.name} has no backup {backup_id!r} (it has: {known})")
        return found[backup_id]

    def restore_backup(self, ref: ServiceRef, spec: MachineSpec, backup_id: str) -> Outcome:
        """The VM becomes the backup's (config and disks); the archive stays.

        Over the existing VM when the archive is on its node (``force=1``: PVE
        destroys the old disks); a VM on another node is destroyed first and the
        archive restored on the archive's node under the same vmid, as a local
        archive cannot be read from elsewhere; no VM at all, a new vmid.
        """
        backup = self._chosen_backup(ref, backup_id)
        node = _volume_node(backup.backup_id) or self._placement(spec)[1]
        options: dict[str, Any] = {"archive": _volid(backup.backup_id), "storage": self.storage}
        guest = self._guest(ref)
        if guest is not None and self._observe(guest).power != Power.OFF:
            self._power(guest, "stop")
        if guest is not None and guest.node == node:
            options["force"] = 1
        elif guest is not None:
            self._destroy(guest)
        action = f"restore {ref.name} from {backup_id}"
        if guest is not None:
            vmid = guest.vmid
            self.api.task(action, lambda: self.api.post(f"nodes/{node}/qemu", vmid=vmid, **options))
        else:
            vmid = self._with_new_vmid(
                action, lambda new: self.api.post(f"nodes/{node}/qemu", vmid=new, **options)
            )
        restored = Guest(node, vmid)
        if spec.addresses:
            self._bind(restored, spec.addresses)
        self._start(restored)
        evidence = {"backup": backup_id, "vmid": vmid, "node": node,
                    "over_existing": bool(options.get("force"))}
        return Outcome(True, self._observe(restored), f"VM {vmid} restored from {backup_id}",
                       evidence)

    def verify_backup(self, ref: ServiceRef, backup_id: str) -> Outcome:
        """A test restore into a scratch VM that never shares anything with the service's VM.

        The scratch gets its own vmid, a name of its own from the start (an
        override of the restore, so the service's name never points at two
        VMs), new MAC addresses, and no network device, so it cannot clash with
        the live VM. It passes when qmrestore and qm start succeed and PVE then
        reports it running; it is stopped and destroyed with its disks whatever
        happened, and its absence is checked.
        """
        backup = self._chosen_backup(ref, backup_id)
        node = _volume_node(backup.backup_id) or self._any_node()
        restored: list[int] = []  # the vmid PVE accepted the restore under, once it did

        def restore(vmid: int) -> Any:
            upid = self.api.post(
                f"nodes/{node}/qemu", vmid=vmid, archive=_volid(backup.backup_id),
                storage=self.storage, unique=1, name=_scratch_name(ref, vmid),
            )
            restored.append(vmid)
            return upid

        evidence: dict[str, Any] = {"backup": backup_id, "node": node}
        try:
            evidence.update(self._boot_scratch(node, f"restore scratch of {ref.name}", restore))
        finally:
            if restored:  # never another VM's: only the vmid our own restore was accepted under
                name = _scratch_name(ref, restored[-1])
                evidence.update(scratch=name, vmid=restored[-1])
                evidence["scratch_removed"] = self._remove_scratch(Guest(node, restored[-1]), name)
        evidence["verified"] = evidence["booted"]
        verdict = "verified" if evidence["booted"] else "FAILED verification"
        detail = f"backup {backup_id} {verdict}: " + (
            "booted" if evidence["booted"] else f"did not boot ({evidence['why']})"
        )
        return Outcome(False, self.inspect(ref), detail, evidence)

    def _boot_scratch(
        self, node: str, action: str, restore: Callable[[int], Any]
    ) -> dict[str, Any]:
        """A failed task is the backup failing, reported; any other error is raised.

        The scratch's vmid comes from ``/cluster/nextid`` with the same retry as a clone.
        """
        checked = ["qmrestore task", "network devices removed", "qm start task", "status running"]
        try:
            scratch = Guest(node, self._with_new_vmid(action, restore))
            nets = [k for k in self.api.get(f"{scratch.path}/config") if re.fullmatch(r"net\d+", k)]
            if nets:
                self.api.put(f"{scratch.path}/config", delete=",".join(nets))
            self._power(scratch, "start")
        except TaskFailed as exc:
            return {"booted": False, "why": str(exc), "checked": checked}
        status = self.api.get(f"{scratch.path}/status/current")
        booted = status.get("status") == "running" and status.get("qmpstatus") == "running"
        why = {} if booted else {"why": f"status {status.get('status')}/{status.get('qmpstatus')}"}
        return {"booted": booted, "checked": checked, **why}

    def _remove_scratch(self, scratch: Guest, name: str) -> bool:
        """Stopped, destroyed with its disks, and then looked for: never left behind silently."""
        found = [vm for vm in self.api.get("cluster/resources", type="vm")
                 if int(vm["vmid"]) == scratch.vmid]
        if found and found[0].get("name") == name:  # never another VM that took the vmid
            if self._observe(scratch).power != Power.OFF:
                self._power(scratch, "stop")
            self._destroy(scratch)
        left = [f"vm {vm['vmid']}" for vm in self.api.get("cluster/resources", type="vm")
                if vm.get("name") == name
                or (int(vm["vmid"]) == scratch.vmid and not vm.get("name"))]
        for node, storage in self._storages("images"):
            left += [item["volid"] for item in self.api.get(
                f"nodes/{node}/storage/{storage}/content", vmid=scratch.vmid)]
        if left:
            raise PermanentError(f"scratch {name} not removed: {', '.join(left)}")
        return True

    def backup(self, ref: ServiceRef) -> Outcome:
        guest = self._require(ref)
        volid = self._vzdump(guest, mode="snapshot", notes="{{guestname}}")
        return Outcome(True, self._observe(guest), f"backup {volid}", {"backup": volid})

    def backups(self, ref: ServiceRef) -> list[BackupCopy]:
        found: dict[str, BackupCopy] = {}
        for node, storage in self._storages("backup"):
            for item in self.api.get(f"nodes/{node}/storage/{storage}/content", content="backup"):
                words = str(item.get("notes", "")).split()
                if words[:1] == [ref.name]:
                    found.setdefault(item["volid"], _copy(node, item, ARCHIVE_NOTE in words[1:]))
        return sorted(found.values(), key=lambda b: b.taken_at, reverse=True)

    def delete_backup(self, ref: ServiceRef, backup_id: str) -> Outcome:
        node, volid = _volume_node(backup_id) or self._any_node(), _volid(backup_id)
        storage = volid.split(":", 1)[0]
        path = f"nodes/{node}/storage/{storage}/content/{volid}"
        self.api.put(path, protected=0)
        self.api.task(f"delete backup {volid}", lambda: self.api.delete(path))
        return Outcome(True, Observed(Power.ABSENT), f"deleted {volid}")

    def _vzdump(self, guest: Guest, mode: str, notes: str) -> str:
        """Back up the guest; returns the new archive's ``node/volid``."""
        before = {b["volid"] for b in self._node_backups(guest)}
        self.api.task(
            f"vzdump {guest.vmid}",
            lambda: self.api.post(
                f"nodes/{guest.node}/vzdump", vmid=str(guest.vmid), storage=self.backup_storage,
                mode=mode, compress="zstd", **{"notes-template": notes},
                protected=int(ARCHIVE_NOTE in notes),
            ),
        )
        new = [b["volid"] for b in self._node_backups(guest) if b["volid"] not in before]
        if len(new) != 1:
            raise PermanentError(f"vzdump {guest.vmid} reported success but made {len(new)} "
                                 f"archives on {self.backup_storage}")
        return f"{guest.node}/{new[0]}"

    def _node_backups(self, guest: Guest) -> list[dict[str, Any]]:
        path = f"nodes/{guest.node}/storage/{self.backup_storage}/content"
        items: list[dict[str, Any]] = self.api.get(path, content="backup", vmid=guest.vmid)
        return items

    # --- helpers -------------------------------------------------------------------

    def _require(self, ref: ServiceRef) -> Guest:
        guest = self._guest(ref)
        if guest is None:
            raise PermanentError(f"{ref.name}: no such VM in the cluster")
        return guest

    def _power(self, guest: Guest, verb: str, **options: Any) -> bool:
        path = f"{guest.path}/status/{verb}"
        self.api.task(f"{verb} {guest.vmid}", lambda: self.api.post(path, **options))
        return True

    def _start(self, guest: Guest) -> bool:
        power = self._observe(guest).power
        if power == Power.PAUSED:
            return self._power(guest, "resume")
        if power == Power.OFF:
            return self._power(guest, "start")
        return False

    def _set_link(self, guest: Guest, down: bool) -> bool:
        net0 = str(self.api.get(f"{guest.path}/config").get("net0", ""))
        if not net0 or ("link_down=1" in net0) == down:
            return False
        parts = [p for p in net0.split(",") if not p.startswith("link_down=")]
        parts += ["link_down=1"] if down else []
        self.api.put(f"{guest.path}/config", net0=",".join(parts))
        return True

    def _bind(self, guest: Guest, addresses: tuple[str, ...]) -> bool:
        """The IP set, the VM's firewall options and ``firewall=1`` on net0.

        The datacenter firewall is the cluster's, not this VM's: switching it on
        applies every node's and guest's rules at once, so it is refused here,
        before anything changes, rather than switched on.
        """
        if not self._datacenter_firewall():
            raise PermanentError(
                f"VM {guest.vmid}: the datacenter firewall is disabled, so an IP filter "
                "would filter nothing; enable it (cluster firewall options) first"
            )
        base = f"{guest.path}/firewall"
        changed = self._firewall_nic(guest)
        if IPSET not in {s["name"] for s in self.api.get(f"{base}/ipset")}:
            self.api.post(f"{base}/ipset", name=IPSET, comment="orchestrator: allowed sources")
            changed = True
        entries = {_address(e["cidr"]): e["cidr"] for e in self.api.get(f"{base}/ipset/{IPSET}")}
        for address in sorted(set(addresses) - set(entries)):
            self.api.post(f"{base}/ipset/{IPSET}", cidr=address)
            changed = True
        for address in sorted(set(entries) - set(addresses)):
            self.api.delete(f"{base}/ipset/{IPSET}/{entries[address]}")
            changed = True
        options = self.api.get(f"{base}/options")
        if not (options.get("enable") and options.get("ipfilter")):
            self.api.put(f"{base}/options", enable=1, ipfilter=1)
            changed = True
        return changed

    def _firewall_nic(self, guest: Guest) -> bool:
        net0 = str(self.api.get(f"{guest.path}/config").get("net0", ""))
        if not net0:
            raise PermanentError(f"VM {guest.vmid} has no net0 to filter")
        if _nic_firewalled({"net0": net0}):
            return False
        parts = [p for p in net0.split(",") if not p.startswith("firewall=")]
        self.api.put(f"{guest.path}/config", net0=",".join([*parts, "firewall=1"]))
        return True

    def _destroy(self, guest: Guest) -> None:
        self.api.task(
            f"destroy {guest.vmid}",
            lambda: self.api.delete(guest.path, purge=1, **{"destroy-unreferenced-disks": 1}),
        )

    def _storages(self, content: str = "") -> list[tuple[str, str]]:
        """(node, storage) pairs holding ``content``; a shared storage once."""
        seen: set[str] = set()
        pairs = []
        for s in self.api.get("cluster/resources", type="storage"):
            if s.get("status", "available") != "available":
                continue
            if content and content not in str(s.get("content", "")).split(","):
                continue
            if s.get("shared") and s["storage"] in seen:
                continue
            seen.add(s["storage"])
            pairs.append((s["node"], s["storage"]))
        return sorted(pairs)

    def _scan(self, ref: ServiceRef, guest: Guest | None) -> list[str]:
        """What of the service is still anywhere: its VM, its disks, its backups."""
        remaining = [f"vm {g.vmid}" for g in [self._guest(ref)] if g]
        remaining += [b.backup_id for b in self.backups(ref)]
        if guest is not None:
            for node, storage in self._storages("images"):
                for item in self.api.get(f"nodes/{node}/storage/{storage}/content",
                                         vmid=guest.vmid):
                    remaining.append(f"{node}/{item['volid']}")
        return remaining

    def _any_node(self) -> str:
        return str(self.api.get("nodes")[0]["node"])


def _nic_firewalled(config: dict[str, Any]) -> bool:
    return "firewall=1" in str(config.get("net0", "")).split(",")


def _options_filter(options: dict[str, Any]) -> bool:
    return bool(options.get("enable")) and bool(options.get("ipfilter"))


def _scratch_name(ref: ServiceRef, vmid: int) -> str:
    return f"scratch-{ref.service_id}-{vmid}"


def _power(status: dict[str, Any]) -> Power:
    if status.get("status") != "running":
        return Power.OFF
    if status.get("qmpstatus") in ("paused", "suspended", "prelaunch"):
        return Power.PAUSED
    return Power.RUNNING


def _disk_gib(drive: str) -> int:
    match = DISK_SIZE.search(drive)
    if not match:
        return 0
    return round(float(match.group(1)) * SIZE_GIB[match.group(2)])


def _address(cidr: str) -> str:
    """IP set entries come back as given or with a /32 (/128) suffix."""
    address, _, length = cidr.partition("/")
    return address if length in ("", "32", "128") else cidr


def _copy(node: str, item: dict[str, Any], archive: bool) -> BackupCopy:
    return BackupCopy(
        backup_id=f"{node}/{item['volid']}",
        taken_at=datetime.fromtimestamp(int(item.get("ctime", 0)), UTC),
        size=int(item.get("size", 0)),
        protected=bool(item.get("protected")),
        archive=archive,
    )


def _volume_node(backup_id: str) -> str:
    return backup_id.split("/", 1)[0] if "/" in backup_id.split(":")[0] else ""


def _volid(backup_id: str) -> str:
    return backup_id.split("/", 1)[1] if _volume_node(backup_id) else backup_id


__all__ = ["ProxmoxCompute"]
