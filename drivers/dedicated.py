"""A dedicated server as the lifecycle sees a machine: power, boot device, disks.

Composed, as Ironic composes a node's interfaces, from the power driver
(IPMI), the SSH runner (is the box's OS up?) and the playbook runner (the
purge). Nothing is virtualised, so the lifecycle's words map to power:

    suspend    power off (an ACPI shutdown first, hard off after the timeout)
    resume     power on; the outcome says whether sshd answered
    terminate  power off and boot from the network (PXE) from now on
    restore    boot from disk and power on (the disks were kept)
    purge      boot the rescue system, erase every disk with the purge
               playbook, verify, power off; the erase records come back as
               evidence for the core to sign and journal

What the BMC reports is the state: off and booting from the network means
terminated; off booting from disk means suspended. Whether a terminated
box's disks still hold data cannot be seen out of band, so inspect says
they do; the journal's purge record is what says they don't.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from drivers.ansible import AnsibleRunner
from drivers.base import (
    Capability,
    ComputeDriver,
    MachineSpec,
    Observed,
    Outcome,
    PermanentError,
    Power,
    Secret,
    ServiceRef,
    Unsupported,
)
from drivers.ipmi import Bmc, BootDevice, IpmiPower
from drivers.ssh import SshRunner, SshTarget

NETWORK_BOOT = frozenset({"pxe"})


class DedicatedCompute(ComputeDriver):
    capabilities = frozenset(
        {
            Capability.CREATE,
            Capability.SUSPEND_POWER_OFF,
            Capability.SUSPEND_SHUTDOWN,
            Capability.ARCHIVE,
            Capability.RESTORE,
            Capability.PURGE,
            Capability.ERASE_RECORDS,
        }
    )
    secret_options = frozenset({"bmc_password", "ssh_key"})

    def __init__(
        self,
        uri: str,
        *,
        host: str = "",
        bmc_user: str = "admin",
        bmc_password: Secret,
        bmc_timeout: float = 20.0,
        bmc_set_aside: float = 60.0,
        bmc_min_interval: float = 0.1,
        ssh_address: str,
        ssh_key: Secret,
        ssh_user: str = "root",
        host_keys: list[str] | None = None,
        known_hosts: str | None = None,
        purge_devices: list[str] | None = None,
        artifacts: str = "/var/lib/orchestrator/runs",
        shutdown_timeout: float = 120.0,
        boot_timeout: float = 600.0,
        poll: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        address = urlsplit(uri)
        if address.scheme != "ipmi" or not address.hostname:
            raise PermanentError(f"a dedicated box's uri is ipmi://BMC[:PORT], not {uri!r}")
        self.host = host = host or address.netloc
        bmc = Bmc(address.hostname, address.port or 623, bmc_user, bmc_password)
        self.power = IpmiPower(
            {host: bmc}, timeout=bmc_timeout, min_interval=bmc_min_interval,
            dead_for=bmc_set_aside,
        )
        target = SshTarget.pinned(ssh_address, ssh_key, ssh_user, host_keys, known_hosts)
        self.ssh = SshRunner(target)
        self.runner = AnsibleRunner({host: target}, Path(artifacts))
        self.purge_devices = purge_devices
        self.shutdown_timeout = shutdown_timeout
        self.boot_timeout = boot_timeout
        self.poll = poll
        self._sleep = sleep

    def inspect(self, ref: ServiceRef) -> Observed:
        power = self.power.power_state(self.host)
        if power == Power.OFF and self.power.boot_device(self.host) in NETWORK_BOOT:
            return Observed(Power.ABSENT, archived=True, data_present=True)
        return Observed(power, data_present=True)

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        """Hand the box over: boot from its disk and power on (its OS is installed by ops)."""
        return self.restore(ref, spec)

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        if method not in ("power_off", "shutdown"):
            raise Unsupported(f"a dedicated box suspends by power_off, not {method}")
        return self._off(ref)

    def resume(self, ref: ServiceRef) -> Outcome:
        outcome = self.power.set_power(self.host, Power.RUNNING)
        answers = self._await_ssh()
        detail = f"{outcome.detail}; sshd {'answers' if answers else 'not answering yet'}"
        return Outcome(outcome.changed, Observed(Power.RUNNING, data_present=True), detail,
                       {"ssh_answers": answers})

    def archive(self, ref: ServiceRef) -> Outcome:
        before = self.inspect(ref)
        if before.archived:
            return Outcome(False, before, f"{self.host} already off and booting from the network")
        self._off(ref)
        self.power.set_boot_device(self.host, BootDevice.PXE)
        return Outcome(True, self.inspect(ref), f"{self.host} off; boots from the network")

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        self.power.set_boot_device(self.host, BootDevice.DISK)
        return self.resume(ref)

    def purge(self, ref: ServiceRef) -> Outcome:
        self.power.set_boot_device(self.host, BootDevice.RESCUE)
        if self.power.power_state(self.host) == Power.RUNNING:
            self.power.cycle(self.host)
        else:
            self.power.set_power(self.host, Power.RUNNING)
        if not self._await_ssh():
            self.power.set_power(self.host, Power.OFF)
            raise PermanentError(
                f"{self.host}: the rescue system did not answer on ssh "
                f"within {self.boot_timeout:g}s; nothing was erased"
            )
        variables: dict[str, Any] = {}
        if self.purge_devices:
            variables["purge_devices"] = self.purge_devices
        run = self.runner.run(self.host, "purge-disks", variables)
        self.power.set_power(self.host, Power.OFF)
        self.power.set_boot_device(self.host, BootDevice.PXE)
        records = _erase_records(run.evidence)
        verified = bool(records) and all(r.get("result") == "verified" for r in records)
        evidence = {
            "erase_records": records,
            "verified_absent": verified,
            "playbook_run": run.evidence["artifacts"],
        }
        return Outcome(True, Observed(Power.ABSENT, archived=True), "disks erased", evidence)

    def _off(self, ref: ServiceRef) -> Outcome:
        """ACPI shutdown first, so the OS can flush its disks; the hard off after the timeout."""
        off = Observed(Power.OFF, data_present=True)
        if self.power.power_state(self.host) == Power.OFF:
            return Outcome(False, off, f"{self.host} already off")
        self.power.soft_off(self.host)
        deadline = time.monotonic() + self.shutdown_timeout
        while time.monotonic() < deadline:
            if self.power.power_state(self.host) == Power.OFF:
                return Outcome(True, off, "shut down")
            self._sleep(self.poll)
        self.power.set_power(self.host, Power.OFF)
        return Outcome(True, off, "powered off after timeout")

    def _await_ssh(self) -> bool:
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.ssh.answers():
                return True
            self._sleep(self.poll)
        return False


def _erase_records(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    result = evidence.get("results", {}).get("Erase and verify every disk", {})
    records: list[dict[str, Any]] = result.get("records", [])
    return records


__all__ = ["DedicatedCompute"]
