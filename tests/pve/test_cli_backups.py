"""The ``backups`` commands through Typer's runner, on a Proxmox emulator's host.

The checks read the emulator's storage through proxmoxer, not through the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from lab.pve.harness import PveLab
from orchestrator.faces.cli import app
from tests.conftest import REPO, created

Cli = Callable[..., str]
SERVICE = "cli-bk1"


@pytest.fixture(scope="module")
def cli(pve: PveLab, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    where = tmp_path_factory.mktemp("cli-backups")
    secret = where / "token"
    secret.touch(mode=0o600)
    secret.write_text(pve.token_secret)
    host = {
        "driver": "proxmox", "uri": f"https://{pve.host}:{pve.port}", "pool": "lab-v4",
        "options": {"user": pve.user, "token_name": pve.token_name,
                    "token_secret": f"file:{secret}", "verify": str(pve.verify),
                    "template": "debian-12-tmpl", "poll": 0.05},
    }
    inventory = {"all": {"vars": {"pools": {"lab-v4": {"cidr": "192.0.2.0/24"}}},
                         "children": {"proxmox": {"hosts": {"pve-cli": host}}}}}
    (where / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    runner = CliRunner()
    base = ["--db", f"sqlite:///{where / 'cli.db'}", "--inventory", str(where / "inventory.yaml"),
            "--policies", str(REPO / "inventory" / "policies")]

    def run(*args: str, code: int = 0, stdin: str | None = None) -> str:
        result = runner.invoke(app, [*base, *args], input=stdin, env={"USER": "ana"})
        assert result.exit_code == code, result.output
        return result.output

    run("init")
    run("event", "-", "--at", "2026-11-20T10:00:00+07:00", stdin=json.dumps([
        created(SERVICE, policy="herza", product="proxmox_vps", host="pve-cli")]))
    run("apply", "--at", "2026-11-20T10:00:00+07:00")
    return run


def _copies(pve: PveLab) -> list[str]:
    content = pve.client().nodes("pve1").storage("local").content.get(content="backup")
    return sorted(c["volid"] for c in content if f"svc-{SERVICE}" in str(c.get("notes", "")))


def _slot(cli: Cli) -> datetime:
    shown = json.loads(cli("backups", "plan", "--week", "2026-12-07", "--json",
                           "--at", "2026-12-05T12:00:00+07:00"))
    (slot,) = shown["slots"]
    assert slot["service_id"] == SERVICE
    return datetime.fromisoformat(slot["start"])


def test_plan_shows_the_week_and_schedule_journals_it(cli: Cli) -> None:
    start = _slot(cli).astimezone(UTC)  # 01:00-05:00 WIB on Monday 7 December
    assert datetime(2026, 12, 6, 18, tzinfo=UTC) <= start < datetime(2026, 12, 6, 22, tzinfo=UTC)
    journaled = json.loads(cli("backups", "plan", "--week", "2026-12-07", "--schedule",
                               "--json", "--at", "2026-12-05T12:00:00+07:00"))
    assert journaled["journaled"] == 1
    again = json.loads(cli("backups", "plan", "--week", "2026-12-07", "--schedule", "--json",
                           "--at", "2026-12-05T12:00:00+07:00"))
    assert again["journaled"] == 0  # planning twice journals nothing twice


def test_a_week_that_is_not_a_monday_is_refused(cli: Cli) -> None:
    assert "Tuesday" in cli("backups", "plan", "--week", "2026-12-08", code=2)


def test_prune_dry_run_says_what_would_go_and_removes_nothing(cli: Cli, pve: PveLab) -> None:
    slot = _slot(cli)
    pve.set_clock(slot)
    cli("apply", "--at", (slot + timedelta(minutes=1)).isoformat())  # the journaled backup
    assert len(_copies(pve)) == 1
    for days in (1, 2):  # two more, by hand, which retention must count too
        pve.set_clock(slot + timedelta(days=days))
        _extra_backup(pve)
    before = _copies(pve)
    assert len(before) == 3
    shown = json.loads(cli("backups", "prune", SERVICE, "--dry-run", "--json"))
    assert shown["rules"] == "keep-last=1" and shown["removed"] == []
    marks = [(d["backup_id"].split("/", 1)[1], d["mark"]) for d in shown["decisions"]]
    assert sorted(volid for volid, _ in marks) == before
    assert [mark for _, mark in marks] == ["keep", "remove", "remove"]  # newest first
    assert all(d["reason"] for d in shown["decisions"])
    assert _copies(pve) == before
    done = json.loads(cli("backups", "prune", SERVICE, "--json"))
    assert sorted(v.split("/", 1)[1] for v in done["removed"]) == sorted(
        volid for volid, mark in marks if mark == "remove")
    assert _copies(pve) == [marks[0][0]]


def _extra_backup(pve: PveLab) -> None:
    """A backup taken by someone else (vzdump by hand), which retention must still count."""
    client = pve.client()
    vms = client.cluster.resources.get(type="vm")
    (vm,) = [v for v in vms if v.get("name") == f"svc-{SERVICE}"]
    upid = client.nodes(vm["node"]).vzdump.post(vmid=str(vm["vmid"]), storage="local",
                                                 **{"notes-template": "{{guestname}}"})
    for _ in range(200):
        if client.nodes(vm["node"]).tasks(upid).status.get()["status"] == "stopped":
            return
        time.sleep(0.05)
    raise AssertionError("vzdump did not finish")


def test_list_shows_the_copies(cli: Cli, pve: PveLab) -> None:
    rows: list[dict[str, Any]] = json.loads(cli("backups", "list", SERVICE, "--json"))
    assert sorted(r["backup_id"].split("/", 1)[1] for r in rows) == _copies(pve)


def test_unknown_service_is_a_clear_error(cli: Cli) -> None:
    assert "unknown service" in cli("backups", "list", "nope", code=2)
    assert "unknown service" in cli("backups", "prune", "nope", "--dry-run", code=2)
