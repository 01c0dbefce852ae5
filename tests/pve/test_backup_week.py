"""A week of backups on three Proxmox hosts, judged by the hosts' own task records.

Thirty VPS (Herza: weekly, keep one, 01:00-05:00 WIB) on three single-node
Proxmox VE emulators. The orchestrator plans the week, journals each backup
at its slot, and its executor runs them as simulated time passes (an
``apply`` every half hour, day and night, so a backup planned outside its
window would run there and be seen). The checks read each node's vzdump
tasks (``GET /nodes/{node}/tasks``, start and end times as Proxmox keeps
them) and storage contents through proxmoxer, never the scheduler's plan.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lab.pve.harness import PveLab, start_lab
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.state import journal
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import StepRow
from tests.conftest import WIB, created, events, invoice, wib

HOSTS = ("pve-a", "pve-b", "pve-c")
GUESTS_PER_HOST = 10
LIMIT = 2
WEEK = date(2026, 12, 7)  # a Monday
VZDUMP_SECONDS = 2.0


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PveLab]]:
    started: dict[str, PveLab] = {}
    try:
        for host in HOSTS:
            started[host] = start_lab(tmp_path_factory.mktemp(host))
        yield started
    finally:
        for lab in started.values():
            lab.stop()


def _host(lab: PveLab, secret: Path) -> dict[str, Any]:
    return {
        "driver": "proxmox",
        "uri": f"https://{lab.host}:{lab.port}",
        "pool": "lab-v4",
        "max_concurrent": 4,
        "backup_limit": LIMIT,
        "backup_minutes": 20,
        "options": {
            "user": lab.user,
            "token_name": lab.token_name,
            "token_secret": f"file:{secret}",
            "verify": str(lab.verify),
            "template": "debian-12-tmpl",
            "nodes": ["pve1"],
            "poll": 0.05,
            "lock_patience": 60.0,
        },
    }


@pytest.fixture(scope="module")
def week_inventory(labs: dict[str, PveLab], tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    hosts = {}
    for name, lab in labs.items():
        secret = tmp_path_factory.mktemp(f"{name}-secret") / "token"
        secret.touch(mode=0o600)
        secret.write_text(lab.token_secret)
        hosts[name] = _host(lab, secret)
    pools = {"lab-v4": {"cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}}
    return Inventory.model_validate(
        {"all": {"vars": {"pools": pools}, "children": {"proxmox": {"hosts": hosts}}}}
    )


def _set_clocks(labs: dict[str, PveLab], now: datetime) -> None:
    for lab in labs.values():
        lab.set_clock(now)


def _live(orch: Orchestrator, labs: dict[str, PveLab], start: datetime, end: datetime) -> None:
    """Every half hour from ``start`` to ``end``: the hosts' clocks, then an apply."""
    now = start
    while now <= end:
        _set_clocks(labs, now)
        orch.apply(now)
        now += timedelta(minutes=30)


def _vzdumps(lab: PveLab) -> list[dict[str, Any]]:
    tasks = lab.client().nodes("pve1").tasks.get(typefilter="vzdump", limit=1000)
    return [t for t in tasks if t.get("status") == "OK"]


def _peak(tasks: list[dict[str, Any]]) -> int:
    """Most tasks running at one instant, from their [start, end) times."""
    points = sorted(
        [(int(t["starttime"]), 1) for t in tasks] + [(int(t["endtime"]), -1) for t in tasks],
        key=lambda p: (p[0], p[1]),
    )
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    return peak


def _in_window(started: int) -> bool:
    local = datetime.fromtimestamp(started, UTC).astimezone(WIB)
    return 1 <= local.hour < 5


def _backups_of(lab: PveLab, vmid: int) -> list[str]:
    content = lab.client().nodes("pve1").storage("local").content.get(content="backup")
    return [c["volid"] for c in content if int(c.get("vmid", -1)) == vmid]


def _vmids(lab: PveLab) -> list[int]:
    vms = lab.client().cluster.resources.get(type="vm")
    return [int(v["vmid"]) for v in vms if str(v.get("name", "")).startswith("svc-")]


@pytest.fixture(scope="module")
def week(
    labs: dict[str, PveLab],
    week_inventory: Inventory,
    policies: dict[str, Policy],
    tmp_path_factory: pytest.TempPathFactory,
) -> Orchestrator:
    for lab in labs.values():
        lab.task_seconds(0.2)
    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('week') / 'store.db'}")
    migrate(engine)
    orch = Orchestrator(engine, policies, week_inventory)
    orch.seed_pools()
    services = [
        created(f"{host}-{n}", policy="herza", product="proxmox_vps", host=host)
        for host in HOSTS
        for n in range(GUESTS_PER_HOST)
    ]
    orch.ingest(events(*services), wib(2026, 12, 5, 10))
    _set_clocks(labs, wib(2026, 12, 5, 10, 1))
    orch.apply(wib(2026, 12, 5, 10, 1))
    scheduled = orch.schedule_backups(WEEK, wib(2026, 12, 6, 12))
    assert scheduled.journaled == len(services) and not scheduled.plan.unfit
    for lab in labs.values():
        lab.task_seconds(VZDUMP_SECONDS)
    _live(orch, labs, wib(2026, 12, 6, 12), wib(2026, 12, 14, 0))
    return orch


def test_every_backup_ran_in_its_window_and_no_host_over_its_limit(
    week: Orchestrator, labs: dict[str, PveLab]
) -> None:
    for host, lab in labs.items():
        vzdumps = _vzdumps(lab)
        assert sorted(int(t["id"]) for t in vzdumps) == sorted(_vmids(lab)), host
        assert len(vzdumps) == GUESTS_PER_HOST
        outside = [t["starttime"] for t in vzdumps if not _in_window(int(t["starttime"]))]
        assert outside == [], f"{host}: backups outside 01:00-05:00 WIB"
        assert 1 <= _peak(vzdumps) <= LIMIT, f"{host}: {_peak(vzdumps)} backups at once"


def test_the_journal_has_each_backup_with_its_checks(week: Orchestrator) -> None:
    with week.sessions() as session:
        rows = session.query(StepRow).filter(StepRow.kind == "backup").all()
    assert len(rows) == len(HOSTS) * GUESTS_PER_HOST
    assert {r.state for r in rows} == {journal.DONE}


def test_next_week_replaces_each_backup_with_the_new_one(
    week: Orchestrator, labs: dict[str, PveLab]
) -> None:
    lab = labs["pve-a"]
    before = {vmid: _backups_of(lab, vmid) for vmid in _vmids(lab)}
    assert all(len(copies) == 1 for copies in before.values())
    week.schedule_backups(WEEK + timedelta(days=7), wib(2026, 12, 13, 12))
    _live(week, labs, wib(2026, 12, 14, 0, 30), wib(2026, 12, 14, 6))
    after = {vmid: _backups_of(lab, vmid) for vmid in _vmids(lab)}
    for vmid, copies in after.items():
        assert len(copies) == 1 and copies != before[vmid], vmid  # keep 1: the new one


def test_no_backup_while_suspended_for_nonpayment_where_the_policy_says_so(
    labs: dict[str, PveLab],
    week_inventory: Inventory,
    policies: dict[str, Policy],
    tmp_path: Path,
) -> None:
    """cybernet's "no backup or restore while suspended due to late payment", on a VPS
    sold with backups."""
    cybernet = policies["cybernet"]
    product = cybernet.products["proxmox_vps"]
    backed_up = product.backups.model_copy(update={"frequency": "weekly", "keep": 1})
    policy = cybernet.model_copy(
        update={"products": {**cybernet.products,
                             "proxmox_vps": product.model_copy(update={"backups": backed_up})}}
    )
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    orch = Orchestrator(engine, {**policies, "cybernet": policy}, week_inventory)
    orch.seed_pools()
    unpaid, paying = "cyb-unpaid", "cyb-paying"
    orch.ingest(
        events(
            created(unpaid, policy="cybernet", product="proxmox_vps", host="pve-b"),
            created(paying, policy="cybernet", product="proxmox_vps", host="pve-b"),
            invoice(unpaid, "2026-12-20", at="2026-12-10T10:00:00+07:00"),
        ),
        wib(2026, 12, 20, 10),
    )
    _set_clocks(labs, wib(2026, 12, 20, 10))
    orch.apply(wib(2026, 12, 20, 10))
    orch.apply(wib(2026, 12, 23, 0, 1))  # suspended on day 2
    assert orch.verdict(orch.facts(unpaid), wib(2026, 12, 23, 1)).phase.value == "suspended"
    planned = orch.schedule_backups(date(2026, 12, 28), wib(2026, 12, 27, 12))
    assert any(s.startswith(f"{unpaid}:") and "nonpayment" in s for s in planned.skipped)
    assert [s.job.service_id for s in planned.plan.slots] == [paying]
    report = orch.restore_backup(unpaid, "pve1/local:backup/none.vma.zst", wib(2026, 12, 27, 13))
    assert report.state == journal.CANCELLED and "nonpayment" in report.detail
