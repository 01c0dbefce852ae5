"""Where the inventory becomes drivers: the one place their secrets are resolved.

Drivers import nothing of the orchestrator. A driver class names the options
whose inventory value is a secret reference (``secret_options``: a BMC
password, an SSH key, an API token); they are resolved here, by
``orchestrator.secrets.credentials`` (``env:``, ``file:``, ``!vault``), into
``Secret`` values, which registers them with the redactor on the way, and
handed to the driver as values. What drivers raise is redacted where it is
stored or shown (the journal, the audit trail, the executor's log, the faces).

``Wiring`` keeps one driver per host and one per router, made when first
needed: a router's driver serialises the changes to its ports, so two
executor threads must share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from drivers.base import (
    Capability,
    ComputeDriver,
    NetworkDriver,
    Uplink,
    compute_class,
    load_compute,
    load_network,
    network_class,
)
from orchestrator.core.inventory import HostVars, Inventory, Router
from orchestrator.secrets.credentials import resolve
from orchestrator.secrets.evidence import Signer

# The compute driver of one host of the inventory, by its name and variables.
DriverFactory = Callable[[str, HostVars], ComputeDriver]
# The network driver of one router of the inventory, by its name and variables.
NetworkFactory = Callable[[str, Router], NetworkDriver]


def compute_driver(name: str, host: HostVars, uplink: Uplink | None = None) -> ComputeDriver:
    """Host ``name``'s compute driver as the inventory describes it, its secrets resolved."""
    options = _resolved(compute_class(host.driver).secret_options, name, host.options)
    return load_compute(host.driver, uplink, uri=host.uri, **options)


def network_driver(name: str, router: Router) -> NetworkDriver:
    """Router ``name``'s network driver as the inventory describes it, its secrets resolved."""
    options = _resolved(network_class(router.driver).secret_options, name, router.options)
    return load_network(router.driver, **{"name": name, **options})


def signer(driver: ComputeDriver, key: str | None) -> Signer | None:
    """The signer of a driver's erase records; None when it yields none or no key is set."""
    if Capability.ERASE_RECORDS not in driver.capabilities or key is None:
        return None
    return Signer(resolve(key, what="erase signing key"))


def _resolved(secrets: frozenset[str], owner: str, options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        option: resolve(value, what=f"{owner} {option}") if option in secrets else value
        for option, value in options.items()
    }


class Wiring:
    """The drivers of one inventory's hosts and routers, each made once and kept."""

    def __init__(
        self,
        inventory: Inventory,
        drivers: DriverFactory | None = None,
        networks: NetworkFactory = network_driver,
    ) -> None:
        self.inventory = inventory
        self._driver_factory = drivers or self._compute_driver
        self._network_factory = networks
        self._drivers: dict[str, ComputeDriver] = {}
        self._networks: dict[str, NetworkDriver] = {}
        self._networks_lock = threading.Lock()

    def driver(self, host: str) -> ComputeDriver:
        if host not in self._drivers:
            self._drivers[host] = self._driver_factory(host, self.inventory.hosts()[host])
        return self._drivers[host]

    def uplink(self, host: str) -> Uplink | None:
        """The router port a host hangs off, with that router's driver; None if it names none."""
        found = self.inventory.hosts()[host].uplink
        if found is None:
            return None
        return Uplink(self.network(found.router), found.router, found.port)

    def network(self, router: str) -> NetworkDriver:
        """One driver per router, made when first needed and kept (it serialises its changes)."""
        with self._networks_lock:  # executor threads: two drivers would not share one lock
            if router not in self._networks:
                vars_ = self.inventory.routers[router]
                self._networks[router] = self._network_factory(router, vars_)
            return self._networks[router]

    def _compute_driver(self, name: str, host: HostVars) -> ComputeDriver:
        return compute_driver(name, host, self.uplink(name))


__all__ = [
    "DriverFactory",
    "NetworkFactory",
    "Wiring",
    "compute_driver",
    "network_driver",
    "signer",
]
