"""The wiring: inventory entries become drivers, their secret references resolved to values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers import base
from drivers.base import (
    Capability,
    NetworkDriver,
    Outcome,
    PermanentError,
    PortState,
    Secret,
    load_compute,
)
from drivers.libvirt import LibvirtCompute
from orchestrator.core.inventory import HostVars, Router
from orchestrator.engine import wiring
from orchestrator.secrets.credentials import CredentialError
from orchestrator.secrets.redact import redact_text

TOKEN = "wiring-test-token-8c1d0e"


class KeyedNetwork(NetworkDriver):
    """A network driver that only keeps what it was handed."""

    secret_options = frozenset({"token"})

    def __init__(self, *, name: str, token: Secret, region: str = "") -> None:
        self.name, self.token, self.region = name, token, region

    def port_state(self, router: str, port: str) -> PortState:
        return PortState(up=True)

    def set_port(self, router: str, port: str, up: bool, description: str | None = None) -> Any:
        raise NotImplementedError

    def route(self, router: str, port: str, addresses: tuple[str, ...]) -> Outcome:
        raise NotImplementedError


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base.NETWORK_DRIVERS, "keyed", f"{__name__}:KeyedNetwork")


def test_a_secret_option_reaches_the_driver_as_a_value(
    keyed: None, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    router = Router(driver="keyed", options={"token": f"file:{tmp_path}/token", "region": "jkt"})
    driver = wiring.network_driver("rtr-1", router)
    assert isinstance(driver, KeyedNetwork) and driver.name == "rtr-1" and driver.region == "jkt"
    assert isinstance(driver.token, Secret) and driver.token.reveal() == TOKEN
    assert TOKEN not in f"{driver.token} {driver.token!r}"
    assert redact_text(f"echoed {TOKEN}") == "echoed ***"  # registered as it was resolved


def test_a_reference_that_does_not_resolve_names_the_router_and_option(keyed: None) -> None:
    router = Router(driver="keyed", options={"token": "env:WIRING_TEST_UNSET"})
    with pytest.raises(CredentialError, match="rtr-2 token: environment variable"):
        wiring.network_driver("rtr-2", router)


def test_a_driver_is_never_handed_an_unresolved_reference() -> None:
    with pytest.raises(PermanentError, match="token_secret must be handed in as a resolved"):
        load_compute("proxmox", uri="https://pve:8006", template="t", token_secret="env:X")


def test_a_host_without_secrets_is_built_as_the_inventory_says() -> None:
    host = HostVars(driver="libvirt", uri="test:///default", pool="lab-v4")
    driver = wiring.compute_driver("kvm-1", host)
    assert isinstance(driver, LibvirtCompute) and driver.uri == "test:///default"


def test_erase_records_are_signed_only_where_a_driver_yields_them() -> None:
    """No key is even looked up for a driver whose purge yields no erase records."""
    plain = LibvirtCompute("test:///default")
    assert Capability.ERASE_RECORDS not in plain.capabilities
    assert wiring.signer(plain, "env:WIRING_TEST_UNSET") is None
