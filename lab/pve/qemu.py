"""Guests: list, config, create/restore, clone, resize, power, destroy, snapshots.

Where PVE refuses decides how: checks PVE makes before ``fork_worker`` are HTTP 500 with
the message as reason (clone's ``load_and_check``, destroy's "is running", suspend/reboot
"not running", a sync config ``PUT`` on a locked guest: "VM is locked (backup)"); checks
made inside the worker fail the task ("VM 100 already running" for start, a lock met by
start/stop/resize/snapshot/destroy). A restore with ``force`` over an existing VM is
refused while it runs or is protected ("unable to restore VM 100 - vm is running") and
destroys its old disks in the worker, as ``restore_vma_archive`` does. Simplifications:
config changes apply at once (no ``pending`` section); disks are size bookkeeping only;
no HA, pools or replication.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from lab.pve.cluster_api import guest_resource
from lab.pve.registry import Call, api
from lab.pve.schema import Schema, split_list
from lab.pve.state import (
    Cluster,
    Guest,
    Snapshot,
    Volume,
    disk_size,
    fail,
    new_mac,
    param_error,
    with_size,
)
from lab.pve.tasks import Task, TaskError

META = {"node", "vmid", "digest", "delete", "revert", "skiplock", "force",
        "background_delay", "archive", "storage", "unique", "start", "pool", "bwlimit",
        "live-restore", "import-working-storage"}


def vcpus(guest: Guest) -> int:
    return int(guest.config.get("cores", "1")) * int(guest.config.get("sockets", "1"))


def memory_mib(guest: Guest) -> int:
    text = guest.config.get("memory", "512")
    found = re.search(r"(?:^|current=)(\d+)", text)
    return int(found.group(1)) if found else 512


def total_disk(guest: Guest) -> int:
    return sum(disk_size(v) for v in guest.disks().values())


def _guest(call: Call) -> Guest:
    return call.cluster.guest(call.text("node"), call.text("vmid"))


def _locked_in_task(guest: Guest) -> None:
    if guest.lock:
        raise TaskError(f"VM is locked ({guest.lock})")


@api("GET", "/nodes/{node}/qemu")
def guest_list(call: Call) -> list[dict[str, Any]]:
    node = call.text("node")
    call.cluster.node(node)
    return [guest_resource(g, call.cluster) for _, g in sorted(call.cluster.guests.items())
            if g.node == node]


@api("GET", "/nodes/{node}/qemu/{vmid}/config")
def config(call: Call) -> dict[str, Any]:
    guest = _guest(call)
    snapshot = call.params.get("snapshot")
    values = guest.config
    if snapshot is not None:
        if snapshot not in guest.snapshots:
            raise fail(f"snapshot '{snapshot}' does not exist")
        values = guest.snapshots[snapshot].config
    return {**typed_config(values), "digest": guest.digest()}


@functools.cache
def _config_types() -> dict[str, str]:
    returns = Schema.load().match("GET", "/nodes/n/qemu/100/config")[0]
    assert returns is not None
    return {k: str(v.get("type")) for k, v in returns.returns["properties"].items()}


def typed_config(values: dict[str, str]) -> dict[str, Any]:
    """Values typed as the schema's ``returns`` says (PVE's JSON has numbers for those)."""
    types = _config_types()
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = types.get(key, "string")
        if kind in ("integer", "boolean") and re.fullmatch(r"-?\d+", value):
            out[key] = int(value)
        elif kind == "number" and re.fullmatch(r"-?\d+(\.\d+)?", value):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _apply_config(guest: Guest, call: Call) -> None:
    digest = call.params.get("digest")
    if digest and digest != guest.digest():
        raise fail("detected modified configuration - file changed by other user? Try again.")
    guest.check_lock()
    for key in split_list(call.text("delete")):
        guest.config.pop(key, None)
    for key, value in call.params.items():
        if key not in META:
            guest.config[key] = _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@api("PUT", "/nodes/{node}/qemu/{vmid}/config")
def set_config(call: Call) -> None:
    """Synchronous: a locked guest is refused with HTTP 500 "VM is locked (...)"."""
    _apply_config(_guest(call), call)


@api("POST", "/nodes/{node}/qemu/{vmid}/config")
def set_config_async(call: Call) -> str:
    guest = _guest(call)

    def finish(task: Task) -> None:
        try:
            _apply_config(guest, call)
        except Exception as exc:
            raise TaskError(str(exc)) from None

    return call.tasks.start(guest.node, "qmconfig", guest.vmid, call.caller.userid,
                            finish=finish)


@api("PUT", "/nodes/{node}/qemu/{vmid}/resize")
def resize(call: Call) -> str:
    """Async since PVE 8.1 (task ``resize``); shrinking is refused inside the task."""
    guest, disk, size = _guest(call), call.text("disk"), call.text("size")

    def begin(task: Task) -> None:
        _locked_in_task(guest)
        if disk not in guest.config:
            raise TaskError(f"disk '{disk}' does not exist")
        found = re.fullmatch(r"(\+)?(\d+(?:\.\d+)?)([KMGT])?", size)
        if not found:
            raise TaskError("internal error")
        scale = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[found.group(3)]
        current = disk_size(guest.config[disk])
        new = int(float(found.group(2)) * scale) + (current if found.group(1) else 0)
        if new < current:
            raise TaskError("shrinking disks is not supported")
        task.say(f"update VM {guest.vmid}: resize --disk {disk} --size {size}")
        guest.config[disk] = with_size(guest.config[disk], new)
        _resize_volume(call.cluster, guest, guest.config[disk], new)

    return call.tasks.start(guest.node, "resize", guest.vmid, call.caller.userid, begin=begin)


def _resize_volume(cluster: Cluster, guest: Guest, drive: str, size: int) -> None:
    volid = drive.split(",")[0]
    volume = cluster.volumes.get((guest.node, volid))
    if volume is not None:
        volume.size = size


# --- clone ----------------------------------------------------------------------


@api("POST", "/nodes/{node}/qemu/{vmid}/clone")
def clone(call: Call) -> str:
    source, cluster = _guest(call), call.cluster
    newid, target = int(call.params["newid"]), call.params.get("target") or source.node
    full = call.flag("full", not source.template)
    _check_clone(call, source, newid, target, full)
    storage = call.params.get("storage")

    def begin(task: Task) -> None:
        task.say(f"create {'full' if full else 'linked'} clone of drive scsi0")
        cluster.guests[newid] = Guest(newid, target, {"lock": "clone"})

    def finish(task: Task) -> None:
        cfg = {k: v for k, v in source.config.items() if k not in ("template", "lock", "meta")}
        for key, drive in source.disks().items():
            cfg[key] = _clone_disk(cluster, source, newid, target, key, drive, full, storage)
        for key in [k for k in cfg if k.startswith("net")]:
            cfg[key] = re.sub(r"=([0-9A-F]{2}:){5}[0-9A-F]{2}", f"={new_mac(cluster.rng)}",
                              cfg[key], count=1)
        cfg["name"] = call.text("name", f"Copy-of-VM-{cfg.get('name', source.vmid)}")
        if call.params.get("description") is not None:
            cfg["description"] = call.text("description")
        cluster.guests[newid].config = cfg

    return call.tasks.start(source.node, "qmclone", source.vmid, call.caller.userid, begin,
                            finish)


def _check_clone(call: Call, source: Guest, newid: int, target: str, full: bool) -> None:
    """``load_and_check`` in ``clone_vm``: all before the worker forks, so HTTP 500s."""
    cluster, storage = call.cluster, call.params.get("storage")
    if call.params.get("target"):
        cluster.node(target)
    if storage is not None:
        store = cluster.storage(source.node, storage)
        if "images" not in store.content:
            raise param_error({"storage": f"storage '{storage}' does not support vm images"})
        if target != source.node and not store.shared:
            raise fail(f"can't clone to non-shared storage '{storage}'")
    source.check_lock()
    snapname = call.params.get("snapname")
    if snapname and snapname not in source.snapshots:
        raise fail(f"snapshot '{snapname}' does not exist")
    if storage is not None and not full:
        raise fail("parameter 'storage' not allowed for linked clones")
    if call.params.get("format") is not None and not full:
        raise fail("parameter 'format' not allowed for linked clones")
    if not full and not source.template:
        raise fail("Linked clone feature is not supported for drive 'scsi0'")
    if target != source.node and not _on_shared_storage(cluster, source):
        raise fail(f"can't clone VM to node '{target}' (VM uses local storage)")
    if newid in cluster.guests:
        raise fail(f"unable to create VM {newid}: config file already exists")


def _on_shared_storage(cluster: Cluster, guest: Guest) -> bool:
    """``check_storage_access_clone``: every disk on a storage all nodes share."""
    stores = [cluster.storages.get(drive.split(":")[0]) for drive in guest.disks().values()]
    return all(store is not None and store.shared for store in stores)


def _clone_disk(cluster: Cluster, source: Guest, newid: int, node: str, key: str,
                drive: str, full: bool, storage: str | None) -> str:
    volid, size = drive.split(",")[0], disk_size(drive)
    store = storage or volid.split(":")[0]
    index = sum(1 for (_, v) in cluster.volumes if v.startswith(f"{store}:vm-{newid}-"))
    name = f"vm-{newid}-disk-{index}"
    new = f"{store}:{name}" if full else f"{volid}/{name}"
    cluster.add_volume(Volume(new, node, "images", size, cluster.now(), newid,
                              parent=None if full else volid.split(":", 1)[1]))
    options = [p for p in drive.split(",")[1:]]
    return ",".join([new, *options])


# --- create / restore / destroy ---------------------------------------------------


@api("POST", "/nodes/{node}/qemu")
def create(call: Call) -> str:
    """Create, or restore from ``archive``; the new guest holds lock ``create`` meanwhile."""
    cluster, node, vmid = call.cluster, call.text("node"), int(call.params["vmid"])
    cluster.node(node)
    archive = call.params.get("archive")
    existing = cluster.guests.get(vmid)
    if existing is not None and not (archive and call.flag("force")):
        what = "restore" if archive else "create"
        raise fail(f"unable to {what} VM {vmid} - VM {vmid} already exists on node "
                   f"'{existing.node}'")
    backup = _archive(cluster, node, archive) if archive else None
    if existing is not None:
        _check_overwrite(existing)

    def begin(task: Task) -> None:
        cluster.guests[vmid] = Guest(vmid, node, {"lock": "create"})

    def finish(task: Task) -> None:
        if existing is not None:  # restore_vma_archive: "destroy existing data"
            task.say(f"destroy existing data of VM {vmid}")
            _drop_disks(cluster, vmid)
        cfg = dict(backup.config or {}) if backup else {}
        cfg.update({k: _text(v) for k, v in call.params.items() if k not in META})
        guest = Guest(vmid, node, cfg)
        for key, drive in guest.disks().items():
            store = call.params.get("storage") or drive.split(":")[0]
            cfg[key] = _clone_disk(cluster, guest, vmid, node, key, drive, True, store)
        if backup and call.flag("unique"):
            for key in [k for k in cfg if k.startswith("net")]:
                cfg[key] = re.sub(r"=([0-9A-F]{2}:){5}[0-9A-F]{2}",
                                  f"={new_mac(cluster.rng)}", cfg[key], count=1)
        if backup:
            task.say(f"restore vma archive: {backup.volid}")
        cluster.guests[vmid] = guest
        if call.flag("start"):
            _power_on(cluster, guest)

    return call.tasks.start(node, "qmrestore" if archive else "qmcreate", vmid,
                            call.caller.userid, begin, finish)


def _check_overwrite(existing: Guest) -> None:
    """``create_vm``'s ``restorefn`` over an existing VM (``force``): before the worker forks."""
    emsg = f"unable to restore VM {existing.vmid} -"
    if existing.config.get("protection") == "1":
        raise fail(f"{emsg} protection mode enabled")
    if existing.status == "running":
        raise fail(f"{emsg} vm is running")
    existing.check_lock()


def _drop_disks(cluster: Cluster, vmid: int) -> None:
    for (node, volid), volume in list(cluster.volumes.items()):
        if volume.content == "images" and volume.vmid == vmid:
            del cluster.volumes[(node, volid)]


def _archive(cluster: Cluster, node: str, volid: str) -> Volume:
    volume = cluster.volumes.get((node, volid))
    if volume is None or volume.content != "backup":
        raise fail(f"volume '{volid}' does not exist")
    return volume


@api("DELETE", "/nodes/{node}/qemu/{vmid}")
def destroy(call: Call) -> str:
    guest, cluster = _guest(call), call.cluster
    if guest.config.get("protection") == "1":
        raise fail(f"can't remove VM {guest.vmid} - protection mode enabled")
    if guest.status == "running":
        raise fail(f"VM {guest.vmid} is running - destroy failed")

    def begin(task: Task) -> None:
        _locked_in_task(guest)
        guest.config["lock"] = "destroyed"

    def finish(task: Task) -> None:
        _drop_disks(cluster, guest.vmid)
        if call.flag("purge"):
            task.say(f"purging VM {guest.vmid} from related configurations..")
        cluster.guests.pop(guest.vmid, None)

    return call.tasks.start(guest.node, "qmdestroy", guest.vmid, call.caller.userid,
                            begin, finish)


# --- power ------------------------------------------------------------------------


@api("GET", "/nodes/{node}/qemu/{vmid}/status/current")
def current(call: Call) -> dict[str, Any]:
    guest = _guest(call)
    entry = guest_resource(guest, call.cluster)
    entry.update({"qmpstatus": guest.qmpstatus, "cpus": vcpus(guest), "ha": {"managed": 0},
                  "agent": int(guest.config.get("agent", "0")[:1] or 0)})
    if guest.status == "running":
        entry["pid"] = 10000 + guest.vmid
    for key in ("id", "type", "node", "template"):
        entry.pop(key, None)
    if guest.template:
        entry["template"] = 1
    return entry


def _power_on(cluster: Cluster, guest: Guest) -> None:
    guest.status, guest.qmpstatus, guest.started = "running", "running", cluster.clock.now()


def _power_off(guest: Guest) -> None:
    guest.status = guest.qmpstatus = "stopped"


def _power_task(call: Call, kind: str, begin: Any, finish: Any) -> str:
    guest = _guest(call)
    return call.tasks.start(guest.node, kind, guest.vmid, call.caller.userid,
                            lambda t: begin(guest, t), lambda t: finish(guest, t))


@api("POST", "/nodes/{node}/qemu/{vmid}/status/start")
def start(call: Call) -> str:
    """``vm_start`` checks inside the worker: template, lock, already running."""

    def begin(guest: Guest, task: Task) -> None:
        if guest.template:
            raise TaskError("you can't start a vm if it's a template")
        if guest.lock != "suspended":
            _locked_in_task(guest)
        if guest.status == "running":
            raise TaskError(f"VM {guest.vmid} already running")

    def finish(guest: Guest, task: Task) -> None:
        guest.config.pop("lock", None) if guest.lock == "suspended" else None
        _power_on(call.cluster, guest)

    return _power_task(call, "qmstart", begin, finish)


@api("POST", "/nodes/{node}/qemu/{vmid}/status/stop")
def stop(call: Call) -> str:
    def begin(guest: Guest, task: Task) -> None:
        if not call.flag("skiplock"):
            _locked_in_task(guest)

    return _power_task(call, "qmstop", begin, lambda g, t: _power_off(g))


@api("POST", "/nodes/{node}/qemu/{vmid}/status/shutdown")
def shutdown(call: Call) -> str:
    guest = _guest(call)
    if guest.qmpstatus == "paused" and not call.flag("forceStop"):
        raise fail("VM is paused - cannot shutdown")

    def begin(guest: Guest, task: Task) -> None:
        _locked_in_task(guest)

    return _power_task(call, "qmshutdown", begin, lambda g, t: _power_off(g))


def _require_running(call: Call) -> Guest:
    guest = _guest(call)
    if guest.status != "running":
        raise fail(f"VM {guest.vmid} not running")
    return guest


@api("POST", "/nodes/{node}/qemu/{vmid}/status/reboot")
def reboot(call: Call) -> str:
    _require_running(call)
    return _power_task(call, "qmreboot", lambda g, t: _locked_in_task(g),
                       lambda g, t: _power_on(call.cluster, g))


@api("POST", "/nodes/{node}/qemu/{vmid}/status/suspend")
def suspend(call: Call) -> str:
    _require_running(call)
    todisk = call.flag("todisk")

    def finish(guest: Guest, task: Task) -> None:
        if todisk:
            _power_off(guest)
            guest.config["lock"] = "suspended"
        else:
            guest.qmpstatus = "paused"

    return _power_task(call, "qmsuspend" if todisk else "qmpause",
                       lambda g, t: None if call.flag("skiplock") else _locked_in_task(g), finish)


@api("POST", "/nodes/{node}/qemu/{vmid}/status/resume")
def resume(call: Call) -> str:
    guest = _guest(call)
    if guest.lock != "suspended" and guest.status != "running":
        raise fail(f"VM {guest.vmid} not running")

    def finish(guest: Guest, task: Task) -> None:
        if guest.lock == "suspended":
            guest.config.pop("lock")
            _power_on(call.cluster, guest)
        guest.qmpstatus = "running"

    return _power_task(call, "qmresume", lambda g, t: None, finish)


# --- snapshots ------------------------------------------------------------------


@api("GET", "/nodes/{node}/qemu/{vmid}/snapshot")
def snapshots(call: Call) -> list[dict[str, Any]]:
    guest = _guest(call)
    out: list[dict[str, Any]] = []
    for snap in guest.snapshots.values():
        item: dict[str, Any] = {"name": snap.name, "snaptime": snap.snaptime,
                                "description": snap.description, "vmstate": int(snap.vmstate)}
        if snap.parent:
            item["parent"] = snap.parent
        out.append(item)
    here: dict[str, Any] = {"name": "current", "description": "You are here!",
                            "running": int(guest.status == "running"), "digest": guest.digest()}
    if guest.config.get("parent"):
        here["parent"] = guest.config["parent"]
    return [*out, here]


@api("POST", "/nodes/{node}/qemu/{vmid}/snapshot")
def take_snapshot(call: Call) -> str:
    guest, name = _guest(call), call.text("snapname")
    if name == "current":
        raise param_error({"snapname": "invalid snapshot name 'current'"})
    if name in guest.snapshots:
        raise fail(f"snapshot name '{name}' already used")

    def begin(task: Task) -> None:
        _locked_in_task(guest)
        guest.config["lock"] = "snapshot"

    def finish(task: Task) -> None:
        guest.config.pop("lock", None)
        saved = {k: v for k, v in guest.config.items() if k != "parent"}
        guest.snapshots[name] = Snapshot(name, call.cluster.now(), call.text("description"),
                                         guest.config.get("parent"), saved,
                                         call.flag("vmstate"))
        guest.config["parent"] = name

    return call.tasks.start(guest.node, "qmsnapshot", guest.vmid, call.caller.userid,
                            begin, finish)


def _snapshot(guest: Guest, name: str) -> Snapshot:
    snap = guest.snapshots.get(name)
    if snap is None:
        raise fail(f"snapshot '{name}' does not exist")
    return snap


@api("DELETE", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}")
def delete_snapshot(call: Call) -> str:
    guest = _guest(call)
    snap = _snapshot(guest, call.text("snapname"))

    def begin(task: Task) -> None:
        if not call.flag("force"):
            _locked_in_task(guest)
        guest.config["lock"] = "snapshot-delete"

    def finish(task: Task) -> None:
        guest.config.pop("lock", None)
        guest.snapshots.pop(snap.name, None)
        for other in guest.snapshots.values():
            other.parent = snap.parent if other.parent == snap.name else other.parent
        if guest.config.get("parent") == snap.name:
            _set_parent(guest, snap.parent)

    return call.tasks.start(guest.node, "qmdelsnapshot", guest.vmid, call.caller.userid,
                            begin, finish)


def _set_parent(guest: Guest, parent: str | None) -> None:
    if parent:
        guest.config["parent"] = parent
    else:
        guest.config.pop("parent", None)


@api("POST", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback")
def rollback(call: Call) -> str:
    guest = _guest(call)
    snap = _snapshot(guest, call.text("snapname"))

    def begin(task: Task) -> None:
        _locked_in_task(guest)
        guest.config["lock"] = "rollback"
        if not snap.vmstate:
            _power_off(guest)

    def finish(task: Task) -> None:
        guest.config = {**snap.config, "parent": snap.name}
        if call.flag("start"):
            _power_on(call.cluster, guest)

    return call.tasks.start(guest.node, "qmrollback", guest.vmid, call.caller.userid,
                            begin, finish)
