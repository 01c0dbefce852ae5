"""The inventory: sites' hosts and IP pools, in Ansible's YAML inventory format.

Hosts sit in groups under ``all.children`` with their variables (which
compute driver, its URI, which IP pool, how many steps at once); pools are
``all.vars.pools``. The same file can be handed to ansible-playbook.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.yamlerrors import load_yaml_model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pool(Strict):
    cidr: str
    gateway: str | None = None
    reserved: list[str] = []

    @model_validator(mode="after")
    def _valid_network(self) -> Pool:
        network = ipaddress.ip_network(self.cidr, strict=True)
        for address in [*self.reserved, *([self.gateway] if self.gateway else [])]:
            if ipaddress.ip_address(address) not in network:
                raise ValueError(f"{address} is not in {self.cidr}")
        return self

    def addresses(self) -> list[str]:
        network = ipaddress.ip_network(self.cidr)
        skip = {*self.reserved, *([self.gateway] if self.gateway else [])}
        hosts = network.hosts() if network.num_addresses > 2 else iter(network)
        return [str(a) for a in hosts if str(a) not in skip]


class HostVars(Strict):
    driver: str = "libvirt"
    uri: str = "test:///default"
    pool: str
    max_concurrent: int = Field(2, ge=1, le=64)
    stands_in_for: list[str] = Field(
        [], description="product kinds this host serves until their own drivers exist"
    )
    options: dict[str, Any] = Field({}, description="passed to the driver as it is")


class Group(Strict):
    hosts: dict[str, HostVars] = {}
    children: dict[str, Group] = {}
    vars: dict[str, Any] = {}


class AllVars(Strict):
    pools: dict[str, Pool] = Field(min_length=1)


class AllGroup(Strict):
    vars: AllVars
    children: dict[str, Group] = {}


class Inventory(Strict):
    all: AllGroup

    @model_validator(mode="after")
    def _pools_known(self) -> Inventory:
        for name, host in self.hosts().items():
            if host.pool not in self.all.vars.pools:
                known = ", ".join(sorted(self.all.vars.pools))
                raise ValueError(f"host {name} names unknown pool {host.pool!r} (known: {known})")
        return self

    def hosts(self) -> dict[str, HostVars]:
        found: dict[str, HostVars] = {}
        stack = list(self.all.children.values())
        while stack:
            group = stack.pop()
            found.update(group.hosts)
            stack.extend(group.children.values())
        return found

    @property
    def pools(self) -> dict[str, Pool]:
        return self.all.vars.pools


def load_inventory(path: Path) -> Inventory:
    return load_yaml_model(path, Inventory)
