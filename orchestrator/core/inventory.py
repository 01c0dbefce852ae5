"""The inventory: sites' hosts, IP pools and routers, in Ansible's YAML inventory format.

Hosts sit in groups under ``all.children`` with their variables (which
compute driver, its URI, which IP pool, how many steps at once, and its
``uplink``: which router's port it hangs off); pools are
``all.vars.pools``, routers ``all.vars.routers``. The same file can be
handed to ansible-playbook.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import COMPUTE_DRIVERS, NETWORK_DRIVERS
from orchestrator.core.yamlerrors import Located, load_yaml_model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# More addresses than this in one pool need ``range`` or ``size`` to say which
# to seed: an IPv6 /64 cannot be written out address by address.
MAX_SEEDED = 65_536


class Pool(Strict):
    """A block of addresses to hand out, at a site, with its gateway and what is held back.

    ``reserved`` takes single addresses and ranges ("192.0.2.10-192.0.2.20");
    ``range`` ([first, last]) or ``size`` (the first N hosts) limit which
    addresses are seeded, as an IPv6 pool must.
    """

    site: str | None = None
    cidr: str
    gateway: str | None = None
    reserved: list[str] = []
    seeded_range: list[str] | None = Field(
        None, alias="range", min_length=2, max_length=2, description="[first, last] to seed"
    )
    size: int | None = Field(None, ge=1, description="seed only the first N host addresses")

    @model_validator(mode="after")
    def _valid_network(self) -> Pool:
        network = self.network()
        for address in [self.gateway] if self.gateway else []:
            _inside(network, address, "gateway")
        for text in self.reserved:
            _span(network, text, "reserved")
        first, last = self.span()
        if last - first + 1 > MAX_SEEDED:
            raise ValueError(
                f"{self.cidr} has {last - first + 1} addresses; give range: [first, last] "
                f"or size: N to say which to seed (at most {MAX_SEEDED})"
            )
        return self

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(self.cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"cidr {self.cidr}: {exc}") from None

    def span(self) -> tuple[int, int]:
        """The first and last address seeded, as integers."""
        network = self.network()
        if self.seeded_range is not None and self.size is not None:
            raise ValueError("give range or size, not both")
        if self.seeded_range is not None:
            return _span(network, "-".join(self.seeded_range), "range")
        first, last = _hosts(network)
        if self.size is not None:
            if self.size > last - first + 1:
                raise ValueError(f"size {self.size} is more than the {last - first + 1} hosts")
            last = first + self.size - 1
        return first, last

    def addresses(self) -> list[str]:
        """The seeded addresses that may be handed out: neither gateway nor reserved."""
        held_back = set(self.reserved_addresses())
        return [a for a in self._seeded() if a not in held_back]

    def reserved_addresses(self) -> list[str]:
        """The gateway and reserved addresses within the seeded span, never handed out."""
        network = self.network()
        first, last = self.span()
        texts = [*([self.gateway] if self.gateway else []), *self.reserved]
        found: dict[str, None] = {}
        for text in texts:
            low, high = _span(network, text, "reserved")
            for value in range(max(low, first), min(high, last) + 1):
                found[_text(network, value)] = None
        return list(found)

    def _seeded(self) -> list[str]:
        network = self.network()
        first, last = self.span()
        return [_text(network, value) for value in range(first, last + 1)]


def _text(network: ipaddress.IPv4Network | ipaddress.IPv6Network, value: int) -> str:
    """An address's usual spelling; the same as the store's key for it."""
    if network.version == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))


def _hosts(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """The usable hosts: not the network address, nor IPv4's broadcast, on a larger net."""
    low, high = int(network.network_address), int(network.broadcast_address)
    if network.num_addresses <= 2:
        return low, high
    return low + 1, high - (1 if network.version == 4 else 0)


def _inside(network: ipaddress.IPv4Network | ipaddress.IPv6Network, text: str, what: str) -> int:
    try:
        address: Address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IP address") from None
    if address not in network:
        raise ValueError(f"{what} {address} is not in {network}")
    return int(address)


def _span(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, text: str, what: str
) -> tuple[int, int]:
    """One address ("192.0.2.9") or an inclusive range ("192.0.2.10-192.0.2.20") as integers."""
    first_text, _, last_text = text.partition("-")
    first = _inside(network, first_text, what)
    last = _inside(network, last_text, what) if last_text else first
    if last < first:
        raise ValueError(f"{what} range {text} is reversed: its first address is after its last")
    return first, last


# A port is an interface name on the router: at most 15 characters a shell won't read.
PORT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$"
# Compute drivers whose machine is its uplink's port: a host of theirs needs one.
PORT_MACHINES = frozenset({"colo"})


def _registered(name: str, registry: dict[str, str], what: str) -> str:
    """A driver the registry knows, else refused at load: not at the first step on that host."""
    if name not in registry:
        raise ValueError(f"unknown {what} driver {name!r} (known: {', '.join(sorted(registry))})")
    return name


class Router(Strict):
    """A router (or switch) whose ports the orchestrator opens, shuts and routes addresses to."""

    driver: str = "router"
    options: dict[str, Any] = Field({}, description="passed to the network driver as it is")

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, name: str) -> str:
        return _registered(name, NETWORK_DRIVERS, "network")


class Uplink(Strict):
    """Where a host meets the network: ``router`` names one of ``all.vars.routers``."""

    router: str
    port: str = Field(pattern=PORT_NAME, description="the router's interface for this host")


class HostVars(Strict):
    driver: str = "libvirt"
    uri: str = "test:///default"
    pool: str
    max_concurrent: int = Field(2, ge=1, le=64)
    stands_in_for: list[str] = Field(
        [], description="product kinds this host serves until their own drivers exist"
    )
    options: dict[str, Any] = Field({}, description="passed to the driver as it is")
    backup_limit: int = Field(2, ge=1, le=64, description="backups the host runs at once")
    backup_storage: str | None = Field(
        None, description="where its backups land, for the storage's limit (default: the host)"
    )
    backup_minutes: int = Field(
        30, ge=1, description="how long a backup takes until one has been measured"
    )
    uplink: Uplink | None = Field(
        None, description="the router port its addresses are routed to (colocation: its port)"
    )

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, name: str) -> str:
        return _registered(name, COMPUTE_DRIVERS, "compute")


class Group(Strict):
    hosts: dict[str, HostVars] = {}
    children: dict[str, Group] = {}
    vars: dict[str, Any] = {}


class AllVars(Strict):
    pools: dict[str, Pool] = Field(min_length=1)
    storage_limits: dict[str, Annotated[int, Field(ge=1)]] = Field(
        {}, description="backups a storage takes at once, by the hosts' backup_storage"
    )
    routers: dict[str, Router] = {}

    @model_validator(mode="after")
    def _pools_apart(self) -> AllVars:
        """An address in two pools could be handed out twice."""
        named = sorted(self.pools.items())
        for n, (name, pool) in enumerate(named):
            for other, second in named[n + 1 :]:
                if pool.network().overlaps(second.network()):
                    raise ValueError(
                        f"pools {name} ({pool.cidr}) and {other} ({second.cidr}) overlap"
                    )
        return self


class AllGroup(Strict):
    vars: AllVars
    children: dict[str, Group] = {}


class Inventory(Strict):
    all: AllGroup

    @model_validator(mode="after")
    def _hosts_once(self) -> Inventory:
        """A host in two groups would have two sets of variables: which driver, which pool?"""
        seen: dict[str, str] = {}
        for where, name, _ in sorted(self._located_hosts(), key=lambda found: found[0]):
            group = "/".join(part for part in where[2:-2] if part != "children")
            if name in seen:
                raise Located(f"host {name} is listed in {seen[name]} and in {group}", where)
            seen[name] = group
        return self

    @model_validator(mode="after")
    def _pools_known(self) -> Inventory:
        for where, name, host in self._located_hosts():
            if host.pool not in self.all.vars.pools:
                known = ", ".join(sorted(self.all.vars.pools))
                raise Located(
                    f"host {name} names unknown pool {host.pool!r} (known: {known})",
                    (*where, "pool"),
                )
        return self

    @model_validator(mode="after")
    def _uplinks_known(self) -> Inventory:
        """An uplink names a known router, and a port serves one host.

        Two hosts on one port would share its fate: shutting a colocated
        box's port would cut the other off too.
        """
        taken: dict[tuple[str, str], str] = {}
        for where, name, host in self._located_hosts():
            if host.uplink is None:
                if host.driver in PORT_MACHINES:
                    raise Located(f"host {name} (driver {host.driver}) needs an uplink", where)
                continue
            router, port = host.uplink.router, host.uplink.port
            if router not in self.all.vars.routers:
                known = ", ".join(sorted(self.all.vars.routers)) or "none"
                raise Located(
                    f"host {name}'s uplink names unknown router {router!r} (known: {known})",
                    (*where, "uplink", "router"),
                )
            if (router, port) in taken:
                raise Located(
                    f"hosts {taken[router, port]} and {name} both name {router} port {port}: "
                    "a port serves one host",
                    (*where, "uplink", "port"),
                )
            taken[router, port] = name
        return self

    def hosts(self) -> dict[str, HostVars]:
        return {name: host for _, name, host in self._located_hosts()}

    def _located_hosts(self) -> list[tuple[tuple[str, ...], str, HostVars]]:
        """Every host with the path to it in the file, for errors that name its line."""
        found: list[tuple[tuple[str, ...], str, HostVars]] = []
        stack: list[tuple[tuple[str, ...], Group]] = [
            (("all", "children", name), group) for name, group in self.all.children.items()
        ]
        while stack:
            where, group = stack.pop()
            found += [((*where, "hosts", name), name, host) for name, host in group.hosts.items()]
            stack += [((*where, "children", n), g) for n, g in group.children.items()]
        return found

    @property
    def routers(self) -> dict[str, Router]:
        return self.all.vars.routers

    @property
    def pools(self) -> dict[str, Pool]:
        return self.all.vars.pools


def load_inventory(path: Path) -> Inventory:
    return load_yaml_model(path, Inventory)
