"""KVM/QEMU guests on a real libvirtd, driven by the orchestrator's own plan/apply.

The lab comes up through ``lab/libvirt.sh up`` (idempotent). After each step
the tests look at libvirt's real state with ``virsh``, never through the
driver; guests are real QEMU processes (TCG where KVM cannot boot them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import select

from drivers.base import MachineSpec, Power, ServiceRef, load_compute
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy, load_policy
from orchestrator.engine import Orchestrator
from orchestrator.state import ipam
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import StepRow
from tests.conftest import REPO, created, events, invoice, package_changed, paid, wib
from tests.lab.conftest import LAB_DIR, domain_state, virsh


def link_state(service: str) -> str:
    interface = virsh("domiflist", f"svc-{service}").stdout.split()[0]
    return virsh("domif-getlink", f"svc-{service}", interface).stdout.split()[-1]


def volume_exists(service: str) -> bool:
    virsh("pool-refresh", "orchestrator-lab")
    return f"svc-{service}.qcow2" in virsh("vol-list", "orchestrator-lab").stdout


def wait_for_guest_data(service: str, seconds: float = 120) -> None:
    console = LAB_DIR / "console" / f"svc-{service}.log"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if console.exists() and f"LAB-GUEST-WROTE svc-{service}" in console.read_text(
            errors="replace"
        ):
            return
        time.sleep(0.5)
    raise AssertionError(f"guest svc-{service} never wrote its data")


def _orchestrator(
    tmp_path: Path, policies: dict[str, Policy], inventory: Inventory
) -> Orchestrator:
    engine = open_engine(f"sqlite:///{tmp_path / 'lab.db'}")
    migrate(engine)
    orch = Orchestrator(engine, policies, inventory)
    orch.seed_pools()
    return orch


def _klikserver_suspending_by(method: str, tmp_path: Path) -> dict[str, Policy]:
    text = (REPO / "inventory" / "policies" / "klikserver.yaml").read_text()
    path = tmp_path / "klikserver.yaml"
    path.write_text(text.replace("method: pause", f"method: {method}", 1))
    return {"klikserver": load_policy(path)}


SUSPENDED = {"pause": "paused", "shutdown": "shut off", "cut_network": "running"}


@pytest.mark.parametrize("method", sorted(SUSPENDED))
def test_vps_lives_through_its_ladder_on_a_real_hypervisor(
    lab: str, lab_inventory: Inventory, tmp_path: Path, method: str
) -> None:
    sid = f"l{uuid.uuid4().hex[:7]}"
    orch = _orchestrator(tmp_path, _klikserver_suspending_by(method, tmp_path), lab_inventory)
    orch.ingest(events(created(sid), invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    assert domain_state(sid) == "running"
    wait_for_guest_data(sid)
    orch.apply(wib(2026, 12, 6, 0, 1))
    assert domain_state(sid) == SUSPENDED[method]
    if method == "cut_network":
        assert link_state(sid) == "down"
    orch.ingest(events(paid(sid, "2026-12-07T10:00:00+07:00")), wib(2026, 12, 7, 10))
    orch.apply(wib(2026, 12, 7, 10, 1))
    assert domain_state(sid) == "running" and link_state(sid) == "up"
    orch.ingest(
        events(invoice(sid, "2027-01-01", "inv-2", at="2026-12-15T10:00:00+07:00")),
        wib(2026, 12, 15, 10),
    )
    orch.apply(wib(2027, 1, 6, 0, 1))
    assert domain_state(sid) == SUSPENDED[method]
    orch.apply(wib(2027, 1, 9, 0, 1))
    assert domain_state(sid) == "absent" and volume_exists(sid)
    orch.apply(wib(2027, 1, 16, 0, 1))
    assert not volume_exists(sid)


def test_after_a_purge_the_raw_volume_holds_none_of_the_guests_data(
    lab: str, lab_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path
) -> None:
    sid = f"p{uuid.uuid4().hex[:7]}"
    orch = _orchestrator(tmp_path, policies, lab_inventory)
    orch.ingest(events(created(sid), invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    wait_for_guest_data(sid)
    orch.apply(wib(2026, 12, 9, 0, 1))  # terminated: the archive is kept
    volume = LAB_DIR / "pool" / f"svc-{sid}.qcow2"
    with volume.open("rb") as raw:  # the same bytes on disk, whatever the purge does to the name
        assert f"LABDATA:svc-{sid}".encode() in raw.read()
        assert os.fstat(raw.fileno()).st_blocks > 0
        orch.apply(wib(2026, 12, 16, 0, 1))
        raw.seek(0)
        left = raw.read()
        blocks_left = os.fstat(raw.fileno()).st_blocks
    assert f"LABDATA:svc-{sid}".encode() not in left and not any(left)
    assert not volume.exists()
    with orch.sessions() as session:
        purge = session.scalars(select(StepRow).where(StepRow.kind == "purge")).one()
    record = json.loads(purge.result or "{}")
    # libvirt handed the file's blocks back to the filesystem without writing them:
    # the evidence names that, and the host's inode agrees (no block left allocated).
    assert purge.state == "done" and record["method"] == "deallocate" and blocks_left == 0
    assert record["allocated_before"] > 0 and record["allocated_after"] == 0
    assert record["samples"] == 16 and record["nonzero_samples"] == 0 and record["verified_absent"]


def wait_for_console(service: str, line: str, seconds: float = 180) -> None:
    """The guest's serial console (a file on the host) shows ``line``."""
    console = LAB_DIR / "console" / f"svc-{service}.log"
    deadline = time.monotonic() + seconds
    while not (console.exists() and line in console.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"svc-{service} never printed {line}"
        time.sleep(0.5)


def test_a_shutdown_suspension_is_a_graceful_guest_power_off(
    lab: str, lab_inventory: Inventory
) -> None:
    """ACPI in the domain and a guest that honours its power button: libvirt records
    the guest's own shutdown, not a destroy after the timeout."""
    host = lab_inventory.hosts()["kvm-jkt-1"]
    options = {**host.options, "shutdown_timeout": 300.0}
    driver = load_compute(host.driver, uri=host.uri, **options)
    sid = f"g{uuid.uuid4().hex[:7]}"
    ref = ServiceRef(sid, "kvm-jkt-1")
    driver.create(ref, MachineSpec())
    wait_for_console(sid, "LAB-GUEST-UP")
    outcome = driver.suspend(ref, "shutdown")
    assert outcome.observed.power == Power.OFF
    connection = libvirt.open("qemu:///system")
    try:
        state, reason = connection.lookupByName(f"svc-{sid}").state()
    finally:
        connection.close()
    assert (state, reason) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
    wait_for_console(sid, "LAB-GUEST-POWER-BUTTON", seconds=0)


def _restart_libvirtd() -> None:
    subprocess.run(["pkill", "-9", "-x", "libvirtd"], check=False)
    while subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0:
        time.sleep(0.1)
    subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.monotonic() + 30
    while virsh("version").returncode != 0:
        assert time.monotonic() < deadline, "libvirtd did not come back"
        time.sleep(0.2)


def test_a_batch_survives_libvirtd_being_killed(
    lab: str, lab_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    ids = [f"k{run}{n}" for n in range(4)]
    orch = _orchestrator(tmp_path, policies, lab_inventory)
    orch.ingest(events(*(created(s) for s in ids)), wib(2026, 11, 20))
    batch = threading.Thread(target=orch.apply, args=(wib(2026, 11, 20, 0, 1),))
    batch.start()
    time.sleep(0.3)
    _restart_libvirtd()
    batch.join()
    orch.apply(wib(2026, 11, 20, 0, 30))  # after the retry delay
    assert [domain_state(s) for s in ids] == ["running"] * 4
    with orch.sessions() as session:
        rows = session.execute(select(StepRow.service_id, StepRow.kind, StepRow.state)).all()
    assert not [r for r in rows if r.state in ("pending", "running", "retry", "failed")], rows
    for service in ids:
        done = [kind for s, kind, state in rows if s == service and state == "done"]
        # Each journaled step ran at most once; a create that the crash cut
        # short was superseded by what the real state then called for: a
        # resume (domain defined, not started) or a restore (volume, no domain).
        assert done.count("create") <= 1 and done.count("assign_ips") == 1, (service, rows)
        assert {"create", "resume", "restore"} & set(done), (service, rows)


def test_a_package_change_on_a_real_guest(
    lab: str, lab_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path
) -> None:
    sid = f"s{uuid.uuid4().hex[:7]}"
    orch = _orchestrator(tmp_path, policies, lab_inventory)
    orch.ingest(events(created(sid)), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    wait_for_guest_data(sid)
    change = package_changed(sid, 2, 256, 2)
    orch.ingest(events(change), wib(2026, 11, 25, 10))
    orch.apply(wib(2026, 11, 25, 10, 1))
    info = virsh("dominfo", f"svc-{sid}").stdout
    assert "CPU(s):         2" in info and "262144 KiB" in info and domain_state(sid) == "running"
    capacity = virsh("vol-info", "--pool", "orchestrator-lab", f"svc-{sid}.qcow2", "--bytes").stdout
    assert "2147483648 bytes" in capacity


def filter_of(service: str) -> tuple[str, list[str]]:
    """The nwfilter on the guest's interface and its IP parameters, as libvirt holds them."""
    xml = virsh("dumpxml", f"svc-{service}").stdout
    name = re.search(r"<filterref filter='([\w-]+)'", xml)
    return (name.group(1) if name else "", re.findall(r"<parameter name='IP' value='([^']+)'", xml))


def test_a_reclaimed_address_is_reclaimed_on_the_wire(
    lab: str, lab_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path
) -> None:
    sid = f"w{uuid.uuid4().hex[:7]}"
    orch = _orchestrator(tmp_path, policies, lab_inventory)
    orch.ingest(events(created(sid), invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    with orch.sessions() as session:
        (address,) = ipam.held_by(session, sid)
    assert filter_of(sid) == ("clean-traffic", [address])
    interface = virsh("domiflist", f"svc-{sid}").stdout.split()[0]
    bindings = virsh("nwfilter-binding-list").stdout
    assert interface in bindings and "clean-traffic" in bindings
    orch.apply(wib(2026, 12, 9, 0, 1))  # Klikserver: more than 7 days unpaid, then terminated
    assert domain_state(sid) == "absent"
    orch.ingest(events(paid(sid, "2026-12-10T10:00:00+07:00")), wib(2026, 12, 10, 10))
    orch.apply(wib(2026, 12, 10, 10, 1))  # restored from the archive, same address back
    assert domain_state(sid) == "running" and filter_of(sid) == ("clean-traffic", [address])
    orch.ingest(
        events(invoice(sid, "2027-01-01", "inv-2", at="2026-12-15T10:00:00+07:00")),
        wib(2026, 12, 15, 10),
    )
    orch.apply(wib(2027, 1, 9, 0, 1))
    with orch.sessions() as session:
        assert ipam.held_by(session, sid) == ()


def test_binding_follows_the_store_while_the_guest_runs(
    lab: str, lab_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path
) -> None:
    sid = f"q{uuid.uuid4().hex[:7]}"
    orch = _orchestrator(tmp_path, policies, lab_inventory)
    orch.ingest(events(created(sid)), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    driver, ref = orch.driver("kvm-jkt-1"), ServiceRef(sid, "kvm-jkt-1")
    assert driver.bind_addresses(ref, ()).changed
    assert filter_of(sid) == ("orchestrator-quarantine", [])
    assert "orchestrator-quarantine" in virsh("nwfilter-binding-list").stdout
    assert driver.bind_addresses(ref, ("192.0.2.77",)).changed
    assert not driver.bind_addresses(ref, ("192.0.2.77",)).changed
    assert filter_of(sid) == ("clean-traffic", ["192.0.2.77"])
    assert driver.inspect(ref).addresses == ("192.0.2.77",)


def test_a_running_guest_is_backed_up_whole_and_purged_with_its_backups(
    lab: str, lab_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path
) -> None:
    sid = f"k{uuid.uuid4().hex[:7]}"
    orch = _orchestrator(tmp_path, policies, lab_inventory)
    orch.ingest(events(created(sid), invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    wait_for_guest_data(sid)
    driver, ref = orch.driver("kvm-jkt-1"), ServiceRef(sid, "kvm-jkt-1")
    outcome = driver.backup(ref)
    assert domain_state(sid) == "running"  # the guest kept running through its backup
    copy = LAB_DIR / "backups" / outcome.evidence["backup"]
    data = copy.read_bytes()
    assert data[:4] == b"QFI\xfb" and f"LABDATA:svc-{sid}".encode() in data
    assert outcome.evidence["sha256"] == hashlib.sha256(data).hexdigest()
    assert outcome.evidence["image"] == "qcow2"
    assert [b.backup_id for b in driver.backups(ref)] == [copy.name]
    orch.apply(wib(2026, 12, 9, 0, 1))  # terminated: the backup stays with the archive
    assert copy.exists()
    orch.apply(wib(2026, 12, 16, 0, 1))  # purged: every copy goes
    assert not copy.exists() and not list((LAB_DIR / "backups").glob(f"svc-{sid}*"))
    with orch.sessions() as session:
        purge = session.scalars(
            select(StepRow).where(StepRow.service_id == sid, StepRow.kind == "purge")
        ).one()
    assert json.loads(purge.result or "{}")["backups_deleted"] == [copy.name]
