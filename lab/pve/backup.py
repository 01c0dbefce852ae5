"""vzdump, storage content, and prune, with PVE's own retention rules (``lab.pve.prune``).

vzdump behaves as ``PVE::VZDump``: the task id is the guest when one guest is named; the
lock ``backup`` is held while the task runs; a guest that is already locked is not a
synchronous refusal but a failed job ("ERROR: Backup of VM 100 failed - VM is locked
(backup)", exit status ``job errors``). Archive names and ctime come from the lab clock,
read as UTC (the nodes' zone). Prune marks are computed per guest, the way
``prune_mark_backup_group`` groups them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lab.pve.auth import require
from lab.pve.prune import keeps_everything, prune_list
from lab.pve.registry import Call, api
from lab.pve.schema import split_list
from lab.pve.state import GIB, Cluster, Guest, Volume, fail
from lab.pve.tasks import Task, TaskError

EXTENSIONS = {"0": "vma", "1": "vma.lzo", "lzo": "vma.lzo", "gzip": "vma.gz", "zstd": "vma.zst"}


@api("GET", "/nodes/{node}/storage")
def storages(call: Call) -> list[dict[str, Any]]:
    cluster, node = call.cluster, call.text("node")
    cluster.node(node)
    out = []
    for store in cluster.storages.values():
        if call.params.get("content") and call.params["content"] not in store.content:
            continue
        used = sum(v.size for v in cluster.node_volumes(node, store.storage))
        out.append({"storage": store.storage, "type": store.type, "active": 1, "enabled": 1,
                    "shared": int(store.shared), "content": ",".join(store.content),
                    "total": store.total, "used": used, "avail": store.total - used,
                    "used_fraction": used / store.total})
    return out


def _content_item(volume: Volume) -> dict[str, Any]:
    item: dict[str, Any] = {"volid": volume.volid, "content": volume.content,
                            "format": volume.format, "size": volume.size,
                            "ctime": volume.ctime}
    if volume.vmid is not None:
        item["vmid"] = volume.vmid
    if volume.content == "backup":
        item["subtype"] = "qemu"
        item["protected"] = int(volume.protected)
        if volume.notes:
            item["notes"] = volume.notes
    if volume.parent:
        item["parent"] = volume.parent
    if volume.content == "images":
        item["used"] = volume.size
    return item


@api("GET", "/nodes/{node}/storage/{storage}/content")
def content(call: Call) -> list[dict[str, Any]]:
    cluster, node, storage = call.cluster, call.text("node"), call.text("storage")
    cluster.storage(node, storage)
    volumes = cluster.node_volumes(node, storage)
    if call.params.get("content"):
        volumes = [v for v in volumes if v.content == call.params["content"]]
    if call.params.get("vmid") is not None:
        volumes = [v for v in volumes if v.vmid == int(call.params["vmid"])]
    return [_content_item(v) for v in volumes]


def _volume(call: Call) -> Volume:
    cluster, node, storage = call.cluster, call.text("node"), call.text("storage")
    volid = call.text("volume")
    if ":" not in volid:
        volid = f"{storage}:{volid}"
    cluster.storage(node, volid.split(":", 1)[0])
    volume = cluster.volumes.get((node, volid))
    if volume is None:
        raise fail(f"volume '{volid}' does not exist")
    return volume


@api("PUT", "/nodes/{node}/storage/{storage}/content/{volume}")
def update_volume(call: Call) -> None:
    volume = _volume(call)
    require(call.caller, f"/storage/{volume.storage}", "Datastore.Allocate")
    if call.params.get("notes") is not None:
        volume.notes = call.text("notes")
    if call.params.get("protected") is not None:
        volume.protected = call.flag("protected")


@api("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}")
def delete_volume(call: Call) -> str:
    volume, cluster = _volume(call), call.cluster
    require(call.caller, f"/storage/{volume.storage}", "Datastore.Allocate")
    if volume.protected:
        raise fail(f"cannot delete protected backup '{volume.volid}'")

    def finish(task: Task) -> None:
        task.say(f"Removed volume '{volume.volid}'")
        cluster.volumes.pop((volume.node, volume.volid), None)

    owner = f"{volume.vmid}@" if volume.vmid is not None else ""
    return call.tasks.start(volume.node, "imgdel", f"{owner}{volume.storage}",
                            call.caller.userid, finish=finish)


# --- vzdump ---------------------------------------------------------------------------


@api("POST", "/nodes/{node}/vzdump")
def vzdump(call: Call) -> str:
    cluster, node = call.cluster, call.text("node")
    cluster.node(node)
    vmids = [int(v) for v in split_list(call.text("vmid"))]
    if not vmids:
        raise fail("no guest selected (use --vmid or --all)")
    storage = call.text("storage", "local")
    store = cluster.storage(node, storage)
    if "backup" not in store.content:
        raise fail(f"storage '{storage}' does not support backups")
    for vmid in vmids:
        require(call.caller, f"/vms/{vmid}", "VM.Backup")
    require(call.caller, f"/storage/{storage}", "Datastore.AllocateSpace")
    job = _Job(call, node, storage, vmids)
    ident = str(vmids[0]) if len(vmids) == 1 else ""
    return call.tasks.start(node, "vzdump", ident, call.caller.userid, job.begin, job.finish)


class _Job:
    """One vzdump run: lock the guests at start, write the archives at the end."""

    def __init__(self, call: Call, node: str, storage: str, vmids: list[int]) -> None:
        self.call, self.cluster, self.node, self.storage = call, call.cluster, node, storage
        self.vmids, self.locked, self.errors = vmids, [], 0
        self.started = call.cluster.now()

    def begin(self, task: Task) -> None:
        options = " ".join(f"--{k} {v}" for k, v in sorted(self.call.params.items())
                           if k not in ("node", "vmid"))
        task.say(f"INFO: starting new backup job: vzdump {' '.join(map(str, self.vmids))} "
                 f"{options}".rstrip())
        for vmid in self.vmids:
            guest = self.cluster.guests.get(vmid)
            if guest is None or guest.node != self.node:
                task.say(f"INFO: skip external VMs: {vmid}")
                continue
            self._lock(task, guest)

    def _lock(self, task: Task, guest: Guest) -> None:
        stamp = datetime.fromtimestamp(self.started, UTC).strftime("%F %H:%M:%S")
        task.say(f"INFO: Starting Backup of VM {guest.vmid} (qemu)")
        task.say(f"INFO: Backup started at {stamp}")
        task.say(f"INFO: status = {guest.status}")
        if guest.lock:
            task.say(f"ERROR: Backup of VM {guest.vmid} failed - VM is locked ({guest.lock})")
            task.say(f"INFO: Failed at {stamp}")
            self.errors += 1
            return
        guest.config["lock"] = "backup"
        self.locked.append(guest)

    def finish(self, task: Task) -> None:
        for guest in self.locked:
            guest.config.pop("lock", None)
            volume = self._archive(guest)
            task.say(f"INFO: creating vzdump archive '/var/lib/vz/dump/"
                     f"{volume.volid.split('/', 1)[1]}'")
            task.say(f"INFO: Finished Backup of VM {guest.vmid} (00:00:01)")
            self._prune(task, guest)
        if self.errors:
            task.say("INFO: Backup job finished with errors")
            raise TaskError("job errors")
        task.say("INFO: Backup job finished successfully")

    def _archive(self, guest: Guest) -> Volume:
        call = self.call
        name = datetime.fromtimestamp(self.started, UTC).strftime("%Y_%m_%d-%H_%M_%S")
        ext = EXTENSIONS.get(call.text("compress", "0"), "vma")
        volid = f"{self.storage}:backup/vzdump-qemu-{guest.vmid}-{name}.{ext}"
        size = max(GIB // 8, sum(int(v.size) for v in self._disks(guest)) // 4)
        volume = Volume(volid, self.node, "backup", size, self.started, guest.vmid,
                        format=ext, notes=_notes(call, guest), protected=call.flag("protected"),
                        config={k: v for k, v in guest.config.items() if k != "lock"})
        self.cluster.add_volume(volume)
        return volume

    def _disks(self, guest: Guest) -> list[Volume]:
        return [v for v in self.cluster.volumes.values()
                if v.content == "images" and v.vmid == guest.vmid]

    def _prune(self, task: Task, guest: Guest) -> None:
        if not self.call.flag("remove", True):
            return
        keep = self.call.text("prune-backups") or self.cluster.storages[self.storage].prune_backups
        if keeps_everything(keep):
            return
        task.say(f"INFO: prune older backups with retention: {keep}")
        removed = 0
        for mark in marks(self.cluster, self.node, self.storage, keep, guest.vmid):
            if mark["mark"] == "remove":
                self.cluster.volumes.pop((self.node, mark["volid"]), None)
                removed += 1
        task.say(f"INFO: pruned {removed} backup(s)")


def _notes(call: Call, guest: Guest) -> str:
    """``notes-template`` with vzdump's four variables."""
    text = call.text("notes-template")
    for var, value in (("cluster", call.cluster.name), ("guestname", guest.config.get("name",
                       "")), ("node", guest.node), ("vmid", str(guest.vmid))):
        text = text.replace("{{" + var + "}}", value)
    return text


# --- prune --------------------------------------------------------------------------------


def marks(cluster: Cluster, node: str, storage: str, keep: str,
          vmid: int | None = None) -> list[dict[str, Any]]:
    """The dry-run list: every backup of the storage (of ``vmid``) with its mark."""
    volumes = [v for v in cluster.node_volumes(node, storage)
               if v.content == "backup" and vmid in (None, v.vmid)]
    return prune_list(volumes, keep)


def _prune_options(call: Call) -> tuple[str, str, str, int | None]:
    node, storage = call.text("node"), call.text("storage")
    store = call.cluster.storage(node, storage)
    keep = call.text("prune-backups") or store.prune_backups
    vmid = call.params.get("vmid")
    if call.params.get("type") == "lxc":
        return node, storage, "keep-all=1", -1
    return node, storage, keep, None if vmid is None else int(vmid)


@api("GET", "/nodes/{node}/storage/{storage}/prunebackups")
def prune_dryrun(call: Call) -> list[dict[str, Any]]:
    node, storage, keep, vmid = _prune_options(call)
    return [] if vmid == -1 else marks(call.cluster, node, storage, keep, vmid)


@api("DELETE", "/nodes/{node}/storage/{storage}/prunebackups")
def prune_run(call: Call) -> str:
    node, storage, keep, vmid = _prune_options(call)
    if vmid is not None and vmid != -1:
        require(call.caller, f"/vms/{vmid}", "VM.Backup")
    else:
        require(call.caller, f"/storage/{storage}", "Datastore.Allocate")
    cluster = call.cluster

    def finish(task: Task) -> None:
        for mark in [] if vmid == -1 else marks(cluster, node, storage, keep, vmid):
            if mark["mark"] == "remove":
                task.say(f"removing backup '{mark['volid']}'")
                cluster.volumes.pop((node, mark["volid"]), None)

    return call.tasks.start(node, "prunebackups", storage, call.caller.userid, finish=finish)
