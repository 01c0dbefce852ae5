"""Backups through the one flow on the Proxmox emulator: missed windows, holds, settling.

Checks read the emulator (proxmoxer) and the journal, not the driver under test.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from lab.pve.harness import PveLab
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.state import journal
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import NotificationRow, ServiceRow, StepRow
from tests.conftest import created, events, wib

HOST = "pve-flow"
MONDAY = date(2026, 12, 7)


def _inventory(pve: PveLab, secret: Path, **host: Any) -> Inventory:
    options = {"user": pve.user, "token_name": pve.token_name, "token_secret": f"file:{secret}",
               "verify": str(pve.verify), "template": "debian-12-tmpl", "poll": 0.05}
    entry = {"driver": "proxmox", "uri": f"https://{pve.host}:{pve.port}", "pool": "lab-v4",
             "options": options, **host}
    pools = {"lab-v4": {"cidr": "192.0.2.0/24"}}
    return Inventory.model_validate(
        {"all": {"vars": {"pools": pools}, "children": {"pve": {"hosts": {HOST: entry}}}}})


@pytest.fixture(scope="module")
def secret(pve: PveLab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flow-secret") / "token"
    path.touch(mode=0o600)
    path.write_text(pve.token_secret)
    return path


def _orchestrator(
    pve: PveLab, secret: Path, policies: dict[str, Policy], tmp_path: Path, **host: Any
) -> Orchestrator:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    orch = Orchestrator(engine, policies, _inventory(pve, secret, **host))
    orch.seed_pools()
    return orch


def _new_vps(orch: Orchestrator, pve: PveLab) -> str:
    sid = f"f{uuid.uuid4().hex[:7]}"
    orch.ingest(events(created(sid, policy="herza", product="proxmox_vps", host=HOST)),
                wib(2026, 12, 5, 10))
    pve.set_clock(wib(2026, 12, 5, 10, 1))
    orch.apply(wib(2026, 12, 5, 10, 1))
    return sid


def _backup_steps(orch: Orchestrator, sid: str) -> list[StepRow]:
    with orch.sessions() as session:
        return list(session.query(StepRow).filter_by(service_id=sid, kind="backup")
                    .order_by(StepRow.id))


def _copies(pve: PveLab, sid: str) -> list[str]:
    content = pve.client().nodes("pve1").storage("local").content.get(content="backup")
    return [c["volid"] for c in content if f"svc-{sid}" in str(c.get("notes", ""))]


def _scheduled(
    pve: PveLab, secret: Path, policies: dict[str, Policy], tmp_path: Path
) -> tuple[Orchestrator, str, StepRow]:
    """A new Herza VPS with its backup journaled for the week of ``MONDAY``."""
    orch = _orchestrator(pve, secret, policies, tmp_path)
    sid = _new_vps(orch, pve)
    orch.schedule_backups(MONDAY, wib(2026, 12, 6, 12))
    (step,) = _backup_steps(orch, sid)
    return orch, sid, step


def test_a_backup_that_missed_its_window_waits_for_the_next_night(
    pve: PveLab, secret: Path, policies: dict[str, Policy], tmp_path: Path
) -> None:
    orch, sid, step = _scheduled(pve, secret, policies, tmp_path)
    assert step.not_before is not None
    day = step.not_before.astimezone(wib(2026, 1, 1).tzinfo).date()
    late = wib(day.year, day.month, day.day, 9)  # the daemon was down all night
    pve.set_clock(late)
    orch.apply(late)
    (moved,) = _backup_steps(orch, sid)
    assert moved.state == journal.RETRY and "window closed" in (moved.error or "")
    assert moved.not_before == step.not_before + timedelta(days=1)
    assert _copies(pve, sid) == []  # nothing ran in the day
    night = moved.not_before + timedelta(minutes=1)
    pve.set_clock(night)
    orch.apply(night)
    (done,) = _backup_steps(orch, sid)
    assert done.state == journal.DONE and len(_copies(pve, sid)) == 1
    result = json.loads(done.result or "{}")
    assert result["retention"]["rules"] == "keep-last=1" and result["seconds"] > 0


def test_a_scheduled_backup_is_not_superseded_and_lets_the_service_settle(
    pve: PveLab, secret: Path, policies: dict[str, Policy], tmp_path: Path
) -> None:
    orch, sid, _ = _scheduled(pve, secret, policies, tmp_path)
    orch.ingest(events({"id": f"{sid}-renew", "service": sid, "at": "2026-12-06T13:00:00+07:00",
                        "data": {"type": "service.renewed", "until": "2027-12-06"}}),
                wib(2026, 12, 6, 13))
    orch.apply(wib(2026, 12, 6, 13, 1))
    (step,) = _backup_steps(orch, sid)
    assert step.state == journal.PENDING
    with orch.sessions() as session:
        row = session.get(ServiceRow, sid)
        assert row is not None and row.applied_phase == "active"
        assert row.next_at is None or row.next_at > wib(2026, 12, 7)


def test_a_legal_hold_keeps_every_copy_and_holds_a_restore(
    pve: PveLab, secret: Path, policies: dict[str, Policy], tmp_path: Path
) -> None:
    orch, sid, step = _scheduled(pve, secret, policies, tmp_path)
    assert step.not_before is not None
    pve.set_clock(step.not_before)
    orch.apply(step.not_before + timedelta(minutes=1))
    hold = {"type": "hold.placed", "hold": "police-42", "kind": "legal", "reason": "request 42"}
    orch.ingest(events({"id": f"{sid}-hold", "service": sid, "at": "2026-12-08T10:00:00+07:00",
                        "data": hold}), wib(2026, 12, 8, 10))
    orch.schedule_backups(MONDAY + timedelta(days=7), wib(2026, 12, 8, 11))
    second = _backup_steps(orch, sid)[1]
    assert second.not_before is not None
    pve.set_clock(second.not_before)
    orch.apply(second.not_before + timedelta(minutes=1))
    assert len(_copies(pve, sid)) == 2  # keep 1, but the hold keeps both
    result = json.loads(_backup_steps(orch, sid)[1].result or "{}")
    assert "legal" in result["retention"]["held_by"] and result["retention"]["removed"] == []
    dry = orch.prune_backups(sid, wib(2026, 12, 16), dry_run=False)
    assert dry["removed"] == [] and len(_copies(pve, sid)) == 2
    report = orch.restore_backup(sid, f"pve1/{_copies(pve, sid)[0]}", wib(2026, 12, 16))
    assert report.state == journal.HELD and "legal" in report.detail


def test_a_backup_that_cannot_fit_is_reported_before_its_window(
    pve: PveLab, secret: Path, policies: dict[str, Policy], tmp_path: Path
) -> None:
    orch = _orchestrator(pve, secret, policies, tmp_path, backup_minutes=5 * 60)
    sid = _new_vps(orch, pve)
    planned = orch.schedule_backups(MONDAY, wib(2026, 12, 6, 12))
    assert planned.journaled == 0
    (unfit,) = planned.plan.unfit
    assert unfit.job.service_id == sid and "window" in unfit.reason
    assert _backup_steps(orch, sid) == []


def test_an_operator_verifies_and_restores_a_chosen_backup_through_the_journal(
    pve: PveLab, secret: Path, policies: dict[str, Policy], tmp_path: Path
) -> None:
    orch, sid, step = _scheduled(pve, secret, policies, tmp_path)
    assert step.not_before is not None
    pve.set_clock(step.not_before)
    orch.apply(step.not_before + timedelta(minutes=1))
    (volid,) = _copies(pve, sid)
    later = step.not_before + timedelta(hours=6)
    (checked,) = orch.verify_sample(later, count=5, seed=1)
    assert checked.kind == "verify_backup" and checked.state == journal.DONE
    vms = [v["name"] for v in pve.client().cluster.resources.get(type="vm")]
    assert not [name for name in vms if str(name).startswith("scratch-")]
    restored = orch.restore_backup(sid, f"pve1/{volid}", later + timedelta(minutes=5))
    assert restored.state == journal.DONE, restored.detail
    assert [v for v in pve.client().cluster.resources.get(type="vm")
            if v.get("name") == f"svc-{sid}" and v.get("status") == "running"]
    with orch.sessions() as session:
        kinds = [n.kind for n in session.query(NotificationRow).filter_by(service_id=sid)]
    assert "service.restored_from_backup" in kinds
    with pytest.raises(KeyError):  # the same request twice at the same moment is one step
        orch.restore_backup(sid, f"pve1/{volid}", later + timedelta(minutes=5))
