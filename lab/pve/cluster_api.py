"""Version, nodes, cluster resources, next free VMID, tasks, and the ticket login."""

from __future__ import annotations

from typing import Any

from lab.pve.registry import Call, api
from lab.pve.state import GIB, Cluster, Guest, param_error
from lab.pve.tasks import TaskError

VERSION = {"version": "9.0.10", "release": "9.0", "repoid": "e5010dcea566a205", "console": "html5"}


@api("GET", "/version")
def version(call: Call) -> dict[str, Any]:
    return dict(VERSION)


@api("POST", "/access/ticket")
def ticket(call: Call) -> dict[str, str]:
    raise AssertionError("answered by the app, which holds the realm")


def _node_entry(cluster: Cluster, name: str) -> dict[str, Any]:
    node = cluster.nodes[name]
    return {"node": name, "status": "online", "cpu": node.cpu, "maxcpu": node.maxcpu,
            "mem": node.mem, "maxmem": node.maxmem, "uptime": int(cluster.clock.now() - node.boot),
            "level": "", "id": f"node/{name}", "type": "node",
            "ssl_fingerprint": "AA:" * 31 + "AA"}


@api("GET", "/nodes")
def nodes(call: Call) -> list[dict[str, Any]]:
    return [_node_entry(call.cluster, n) for n in sorted(call.cluster.nodes)]


@api("GET", "/nodes/{node}/status")
def node_status(call: Call) -> dict[str, Any]:
    node = call.cluster.node(call.text("node"))
    return {
        "cpu": node.cpu, "loadavg": ["0.10", "0.20", "0.30"], "pveversion": "pve-manager/9.0.10",
        "kversion": "Linux 6.14.8-2-pve", "uptime": int(call.cluster.clock.now() - node.boot),
        "idle": 0, "wait": 0.0,
        "cpuinfo": {"cores": node.maxcpu // 2, "cpus": node.maxcpu, "model": "Lab CPU",
                    "sockets": 1, "mhz": "2400.000", "hvm": "1", "flags": "", "user_hz": 100},
        "memory": {"total": node.maxmem, "used": node.mem, "free": node.maxmem - node.mem,
                   "available": node.maxmem - node.mem},
        "swap": {"total": 0, "used": 0, "free": 0},
        "rootfs": {"total": 100 * GIB, "used": 10 * GIB, "free": 90 * GIB, "avail": 90 * GIB},
        "ksm": {"shared": 0},
        "boot-info": {"mode": "efi", "secureboot": False},
        "current-kernel": {"sysname": "Linux", "release": "6.14.8-2-pve",
                           "version": "#1 SMP PREEMPT_DYNAMIC PMX", "machine": "x86_64"},
    }


def guest_resource(guest: Guest, cluster: Cluster) -> dict[str, Any]:
    """A guest as ``/cluster/resources`` and ``/nodes/{node}/qemu`` list it."""
    from lab.pve.qemu import memory_mib, total_disk, vcpus

    running = guest.status == "running"
    entry: dict[str, Any] = {
        "id": f"qemu/{guest.vmid}", "type": "qemu", "vmid": guest.vmid, "node": guest.node,
        "name": guest.config.get("name", f"VM {guest.vmid}"), "status": guest.status,
        "template": int(guest.template), "maxcpu": vcpus(guest), "cpu": 0.01 if running else 0,
        "maxmem": memory_mib(guest) * 1024**2,
        "mem": memory_mib(guest) * 1024**2 // 2 if running else 0,
        "maxdisk": total_disk(guest), "disk": 0,
        "uptime": int(cluster.clock.now() - guest.started) if running else 0,
        "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
    }
    if guest.lock:
        entry["lock"] = guest.lock
    if guest.config.get("tags"):
        entry["tags"] = guest.config["tags"]
    return entry


def _storage_resources(cluster: Cluster) -> list[dict[str, Any]]:
    out = []
    for node in sorted(cluster.nodes):
        for storage in cluster.storages.values():
            used = sum(v.size for v in cluster.node_volumes(node, storage.storage))
            out.append({"id": f"storage/{node}/{storage.storage}", "type": "storage",
                        "node": node, "storage": storage.storage, "status": "available",
                        "plugintype": storage.type, "content": ",".join(storage.content),
                        "shared": int(storage.shared), "maxdisk": storage.total, "disk": used})
    return out


@api("GET", "/cluster/resources")
def resources(call: Call) -> list[dict[str, Any]]:
    kind, cluster = call.params.get("type"), call.cluster
    out: list[dict[str, Any]] = []
    if kind in (None, "node"):
        out += [_node_entry(cluster, n) for n in sorted(cluster.nodes)]
    if kind in (None, "vm"):
        out += [guest_resource(g, cluster) for _, g in sorted(cluster.guests.items())]
    if kind in (None, "storage"):
        out += _storage_resources(cluster)
    return out


@api("GET", "/cluster/nextid")
def nextid(call: Call) -> int:
    """``PVE::API2::Cluster::nextid``: a taken ``vmid`` is a parameter error."""
    wanted = call.params.get("vmid")
    if wanted is not None:
        if int(wanted) in call.cluster.guests:
            raise param_error({"vmid": f"VM {wanted} already exists"})
        return int(wanted)
    vmid = 100
    while vmid in call.cluster.guests:
        vmid += 1
    if call.cluster.nextid_races > 0:  # another client takes the id right after proposing it
        call.cluster.nextid_races -= 1
        call.cluster.guests[vmid] = Guest(vmid, "pve3", {"name": f"racer-{vmid}"})
    return vmid


@api("GET", "/nodes/{node}/tasks")
def task_list(call: Call) -> list[dict[str, Any]]:
    call.cluster.node(call.text("node"))
    tasks = [t for t in call.tasks.by_upid.values() if t.node == call.text("node")]
    source = call.text("source", "archive")
    if source == "active":
        tasks = [t for t in tasks if t.status == "running"]
    elif source == "archive":
        tasks = [t for t in tasks if t.status == "stopped"]
    if call.params.get("vmid") is not None:
        tasks = [t for t in tasks if t.id == str(call.params["vmid"])]
    if call.params.get("typefilter"):
        tasks = [t for t in tasks if t.type == call.params["typefilter"]]
    if call.flag("errors"):
        tasks = [t for t in tasks if t.exitstatus not in (None, "OK")]
    tasks.sort(key=lambda t: t.starttime, reverse=True)
    start, limit = int(call.params.get("start") or 0), int(call.params.get("limit") or 50)
    return [t.as_list_item() for t in tasks[start:start + limit]]


def _task(call: Call) -> Any:
    upid = call.text("upid")
    if len(upid.split(":")) < 9 or not upid.startswith("UPID:"):
        raise param_error({"upid": "unable to parse worker upid"})
    try:
        return call.tasks.get(call.text("node"), upid)
    except TaskError as exc:
        raise param_error({"upid": str(exc)}) from None


@api("GET", "/nodes/{node}/tasks/{upid}/status")
def task_status(call: Call) -> dict[str, Any]:
    return dict(_task(call).as_status())


@api("GET", "/nodes/{node}/tasks/{upid}/log")
def task_log(call: Call) -> list[dict[str, Any]]:
    lines = _task(call).log
    start, limit = int(call.params.get("start") or 0), int(call.params.get("limit") or 50)
    return [{"n": i + 1, "t": line} for i, line in enumerate(lines)][start:start + limit]
