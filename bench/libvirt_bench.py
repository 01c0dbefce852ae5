"""The orchestrator's overhead on a real libvirtd, against bare libvirt calls, in one run.

    bash lab/libvirt.sh up && .venv/bin/python bench/libvirt_bench.py --guests 20

For N guests, the same work twice: create and start, delete.
Through the orchestrator: billing events in, ``apply`` (journal, guards,
executor, driver), and deletion as a purge (wipe, verified by samples, then
delete). Bare: the libvirt calls a hand-written script would make (define,
start, destroy, undefine, delete the volume), one guest after another. Prints both and the ratio.
The orchestrator wipes before it deletes and proves the wipe; that is part
of the overhead measured, on purpose.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import libvirt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.base import ServiceRef  # noqa: E402
from orchestrator.core.events import parse_events  # noqa: E402
from orchestrator.core.inventory import load_inventory  # noqa: E402
from orchestrator.core.policy import load_policies  # noqa: E402
from orchestrator.engine import Orchestrator  # noqa: E402
from orchestrator.state.db import migrate, open_engine  # noqa: E402

WIB = ZoneInfo("Asia/Jakarta")
LAB = Path("/var/lib/orchestrator-lab")
NOW = datetime(2026, 11, 20, 0, 1, tzinfo=WIB)


def through_orchestrator(ids: list[str], workdir: str) -> float:
    engine = open_engine(f"sqlite:///{workdir}/bench.db")
    migrate(engine)
    inventory = load_inventory(REPO / "inventory" / "lab-libvirt.yaml")
    orch = Orchestrator(engine, load_policies(REPO / "inventory" / "policies"), inventory)
    orch.seed_pools()
    started = time.perf_counter()
    orch.ingest(parse_events(json.dumps([_created(s) for s in ids])), NOW)
    report = orch.apply(NOW)
    assert all(s.state == "done" for s in report.steps), report.steps
    driver = orch.driver("kvm-jkt-1")
    for service in ids:
        driver.purge(ServiceRef(service, "kvm-jkt-1"))
    return time.perf_counter() - started


def _created(service: str) -> dict[str, object]:
    data = {
        "type": "service.created",
        "customer": service,
        "policy": "klikserver",
        "product": "kvm_vps",
        "host": "kvm-jkt-1",
        "spec": {"vcpus": 1, "memory_mib": 128, "disk_gib": 1},
    }
    return {
        "id": f"{service}-created",
        "service": service,
        "at": (NOW - timedelta(minutes=1)).isoformat(),
        "data": data,
    }


def bare(ids: list[str]) -> float:
    conn = libvirt.open("qemu:///system")
    pool = conn.storagePoolLookupByName("orchestrator-lab")
    base = pool.storageVolLookupByName("lab-base.img").path()
    accel = (LAB / "accel").read_text().split()[0]
    started = time.perf_counter()
    domains = []
    for name in ids:
        volume = pool.createXML(
            f"<volume><name>{name}.qcow2</name><capacity unit='GiB'>1</capacity>"
            "<target><format type='qcow2'/></target><backingStore>"
            f"<path>{base}</path><format type='raw'/></backingStore></volume>",
            0,
        )
        domain = conn.defineXML(_domain_xml(name, volume.path(), accel))
        domain.create()
        domains.append((domain, volume))
    for domain, volume in domains:
        domain.destroy()
        domain.undefine()
        volume.delete(0)
    return time.perf_counter() - started


def _domain_xml(name: str, disk: str, accel: str) -> str:
    return (
        f"<domain type='{accel}'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64'>hvm</type><kernel>{LAB}/images/vmlinuz</kernel>"
        f"<initrd>{LAB}/images/initrd.img</initrd><cmdline>console=ttyS0</cmdline></os>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "<interface type='network'><source network='orchestrator-lab'/><model type='virtio'/>"
        "</interface></devices></domain>"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guests", type=int, default=20)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    bare_seconds = bare([f"bench-{run}-{n}" for n in range(args.guests)])
    with tempfile.TemporaryDirectory() as workdir:
        ours = through_orchestrator([f"b{run}{n}" for n in range(args.guests)], workdir)
    print(f"accelerator: {(LAB / 'accel').read_text().strip()}")
    print(
        f"bare libvirt:     {bare_seconds:7.2f} s for {args.guests} guests "
        "(create+start, delete)"
    )
    print(f"orchestrator:     {ours:7.2f} s for the same, with journal, guards and verified wipes")
    print(f"overhead ratio orchestrator/bare: {ours / bare_seconds:.2f}x")


if __name__ == "__main__":
    main()
