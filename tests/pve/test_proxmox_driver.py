"""The Proxmox driver against the lab's Proxmox VE emulator, under the orchestrator's plan/apply.

The emulator (lab/pve) answers and refuses as the official API schema says;
every check here reads its state through proxmoxer directly, never through
the driver under test.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.base import MachineSpec, PermanentError, Power, ServiceRef
from drivers.proxmox import ProxmoxCompute
from drivers.proxmox_api import PveApi, TaskFailed
from lab.pve.harness import PveLab
from lab.pve.schema import SUBSET
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.core.prune import Backup, KeepRules, prune
from orchestrator.engine import Orchestrator
from orchestrator.secrets.credentials import resolve
from orchestrator.state import ipam
from orchestrator.state.db import migrate, open_engine
from tests.conftest import created, events, invoice, paid, wib

HOST = "pve-lab"


def driver_options(pve: PveLab, secret_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "user": pve.user,
        "token_name": pve.token_name,
        "token_secret": f"file:{secret_file}",
        "verify": str(pve.verify),
        "template": "debian-12-tmpl",
        "poll": 0.05,
        "lock_patience": 30.0,
        **extra,
    }


def proxmox(pve: PveLab, options: dict[str, Any]) -> ProxmoxCompute:
    """Built as the loader builds it: the token's reference resolved to a value first."""
    secret = resolve(options["token_secret"], what="lab token_secret")
    return ProxmoxCompute(f"https://{pve.host}:{pve.port}", **{**options, "token_secret": secret})


@pytest.fixture(scope="module")
def secret_file(pve: PveLab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pve-secret") / "token"
    path.touch(mode=0o600)
    path.write_text(pve.token_secret)
    return path


@pytest.fixture(scope="module")
def pve_inventory(pve: PveLab, secret_file: Path) -> Inventory:
    return Inventory.model_validate(
        {
            "all": {
                "vars": {"pools": {"lab-v4": {"cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}}},
                "children": {
                    "proxmox": {
                        "hosts": {
                            HOST: {
                                "driver": "proxmox",
                                "uri": f"https://{pve.host}:{pve.port}",
                                "pool": "lab-v4",
                                "options": driver_options(pve, secret_file),
                            }
                        }
                    }
                },
            }
        }
    )


@pytest.fixture
def driver(pve: PveLab, secret_file: Path) -> ProxmoxCompute:
    return proxmox(pve, driver_options(pve, secret_file))


def vm_named(pve: PveLab, name: str) -> dict[str, Any] | None:
    found = [vm for vm in pve.client().cluster.resources.get(type="vm") if vm.get("name") == name]
    assert len(found) <= 1
    return found[0] if found else None


def vm_state(pve: PveLab, service: str) -> str:
    vm = vm_named(pve, f"svc-{service}")
    if vm is None:
        return "absent"
    status = pve.client().nodes(vm["node"]).qemu(vm["vmid"]).status.current.get()
    return "paused" if status.get("qmpstatus") == "paused" else str(status["status"])


def ipset(pve: PveLab, service: str) -> list[str]:
    vm = vm_named(pve, f"svc-{service}")
    assert vm is not None
    firewall = pve.client().nodes(vm["node"]).qemu(vm["vmid"]).firewall
    if "ipfilter-net0" not in {s["name"] for s in firewall.ipset.get()}:
        return []
    return sorted(e["cidr"].split("/")[0] for e in firewall.ipset("ipfilter-net0").get())


def backups_anywhere(pve: PveLab, marker: str) -> list[str]:
    """Every backup on every storage of every node whose notes or name mention ``marker``."""
    client, found = pve.client(), []
    for storage in client.cluster.resources.get(type="storage"):
        content = client.nodes(storage["node"]).storage(storage["storage"]).content.get()
        found += [c["volid"] for c in content if marker in str(c.get("notes", ""))]
    return found


def _template(path: str) -> re.Pattern[str]:
    """A schema path as a pattern; a trailing ``{volume}`` takes the rest, slashes too."""
    pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))
    return re.compile("^" + re.sub(r"\[\^/\]\+$", ".+", pattern) + "$")


SUBSET_ENDPOINTS = [
    (e["method"], _template(e["path"])) for e in json.loads(SUBSET.read_text())["endpoints"]
]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every (method, path) the driver sends while a test runs."""
    seen: list[tuple[str, str]] = []
    original = PveApi.call

    def recording(self: PveApi, method: str, path: str, **kwargs: Any) -> Any:
        seen.append((method, "/" + path.strip("/")))
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(PveApi, "call", recording)
    return seen


def assert_checked_by_the_emulator_tests(calls: list[tuple[str, str]]) -> None:
    """The emulator's schema tests cover every endpoint of the subset; the driver must
    use no other, or what it sends would go unchecked."""
    unknown = sorted({(m, p) for m, p in calls
                      if not any(m == em and rx.match(p) for em, rx in SUBSET_ENDPOINTS)})
    assert calls and unknown == []


def test_a_vps_lives_through_its_ladder_on_proxmox(
    pve: PveLab, pve_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path,
    calls: list[tuple[str, str]],
) -> None:
    sid = f"x{uuid.uuid4().hex[:7]}"
    engine = open_engine(f"sqlite:///{tmp_path / 'pve.db'}")
    migrate(engine)
    orch = Orchestrator(engine, policies, pve_inventory)
    orch.seed_pools()
    orch.ingest(events(created(sid, product="proxmox_vps", host=HOST),
                       invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    with orch.sessions() as session:
        (address,) = ipam.held_by(session, sid)
    assert vm_state(pve, sid) == "running" and ipset(pve, sid) == [address]
    orch.apply(wib(2026, 12, 6, 0, 1))  # Klikserver: suspended (paused) after 5 days
    assert vm_state(pve, sid) == "paused"
    orch.ingest(events(paid(sid, "2026-12-07T10:00:00+07:00")), wib(2026, 12, 7, 10))
    orch.apply(wib(2026, 12, 7, 10, 1))
    assert vm_state(pve, sid) == "running"
    orch.ingest(events(invoice(sid, "2027-01-01", "inv-2", at="2026-12-15T10:00:00+07:00")),
                wib(2026, 12, 15, 10))
    orch.apply(wib(2027, 1, 9, 0, 1))  # more than 7 days: address reclaimed, VM archived
    assert vm_state(pve, sid) == "absent"
    assert len(backups_anywhere(pve, f"svc-{sid}")) == 1
    orch.ingest(events(paid(sid, "2027-01-10T10:00:00+07:00", "inv-2")), wib(2027, 1, 10, 10))
    orch.apply(wib(2027, 1, 10, 10, 1))  # paid within the quarantine: restored, same address
    assert vm_state(pve, sid) == "running" and ipset(pve, sid) == [address]
    orch.ingest(events(invoice(sid, "2027-02-01", "inv-3", at="2027-01-15T10:00:00+07:00")),
                wib(2027, 1, 15, 10))
    orch.apply(wib(2027, 2, 9, 0, 1))
    assert vm_state(pve, sid) == "absent"
    orch.apply(wib(2027, 2, 16, 0, 1))  # purged: no VM, no backup anywhere
    assert vm_state(pve, sid) == "absent" and backups_anywhere(pve, f"svc-{sid}") == []
    assert_checked_by_the_emulator_tests(calls)


def test_a_backup_waits_for_a_held_lock_and_then_succeeds(
    pve: PveLab, driver: ProxmoxCompute
) -> None:
    ref = ServiceRef(f"b{uuid.uuid4().hex[:7]}", HOST)
    driver.create(ref, _small())
    vm = vm_named(pve, ref.name)
    assert vm is not None
    slept: list[float] = []
    driver.api._sleep = lambda seconds: (slept.append(seconds), time.sleep(seconds))[1]
    pve.hold_lock(vm["node"], vm["vmid"], "backup", 2.0)
    outcome = driver.backup(ref)
    assert any(s >= 1.0 for s in slept), "the driver never waited for the lock"
    volid = outcome.evidence["backup"].split("/", 1)[1]
    assert volid in backups_anywhere(pve, ref.name)


def test_a_failed_task_is_reported_with_its_log(pve: PveLab, driver: ProxmoxCompute) -> None:
    ref = ServiceRef(f"f{uuid.uuid4().hex[:7]}", HOST)
    driver.create(ref, _small())
    pve.fail_next("vzdump", "job errors",
                  ["INFO: starting new backup job", "ERROR: no space left on device"])
    with pytest.raises(TaskFailed) as failure:
        driver.backup(ref)
    assert failure.value.exitstatus == "job errors"
    assert "no space left on device" in str(failure.value)
    assert backups_anywhere(pve, ref.name) == []


def test_the_end_of_a_long_task_log_is_read(pve: PveLab, driver: ProxmoxCompute) -> None:
    """A log longer than a page still ends in its TASK ERROR, and that is what is reported."""
    ref = ServiceRef(f"f{uuid.uuid4().hex[:7]}", HOST)
    driver.create(ref, _small())
    progress = [f"INFO: {n}% ({n} MiB of 1.0 GiB)" for n in range(1200)]
    pve.fail_next("vzdump", "job errors", [*progress, "ERROR: no space left on device"])
    with pytest.raises(TaskFailed) as failure:
        driver.backup(ref)
    assert failure.value.log[-2:] == ["ERROR: no space left on device", "TASK ERROR: job errors"]


def test_a_clone_leaves_its_templates_node_only_onto_shared_storage(
    pve: PveLab, secret_file: Path
) -> None:
    """PVE refuses a clone onto another node's non-shared storage: such a driver
    places on the template's node; one whose storage is shared may go anywhere."""
    local = proxmox(pve, driver_options(pve, secret_file, template="debian-12-shared"))
    shared = proxmox(pve, driver_options(
        pve, secret_file, template="debian-12-shared", storage="ceph-vm"))
    placed = {}
    for name, driver_ in (("local", local), ("shared", shared)):
        ref = ServiceRef(f"c{uuid.uuid4().hex[:7]}", HOST)
        driver_.create(ref, _small())
        vm = vm_named(pve, ref.name)
        assert vm is not None
        config = pve.client().nodes(vm["node"]).qemu(vm["vmid"]).config.get()
        placed[name] = (vm["node"], str(config["scsi0"]).split(":")[0])
    assert placed == {"local": ("pve3", "local-lvm"), "shared": ("pve1", "ceph-vm")}


def _datacenter_firewall(pve: PveLab, enable: int) -> None:
    pve.client().cluster.firewall.options.put(enable=enable)


def test_addresses_are_bound_only_where_the_firewall_filters(
    pve: PveLab, driver: ProxmoxCompute
) -> None:
    """net0 gets firewall=1; with the datacenter firewall off, nothing is bound, and a
    binding is refused before it changes anything."""
    ref = ServiceRef(f"b{uuid.uuid4().hex[:7]}", HOST)
    driver.create(ref, MachineSpec(1, 512, 2, addresses=("192.0.2.20",)))
    vm = vm_named(pve, ref.name)
    assert vm is not None
    api = pve.client().nodes(vm["node"]).qemu(vm["vmid"])
    assert "firewall=1" in api.config.get()["net0"].split(",")
    assert driver.inspect(ref).addresses == ("192.0.2.20",)
    _datacenter_firewall(pve, 0)
    try:
        assert driver.inspect(ref).addresses == ()
        before = api.config.get()["digest"], ipset(pve, ref.service_id)
        with pytest.raises(PermanentError, match="datacenter firewall is disabled"):
            driver.bind_addresses(ref, ("192.0.2.21",))
        assert (api.config.get()["digest"], ipset(pve, ref.service_id)) == before
    finally:
        _datacenter_firewall(pve, 1)
    api.config.put(net0=api.config.get()["net0"].replace(",firewall=1", ""))
    assert driver.inspect(ref).addresses == ()
    assert driver.bind_addresses(ref, ("192.0.2.20",)).observed.addresses == ("192.0.2.20",)


def test_proxmox_prune_keeps_what_our_prune_keeps(
    pve: PveLab, driver: ProxmoxCompute, calls: list[tuple[str, str]]
) -> None:
    """The core's port of the keep rules against Proxmox's own prune, asked directly."""
    ref = ServiceRef(f"r{uuid.uuid4().hex[:7]}", HOST)
    driver.create(ref, _small())
    start = datetime(2026, 10, 1, 1, 0, tzinfo=UTC)
    taken = [start + timedelta(hours=h) for h in (0, 5, 24, 30, 49, 24 * 8, 24 * 15, 24 * 40)]
    for at in taken:
        pve.set_clock(at)
        driver.backup(ref)
    before = driver.backups(ref)
    rules = "keep-last=2,keep-daily=2,keep-weekly=2,keep-monthly=1"
    expected = {
        d.backup_id for d in prune(
            [Backup(b.backup_id, b.taken_at, b.protected) for b in before],
            KeepRules.parse(rules),
        ) if d.mark != "remove"
    }
    vm = vm_named(pve, ref.name)
    assert vm is not None
    path, options = f"nodes/{vm['node']}/storage/local/prunebackups", {"prune-backups": rules}
    driver.api.task("prune", lambda: driver.api.delete(path, vmid=vm["vmid"], type="qemu",
                                                       **options))  # waits for the task
    assert {b.backup_id for b in driver.backups(ref)} == expected
    assert len(expected) < len(before)
    assert_checked_by_the_emulator_tests(calls)


def test_a_token_without_power_privileges_is_refused_clearly(
    pve: PveLab, secret_file: Path, tmp_path: Path
) -> None:
    restricted = tmp_path / "restricted"
    restricted.write_text(pve.restricted_token_secret)
    options = driver_options(pve, restricted, token_name=pve.restricted_token_name)
    weak = proxmox(pve, options)
    with pytest.raises(PermanentError, match="Permission check failed"):
        weak.create(ServiceRef(f"d{uuid.uuid4().hex[:7]}", HOST), _small())


def test_snapshots_and_a_package_change(
    pve: PveLab, driver: ProxmoxCompute, calls: list[tuple[str, str]]
) -> None:
    ref = ServiceRef(f"s{uuid.uuid4().hex[:7]}", HOST)
    driver.create(ref, _small())
    assert driver.snapshot(ref, "before-upgrade").changed
    assert not driver.snapshot(ref, "before-upgrade").changed
    assert driver.snapshots(ref) == ["before-upgrade"]
    grown = driver.resize(ref, _small(vcpus=2, memory_mib=1024, disk_gib=4))
    seen = grown.observed
    assert (seen.vcpus, seen.memory_mib, seen.disk_gib) == (2, 1024, 4)
    assert driver.delete_snapshot(ref, "before-upgrade").changed
    assert driver.snapshots(ref) == []
    assert driver.suspend(ref, "shutdown").observed.power == Power.OFF
    assert driver.resume(ref).observed.power == Power.RUNNING
    assert_checked_by_the_emulator_tests(calls)


def _small(vcpus: int = 1, memory_mib: int = 512, disk_gib: int = 2) -> MachineSpec:
    return MachineSpec(vcpus, memory_mib, disk_gib)
