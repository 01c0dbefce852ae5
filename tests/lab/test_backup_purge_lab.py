"""A purge at the end of retention takes every copy, on every storage of the real lab,
and a legal hold keeps them all; checked by scanning libvirt's pools and their
directories, never through the driver.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.state import journal
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import StepRow
from tests.conftest import created, events, invoice, wib
from tests.lab.conftest import virsh
from tests.lab.test_libvirt_lab import wait_for_guest_data

HOST = "kvm-jkt-1"


def everything_of(service: str) -> list[str]:
    """Every volume and file of the service on every storage pool libvirtd knows."""
    found = []
    for pool in virsh("pool-list", "--all", "--name").stdout.split():
        virsh("pool-refresh", pool)
        found += [f"{pool}:{v}" for v in virsh("vol-list", pool).stdout.split()
                  if f"svc-{service}" in v]
        path = re.search(r"<path>([^<]+)</path>", virsh("pool-dumpxml", pool).stdout)
        if path and Path(path.group(1)).is_dir():
            found += [str(p) for p in Path(path.group(1)).rglob(f"*svc-{service}*")]
    return sorted(set(found))


def test_a_purge_deletes_every_copy_everywhere_but_not_under_a_legal_hold(
    lab: str, lab_inventory: Inventory, policies: dict[str, Policy], tmp_path: Path
) -> None:
    sid = f"h{uuid.uuid4().hex[:7]}"
    engine = open_engine(f"sqlite:///{tmp_path / 'lab.db'}")
    migrate(engine)
    orch = Orchestrator(engine, policies, lab_inventory)
    orch.seed_pools()
    orch.ingest(events(created(sid), invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    wait_for_guest_data(sid)
    planned = orch.schedule_backups(wib(2026, 11, 23).date(), wib(2026, 11, 21))
    (slot,) = [s for s in planned.plan.slots if s.job.service_id == sid]
    orch.apply(slot.start + timedelta(minutes=1))  # the week's backup, into the backup pool
    virsh("snapshot-create-as", f"svc-{sid}", "before-the-hold")  # inside the volume
    orch.apply(wib(2026, 12, 9, 0, 1))  # terminated: the archive (its volume) is kept
    kept = everything_of(sid)
    assert any(k.startswith("orchestrator-lab:") for k in kept)
    assert any(k.startswith("orchestrator-lab-backups:") for k in kept)
    hold = {"type": "hold.placed", "hold": "court-7", "kind": "legal", "reason": "court order 7"}
    orch.ingest(events({"id": f"{sid}-hold", "service": sid, "at": "2026-12-10T10:00:00+07:00",
                        "data": hold}), wib(2026, 12, 10, 10))
    orch.apply(wib(2026, 12, 16, 0, 1))  # the purge's day: held
    assert everything_of(sid) == kept
    verdict = orch.verdict(orch.facts(sid), wib(2026, 12, 16, 0, 1))
    (purge,) = [e for e in verdict.timeline if e.step == "purge"]
    assert verdict.phase.value == "terminated" and "court-7" in str(purge.blocked_by)
    released = {"type": "hold.released", "hold": "court-7"}
    orch.ingest(events({"id": f"{sid}-release", "service": sid,
                        "at": "2026-12-20T10:00:00+07:00", "data": released}),
                wib(2026, 12, 20, 10))
    orch.apply(wib(2026, 12, 20, 10, 1))
    assert everything_of(sid) == []
    with orch.sessions() as session:
        purges = session.query(StepRow).filter_by(service_id=sid, kind="purge").all()
    (done,) = [p for p in purges if p.state == journal.DONE]
    record = json.loads(done.result or "{}")
    assert record["verified_absent"] is True and len(record["backups_deleted"]) == 1
