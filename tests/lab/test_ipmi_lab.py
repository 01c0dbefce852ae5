"""The IPMI driver against real BMCs over UDP, with ipmitool as the independent judge.

Three kinds of BMC: OpenIPMI's ipmi_sim (the lab boxes), virtualbmc in
front of a real libvirt guest (as Ironic's CI runs it), and pyghmi-server
BMCs of the lab's own (lab/bmcs.py): one offering only cipher suite 0, one
that hangs on power off, and a farm of healthy ones.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from drivers.base import MachineSpec, PermanentError, Power, ServiceRef
from drivers.ipmi import Bmc, BootDevice, IpmiPower
from drivers.libvirt import LibvirtCompute
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.secrets.credentials import Secret, resolve
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import StepRow
from tests.conftest import REPO, created, events, invoice, wib
from tests.lab.conftest import domain_state
from tests.lab.test_dedicated_lab import SECRETS, boxes, ipmitool  # noqa: F401 - fixture

PASSWORD_FILE = SECRETS / "bmc-password"


def password() -> Secret:
    return resolve(f"file:{PASSWORD_FILE}", what="bmc password")


def ipmitool_at(port: int, *args: str, suite: str = "3") -> subprocess.CompletedProcess[str]:
    env = {"IPMI_PASSWORD": PASSWORD_FILE.read_text().strip(), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["ipmitool", "-I", "lanplus", "-C", suite, "-H", "127.0.0.1", "-p", str(port),
         "-U", "admin", "-E", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


@contextmanager
def bmc_server(*args: str) -> Iterator[subprocess.Popen[str]]:
    """One of lab/bmcs.py's servers, up until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lab.bmcs", *args], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield process
    finally:
        process.kill()
        process.wait()


def test_ipmi_sim_box_power_boot_device_and_identify_agree_with_ipmitool(
    boxes: Inventory,  # noqa: F811
) -> None:
    power = IpmiPower({"box1": Bmc("127.0.0.1", 9101, "admin", password())})
    power.set_power("box1", Power.OFF)
    assert "Chassis Power is off" in ipmitool(1, "chassis", "power", "status")
    assert power.set_power("box1", Power.RUNNING).changed
    assert "Chassis Power is on" in ipmitool(1, "chassis", "power", "status")
    assert not power.set_power("box1", Power.RUNNING).changed  # level-triggered: nothing sent
    assert power.negotiated_suite("box1") == 3  # ipmi_sim has no suite 17: refused, then 3
    power.set_boot_device("box1", BootDevice.PXE)
    assert "Force PXE" in ipmitool(1, "chassis", "bootparam", "get", "5")
    assert power.boot_device("box1") == "pxe"
    power.set_boot_device("box1", BootDevice.DISK)
    assert "Force Boot from default Hard-Drive" in ipmitool(1, "chassis", "bootparam", "get", "5")
    power.identify("box1", 5)
    assert "identify" in (Path("/var/lib/orchestrator-lab/boxes/box1/power.log").read_text())
    power.cycle("box1")
    power.soft_off("box1")
    assert "Chassis Power is off" in ipmitool(1, "chassis", "power", "status")
    power.close()


def test_virtualbmc_in_front_of_a_libvirt_guest(
    lab: str, lab_inventory: Inventory, boxes: Inventory  # noqa: F811
) -> None:
    options = lab_inventory.hosts()["kvm-jkt-1"].options
    compute = LibvirtCompute(uri="qemu:///system", **options)
    ref = ServiceRef(f"v{uuid.uuid4().hex[:7]}", "kvm-jkt-1")
    compute.create(ref, MachineSpec(1, 128, 1))
    port = 9201
    with bmc_server("vbmc", ref.name, str(port), str(PASSWORD_FILE)):
        power = IpmiPower({"guest": Bmc("127.0.0.1", port, "admin", password())})
        assert power.power_state("guest") == Power.RUNNING
        assert power.negotiated_suite("guest") == 3  # virtualbmc chose 3 for our 17
        power.set_power("guest", Power.OFF)
        assert domain_state(ref.service_id) == "shut off"
        assert "Chassis Power is off" in ipmitool_at(port, "chassis", "power", "status").stdout
        power.set_boot_device("guest", BootDevice.PXE)
        assert "Force PXE" in ipmitool_at(port, "chassis", "bootparam", "get", "5").stdout
        power.set_power("guest", Power.RUNNING)
        assert domain_state(ref.service_id) in ("running", "paused")  # TCG guests show paused
        assert "Chassis Power is on" in ipmitool_at(port, "chassis", "power", "status").stdout
        power.close()


def test_a_bmc_offering_only_cipher_suite_zero_is_refused(boxes: Inventory) -> None:  # noqa: F811
    port = 9202
    with bmc_server("zero", str(port), str(PASSWORD_FILE)):
        power = IpmiPower({"weak": Bmc("127.0.0.1", port, "admin", password())})
        with pytest.raises(PermanentError, match="cipher suite") as refused:
            power.power_state("weak")
        assert "(0, 0, 0)" in str(refused.value)
        for suite in ("3", "17"):  # ipmitool agrees it offers neither
            assert "Unable to establish" in ipmitool_at(port, "power", "status", suite=suite).stderr
        power.close()


def test_one_hung_bmc_among_many_fails_its_step_alone_and_is_retried(
    policies: dict[str, Policy], tmp_path: Path, boxes: Inventory  # noqa: F811
) -> None:
    """Eight healthy BMCs and one that hangs on power off; the hung one's step is retried."""
    first, hung_port = 9300, 9310
    inventory = farm_inventory(tmp_path, [*range(first, first + 8), hung_port])
    engine = open_engine(f"sqlite:///{tmp_path / 'farm.db'}")
    migrate(engine)
    orch = Orchestrator(engine, policies, inventory)
    orch.seed_pools()
    services = {f"f{port}": f"farm-{port}" for port in [*range(first, first + 8), hung_port]}
    orch.ingest(
        events(*[item for sid, host in services.items()
                 for item in (created(sid, "cybernet", "dedicated", host=host),
                              invoice(sid, "2026-12-01"))]),
        wib(2026, 11, 20),
    )
    with bmc_server("farm", str(first), "8", str(PASSWORD_FILE)):
        with bmc_server("hang", str(hung_port), str(PASSWORD_FILE)):
            orch.apply(wib(2026, 11, 20, 0, 1))  # all power on
            orch.apply(wib(2026, 12, 3, 0, 1))  # all suspend: one BMC hangs
            states = step_states(orch, "suspend")
            assert all(states[f"f{p}"] == "done" for p in range(first, first + 8)), states
            assert states[f"f{hung_port}"] == "retry"
            for port in range(first, first + 8):
                assert "Chassis Power is off" in ipmitool_at(port, "power", "status").stdout
            error = step_error(orch, f"f{hung_port}")
            assert "no answer" in error and f"127.0.0.1:{hung_port}" in error
        with bmc_server("farm", str(hung_port), "1", str(PASSWORD_FILE)):  # the BMC is replaced
            retried_until_done(orch, f"f{hung_port}", wib(2026, 12, 3, 6, 0))
            assert "Chassis Power is off" in ipmitool_at(hung_port, "power", "status").stdout


def farm_inventory(tmp_path: Path, ports: list[int]) -> Inventory:
    host_key = (Path("/var/lib/orchestrator-lab/boxes/box1/ssh_host_ed25519_key.pub")).read_text()
    lines = ["all:", "  vars:", "    pools:", "      colo-v4: {cidr: 198.51.100.0/26}",
             "  children:", "    farm:", "      hosts:"]
    for port in ports:
        lines += [
            f"        farm-{port}:",
            "          driver: ipmi",
            f"          uri: ipmi://127.0.0.1:{port}",
            "          pool: colo-v4",
            "          options:",
            f"            bmc_password: file:{PASSWORD_FILE}",
            "            ssh_address: 10.77.0.250",  # no such box: sshd is never waited for
            f"            ssh_key: file:{SECRETS / 'orchestrator_ed25519'}",
            f"            host_keys: [\"{host_key.strip()}\"]",
            "            boot_timeout: 0",
            "            shutdown_timeout: 2",
            "            bmc_timeout: 4",
            "            bmc_set_aside: 1",  # the retry comes seconds later here, not minutes
            "            poll: 0.2",
        ]
    path = tmp_path / "farm.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_inventory(path)


def retried_until_done(orch: Orchestrator, service: str, when: datetime) -> None:
    """Apply hourly (in the policy's time) until the step is done.

    The wedged call to the old BMC is abandoned, not killed: pyghmi gives it up
    on its own schedule, and until then the replaced BMC may still see its
    retries. A real retry comes a minute later; here a few seconds apart.
    """
    patience = time.monotonic() + 120
    while step_states(orch, "suspend")[service] != "done":
        assert time.monotonic() < patience, step_error(orch, service)
        orch.apply(when)
        when += timedelta(hours=1)
        time.sleep(2)


def step_states(orch: Orchestrator, kind: str) -> dict[str, str]:
    with orch.sessions() as session:
        rows = session.scalars(select(StepRow).where(StepRow.kind == kind))
        return {row.service_id: row.state for row in rows}


def step_error(orch: Orchestrator, service: str) -> str:
    with orch.sessions() as session:
        row = session.scalars(
            select(StepRow).where(StepRow.service_id == service, StepRow.kind == "suspend")
        ).one()
        return row.error or ""
