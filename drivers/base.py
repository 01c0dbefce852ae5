"""The drivers' contract: small interfaces, declared capabilities, one error tree.

The core talks to infrastructure only through these interfaces, in the
spirit of Ironic's ``drivers/base.py``: one interface per capability
(compute, power, network, runner), each small, each driver saying what it
can do. The core never imports a protocol library; drivers import theirs.

Every operation is level-triggered: it reads the real state first, does
nothing when the state already holds, and returns an ``Outcome`` saying what
it found and whether it changed anything.

Errors crossing this boundary, and nothing else::

    DriverError
    ├── TemporaryError   retry later (``delay`` seconds): a dropped
    │                    connection, a busy host, a held lock
    ├── PermanentError   retrying will not help: bad spec, missing image
    └── Unsupported      the driver lacks an optional capability
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class DriverError(Exception):
    """Raised by drivers for any failure of the infrastructure they adapt."""


class TemporaryError(DriverError):
    def __init__(self, message: str, delay: float = 30.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(DriverError):
    pass


class Unsupported(DriverError):
    pass


class Secret:
    """A secret handed to a driver as a value: a password, a private key, an API token.

    Whoever loads a driver resolves the inventory's reference and hands this
    in; only ``reveal()`` gives the value, at the point of use, and ``str``
    and ``repr`` are masked, so a secret formatted into a message by mistake
    shows ``***``. ``source`` says where it came from, never what it is.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "secret") -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.source)


class Capability(StrEnum):
    CREATE = "create"
    SUSPEND_PAUSE = "suspend:pause"
    SUSPEND_SHUTDOWN = "suspend:shutdown"
    SUSPEND_CUT_NETWORK = "suspend:cut_network"
    SUSPEND_POWER_OFF = "suspend:power_off"
    SUSPEND_PORT_DOWN = "suspend:port_down"
    ARCHIVE = "archive"
    RESTORE = "restore"
    PURGE = "purge"
    SNAPSHOT = "snapshot"
    RESIZE = "resize"
    BIND_ADDRESSES = "bind_addresses"
    # The purge returns per-device erase records for the core to sign and journal.
    ERASE_RECORDS = "purge:erase_records"
    BACKUP = "backup"
    # Bring a service back from one chosen backup, and boot a copy in a scratch machine.
    RESTORE_BACKUP = "backup:restore"
    VERIFY_BACKUP = "backup:verify"
    # A network driver's: route exactly a set of addresses to a port; set a port up or down.
    ROUTE_ADDRESSES = "network:route"
    SWITCH_PORT = "network:port"


class Power(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    OFF = "off"
    ABSENT = "absent"


@dataclass(frozen=True)
class ServiceRef:
    """Which machine a step is about, in the words of the inventory."""

    service_id: str
    host: str

    @property
    def name(self) -> str:
        return f"svc-{self.service_id}"


@dataclass(frozen=True)
class MachineSpec:
    vcpus: int = 1
    memory_mib: int = 512
    disk_gib: int = 1
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observed:
    """What a driver saw of one service's machine and data."""

    power: Power
    network_cut: bool = False
    archived: bool = False
    data_present: bool = False
    addresses: tuple[str, ...] = ()
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    autostart: bool = False

    def differs_from(self, spec: MachineSpec) -> bool:
        """Whether a package change is still to be applied (unknown sizes never differ)."""
        if not self.vcpus:
            return False
        size = (self.vcpus, self.memory_mib)
        return size != (spec.vcpus, spec.memory_mib) or self.disk_gib < spec.disk_gib


@dataclass(frozen=True)
class BackupCopy:
    """One backup of a service's machine, where the hypervisor keeps it."""

    backup_id: str
    taken_at: datetime
    size: int = 0
    protected: bool = False
    archive: bool = False


@dataclass(frozen=True)
class Outcome:
    changed: bool
    observed: Observed
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


class ComputeDriver(ABC):
    """A hypervisor (or a dedicated box's power) seen as machines with data."""

    capabilities: frozenset[Capability] = frozenset()
    # Options whose inventory value names a secret: the loader resolves them and
    # hands the driver a ``Secret``.
    secret_options: frozenset[str] = frozenset()
    # A machine that is nothing but its uplink's port (a colocated box): the
    # loader hands it the host's ``Uplink``, and the core's routing of the
    # host's addresses to that port is its address binding.
    behind_uplink: bool = False

    def require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise Unsupported(f"{type(self).__name__} cannot {capability}")

    @abstractmethod
    def inspect(self, ref: ServiceRef) -> Observed: ...

    @abstractmethod
    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome: ...

    @abstractmethod
    def suspend(self, ref: ServiceRef, method: str) -> Outcome: ...

    @abstractmethod
    def resume(self, ref: ServiceRef) -> Outcome: ...

    @abstractmethod
    def archive(self, ref: ServiceRef) -> Outcome:
        """Terminate: the machine goes, its data is kept for the retention window."""

    @abstractmethod
    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        """Bring a terminated machine back from its kept data."""

    @abstractmethod
    def purge(self, ref: ServiceRef) -> Outcome:
        """Destroy every copy of the data; the outcome carries the evidence."""

    def bind_addresses(self, ref: ServiceRef, addresses: tuple[str, ...]) -> Outcome:
        raise Unsupported(f"{type(self).__name__} cannot bind addresses")

    def resize(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        """A package change: vCPUs, memory, a larger disk."""
        raise Unsupported(f"{type(self).__name__} cannot resize")

    def snapshot(self, ref: ServiceRef, name: str) -> Outcome:
        raise Unsupported(f"{type(self).__name__} cannot take snapshots")

    def snapshots(self, ref: ServiceRef) -> list[str]:
        raise Unsupported(f"{type(self).__name__} cannot list snapshots")

    def revert(self, ref: ServiceRef, name: str) -> Outcome:
        raise Unsupported(f"{type(self).__name__} cannot revert to a snapshot")

    def delete_snapshot(self, ref: ServiceRef, name: str) -> Outcome:
        raise Unsupported(f"{type(self).__name__} cannot delete snapshots")

    def backup(self, ref: ServiceRef) -> Outcome:
        """Take a backup while the machine keeps running; the outcome names it."""
        raise Unsupported(f"{type(self).__name__} cannot take backups")

    def backups(self, ref: ServiceRef) -> list[BackupCopy]:
        """Every backup of the service, newest first, the archive included."""
        raise Unsupported(f"{type(self).__name__} cannot list backups")

    def delete_backup(self, ref: ServiceRef, backup_id: str) -> Outcome:
        raise Unsupported(f"{type(self).__name__} cannot delete backups")

    def restore_backup(self, ref: ServiceRef, spec: MachineSpec, backup_id: str) -> Outcome:
        """Replace the service's machine and disk by one chosen backup's; the backup stays."""
        raise Unsupported(f"{type(self).__name__} cannot restore a chosen backup")

    def verify_backup(self, ref: ServiceRef, backup_id: str) -> Outcome:
        """Test restore: boot the backup as a scratch machine, see it start, remove the scratch.

        The service's own machine is never touched. The evidence says whether
        it booted (``booted``), whether the backup passed every check
        (``verified``: booted, and its checksum held where one was recorded),
        the scratch machine's name and what was checked. A failed check is an
        outcome, not an error.
        """
        raise Unsupported(f"{type(self).__name__} cannot verify backups by booting them")


class PowerDriver(ABC):
    """Out-of-band power of a dedicated box (IPMI)."""

    capabilities: frozenset[Capability] = frozenset()

    @abstractmethod
    def power_state(self, host: str) -> Power: ...

    @abstractmethod
    def set_power(self, host: str, power: Power) -> Outcome: ...


@dataclass(frozen=True)
class PortState:
    """One port of a router or switch as the device reports it.

    ``up`` is the administrative state; ``addresses`` what the port's filter
    lets through, ``routes`` the host routes that point at it (a port that
    is down has none: they come back from ``addresses`` when it opens).
    """

    up: bool
    description: str = ""
    addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()

    def carries(self, addresses: tuple[str, ...]) -> bool:
        """Whether exactly these addresses reach the port (routed too, if it is up)."""
        wanted = sorted(addresses)
        routed = wanted if self.up else []
        return sorted(self.addresses) == wanted and sorted(self.routes) == routed


class NetworkDriver(ABC):
    """Switch ports and routes that make an address reach a customer.

    ``router`` is the device's name in the inventory, ``port`` its port.
    Both changes are level-triggered: the device is read first, and the
    outcome says whether anything changed.
    """

    capabilities: frozenset[Capability] = frozenset()
    secret_options: frozenset[str] = frozenset()

    @abstractmethod
    def port_state(self, router: str, port: str) -> PortState: ...

    @abstractmethod
    def set_port(
        self, router: str, port: str, up: bool, description: str | None = None
    ) -> Outcome:
        """Open or shut a port; a description (None: leave it) says why, for whoever looks."""

    @abstractmethod
    def route(self, router: str, port: str, addresses: tuple[str, ...]) -> Outcome:
        """Make exactly ``addresses`` reach ``port``: the missing added, the others removed."""


@dataclass(frozen=True)
class Uplink:
    """Where a host meets the network: a port of a router, and the driver of that router."""

    network: NetworkDriver
    router: str
    port: str


class RunnerDriver(ABC):
    """Runs commands or playbooks on hosts (SSH, Ansible)."""

    @abstractmethod
    def run(self, host: str, task: str, variables: dict[str, Any]) -> Outcome: ...


# Drivers are registered here by name, loaded only when asked for, so the
# core and the tests of the pure core never import a protocol library.
COMPUTE_DRIVERS: dict[str, str] = {
    "libvirt": "drivers.libvirt:LibvirtCompute",
    "ipmi": "drivers.dedicated:DedicatedCompute",
    "proxmox": "drivers.proxmox:ProxmoxCompute",
    "colo": "drivers.colo:ColoCompute",
}


NETWORK_DRIVERS: dict[str, str] = {
    "router": "drivers.router:RouterNetwork",
}


def _driver_class(registry: dict[str, str], name: str, what: str) -> Any:
    try:
        target = registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise PermanentError(f"no {what} driver named {name!r} (known: {known})") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def compute_class(name: str) -> type[ComputeDriver]:
    """The registered compute driver class, to read its declarations before loading it."""
    found: type[ComputeDriver] = _driver_class(COMPUTE_DRIVERS, name, "compute")
    return found


def network_class(name: str) -> type[NetworkDriver]:
    found: type[NetworkDriver] = _driver_class(NETWORK_DRIVERS, name, "network")
    return found


def load_compute(name: str, uplink: Uplink | None = None, **options: Any) -> ComputeDriver:
    """A compute driver; one that is its uplink's port (colocation) also gets the uplink.

    Options named in the class's ``secret_options`` must already be ``Secret`` values.
    """
    driver_class: Any = compute_class(name)
    _check_secrets(driver_class, options)
    if driver_class.behind_uplink:
        if uplink is None:
            raise PermanentError(f"a {name} host needs an uplink (router, port) in the inventory")
        options["uplink"] = uplink
    driver: ComputeDriver = driver_class(**options)
    return driver


def load_network(driver_name: str, **options: Any) -> NetworkDriver:
    driver_class: Any = network_class(driver_name)
    _check_secrets(driver_class, options)
    driver: NetworkDriver = driver_class(**options)
    return driver


def _check_secrets(driver_class: Any, options: dict[str, Any]) -> None:
    """A reference left unresolved is refused: a driver never reads the environment itself."""
    for option in sorted(driver_class.secret_options & set(options)):
        if not isinstance(options[option], Secret):
            raise PermanentError(
                f"{driver_class.__name__}: {option} must be handed in as a resolved Secret"
            )
