"""The emulated cluster: nodes, storages, guests, backup volumes, and the lab clock.

One ``Cluster`` holds everything behind one re-entrant lock; request handlers and task
threads take it for every read-modify-write, so a task finishing never interleaves with
a request half-way. Guest configs are kept as PVE keeps them, strings per key, so what
the API returns is what a ``qm config`` would show.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

GIB = 1024**3
BACKUP_NAME = re.compile(
    r"vzdump-(?P<type>qemu|lxc|openvz)-(?P<vmid>\d+)-"
    r"(?P<stamp>\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2})\.(?P<format>vma(?:\.(?:zst|gz|lzo))?)$"
)


class ApiError(Exception):
    """A refusal as PVE sends it: status, message (the reason phrase), per-parameter errors."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}


def fail(message: str) -> ApiError:
    """A ``die "...\\n"`` inside an API handler: HTTP 500 with the message as reason."""
    return ApiError(500, message)


def param_error(errors: dict[str, str]) -> ApiError:
    """``raise_param_exc``: HTTP 400 "Parameter verification failed." with the errors."""
    return ApiError(400, "Parameter verification failed.", errors)


class Clock:
    """Wall clock with an offset the lab can set; it keeps ticking from the set point."""

    def __init__(self) -> None:
        self._offset = 0.0

    def now(self) -> float:
        return time.time() + self._offset

    def set(self, when: datetime) -> None:
        self._offset = when.timestamp() - time.time()

    def advance(self, seconds: float) -> None:
        self._offset += seconds


@dataclass
class Node:
    name: str
    maxmem: int
    mem: int
    maxcpu: int
    cpu: float
    boot: float = field(default_factory=time.time)


@dataclass
class Storage:
    """A storage as ``storage.cfg`` declares it, on every node.

    A local one (``dir``, ``lvmthin``) is a separate store per node: a volume is seen
    only on the node holding it. A shared one (``rbd``, ``nfs``) is one store that
    every node sees.
    """

    storage: str
    type: str
    content: tuple[str, ...]
    total: int
    prune_backups: str = "keep-all=1"
    shared: bool = False


@dataclass
class Volume:
    """A volume on a storage: a guest disk or a backup archive."""

    volid: str
    node: str
    content: str
    size: int
    ctime: int
    vmid: int | None = None
    format: str = "raw"
    notes: str = ""
    protected: bool = False
    config: dict[str, str] | None = None  # a backup's copy of the guest config
    parent: str | None = None

    @property
    def storage(self) -> str:
        return self.volid.split(":", 1)[0]


@dataclass
class Snapshot:
    name: str
    snaptime: int
    description: str
    parent: str | None
    config: dict[str, str]
    vmstate: bool = False


@dataclass
class IPSet:
    comment: str = ""
    entries: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass
class Guest:
    """A qemu guest; ``status``/``qmpstatus`` are what ``status/current`` reports."""

    vmid: int
    node: str
    config: dict[str, str]
    status: str = "stopped"
    qmpstatus: str = "stopped"
    started: float = 0.0
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    ipsets: dict[str, IPSet] = field(default_factory=dict)
    fw_options: dict[str, str] = field(default_factory=dict)

    @property
    def lock(self) -> str | None:
        return self.config.get("lock")

    @property
    def template(self) -> bool:
        return self.config.get("template") == "1"

    def digest(self) -> str:
        text = "".join(f"{k}: {v}\n" for k, v in sorted(self.config.items()))
        return hashlib.sha1(text.encode()).hexdigest()

    def disks(self) -> dict[str, str]:
        """Disk keys (scsi0, virtio1, ...) to their property strings, cdroms excluded."""
        return {k: v for k, v in self.config.items()
                if re.fullmatch(r"(scsi|virtio|sata|ide|efidisk|tpmstate)\d+", k)
                and "media=cdrom" not in v and v.split(",")[0] != "none"}

    def check_lock(self) -> None:
        """``AbstractConfig::check_lock``: note PVE says "VM is locked", without the id."""
        if self.lock:
            raise fail(f"VM is locked ({self.lock})")


def disk_size(value: str) -> int:
    """Bytes of a drive string's ``size=`` (PVE writes 32G, 512M, ...)."""
    found = re.search(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)", value)
    if not found:
        return 0
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}[found.group(2)]
    return int(float(found.group(1)) * scale)


def format_size(size: int) -> str:
    """``PVE::JSONSchema::format_size``: the largest unit that divides evenly."""
    for unit, scale in (("T", 1024**4), ("G", GIB), ("M", 1024**2), ("K", 1024)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def with_size(value: str, size: int) -> str:
    parts = [p for p in value.split(",") if not p.startswith("size=")]
    return ",".join([*parts, f"size={format_size(size)}"])


def new_mac(rng: random.Random) -> str:
    """A MAC in Proxmox's BC:24:11 prefix, as PVE generates for new NICs."""
    return "BC:24:11:" + ":".join(f"{rng.randrange(256):02X}" for _ in range(3))


class Cluster:
    """All state of the emulated cluster; hold ``lock`` while reading or changing it."""

    def __init__(self, clock: Clock, seed: int = 1) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.rng = random.Random(seed)
        self.name = "lab"
        self.nodes: dict[str, Node] = {}
        self.storages: dict[str, Storage] = {}
        self.guests: dict[int, Guest] = {}
        self.volumes: dict[tuple[str, str], Volume] = {}  # (node, volid)
        self.fw_options: dict[str, str] = {}  # /cluster/firewall/options (cluster.fw)
        self.nextid_races = 0  # the lab's knob: proposals another client takes at once

    def node(self, name: str) -> Node:
        found = self.nodes.get(name)
        if found is None:
            raise fail(f"hostname lookup '{name}' failed - failed to get address info for: "
                       f"{name}: Name or service not known")
        return found

    def guest(self, node: str, vmid: int | str) -> Guest:
        """``load_config`` on ``node``: a guest elsewhere is as missing as no guest."""
        self.node(node)
        found = self.guests.get(int(vmid))
        if found is None or found.node != node:
            raise fail(f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not "
                       "exist")
        return found

    def storage(self, node: str, storage: str) -> Storage:
        self.node(node)
        found = self.storages.get(storage)
        if found is None:
            raise fail(f"storage '{storage}' does not exist")
        return found

    def node_volumes(self, node: str, storage: str) -> list[Volume]:
        """What ``node`` sees on ``storage``: its own volumes, or all of a shared storage."""
        shared = storage in self.storages and self.storages[storage].shared
        return [v for (n, _), v in sorted(self.volumes.items())
                if (n == node or shared) and v.storage == storage]

    def add_volume(self, volume: Volume) -> None:
        self.volumes[(volume.node, volume.volid)] = volume

    def now(self) -> int:
        return int(self.clock.now())

    def stamp(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)


def lab_cluster(clock: Clock) -> Cluster:
    """Three nodes with different headroom, local storages and one shared (Ceph RBD).

    Two templates: ``debian-12-tmpl`` on pve1's local-lvm, ``debian-12-shared`` on
    pve3 with its disk on the shared storage. Neither has ``firewall=1`` on its
    NIC (PVE adds it only when asked). The datacenter firewall is on, as a provider
    that filters guests' addresses runs it; PVE's own default is off.
    """
    cluster = Cluster(clock)
    for name, maxmem, used, cpus, load in (
        ("pve1", 64 * GIB, 20 * GIB, 16, 0.12),
        ("pve2", 128 * GIB, 96 * GIB, 32, 0.55),
        ("pve3", 32 * GIB, 8 * GIB, 8, 0.05),
    ):
        cluster.nodes[name] = Node(name, maxmem, used, cpus, load)
    cluster.storages["local"] = Storage("local", "dir", ("backup", "iso", "vztmpl"),
                                        500 * GIB)
    cluster.storages["local-lvm"] = Storage("local-lvm", "lvmthin", ("images", "rootdir"),
                                            1000 * GIB)
    cluster.storages["ceph-vm"] = Storage("ceph-vm", "rbd", ("images", "rootdir"),
                                          4000 * GIB, shared=True)
    cluster.fw_options["enable"] = "1"
    _template(cluster, 9000, "pve1", "debian-12-tmpl", "local-lvm")
    _template(cluster, 9001, "pve3", "debian-12-shared", "ceph-vm")
    return cluster


def _template(cluster: Cluster, vmid: int, node: str, name: str, storage: str) -> None:
    disk = f"{storage}:base-{vmid}-disk-0"
    cluster.guests[vmid] = Guest(vmid, node, {
        "name": name, "template": "1", "cores": "1", "sockets": "1",
        "memory": "1024", "ostype": "l26", "scsihw": "virtio-scsi-single",
        "scsi0": f"{disk},iothread=1,size=2G", "boot": "order=scsi0",
        "net0": f"virtio={new_mac(cluster.rng)},bridge=vmbr0",
        "agent": "1", "serial0": "socket", "vga": "serial0",
        "meta": "creation-qemu=9.2.0,ctime=1763800000", "vmgenid": "1",
    })
    cluster.add_volume(Volume(disk, node, "images", 2 * GIB, cluster.now(), vmid))
