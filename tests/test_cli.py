"""The operator's commands, through Typer's runner, on a store of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.faces.cli import app
from tests.conftest import REPO, created, invoice


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--db", db, *args])
        assert result.exit_code == code, result.output
        return result.output

    run("init")
    source = tmp_path / "events.json"
    source.write_text(json.dumps([created("s1"), invoice("s1", "2026-12-01")]))
    run("event", str(source), "--at", "2026-11-20")
    return run


def test_plan_names_who_and_why(cli) -> None:  # type: ignore[no-untyped-def]
    on_the_fifth = json.loads(cli("plan", "--at", "2026-12-05", "--json"))
    steps = {s["action"] for row in on_the_fifth["services"] for s in row["steps"]}
    assert "suspend" not in steps
    sixth = json.loads(cli("plan", "--at", "2026-12-06", "--json"))
    (row,) = sixth["services"]
    suspend = next(s for s in row["steps"] if s["action"] == "suspend")
    assert row["service"] == "s1" and suspend["destructive"]
    assert "Overdue Payment of 5 days" in suspend["why"]
    assert "s1" in cli("plan", "--at", "2026-12-06")


def test_hold_add_blocks_and_remove_releases(cli) -> None:  # type: ignore[no-untyped-def]
    cli(
        "hold", "add", "s1", "legal", "--reason", "court order", "--at", "2026-12-07T09:00:00+07:00"
    )
    held = json.loads(cli("explain", "s1", "--at", "2026-12-20", "--json"))
    blocked = [e for e in held["timeline"] if e["blocked_by"]]
    assert {e["step"] for e in blocked} == {"terminate", "purge"}  # the data, not the service
    hold_id = blocked[0]["blocked_by"].split()[-1]
    cli("hold", "remove", "s1", hold_id, "--at", "2026-12-21T09:00:00+07:00")
    released = json.loads(cli("explain", "s1", "--at", "2026-12-21T10:00:00+07:00", "--json"))
    assert released["phase"] == "terminated"  # the archive's 7 days start at the release
    later = json.loads(cli("explain", "s1", "--at", "2026-12-28T10:00:00+07:00", "--json"))
    assert later["phase"] == "purged"
    purge = next(e for e in later["timeline"] if e["step"] == "purge")
    assert purge["delayed_by"].startswith("legal hold")


def test_hold_of_a_kind_the_policy_lacks_is_refused(cli) -> None:  # type: ignore[no-untyped-def]
    output = cli("hold", "add", "s1", "vacation", code=2)
    assert "no hold kind 'vacation'" in output


def test_services_list_json(cli) -> None:  # type: ignore[no-untyped-def]
    (row,) = json.loads(cli("services", "list", "--json"))
    assert row["service"] == "s1" and row["policy"] == "klikserver" and row["applied"] == "new"


def test_unknown_service_is_a_clear_error(cli) -> None:  # type: ignore[no-untyped-def]
    assert "unknown service 'nope'" in cli("explain", "nope", code=2)


def test_inventory_naming_an_unknown_pool_is_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = (REPO / "inventory" / "lab.yaml").read_text().replace("pool: lab-v4", "pool: lab-v6", 1)
    bad = tmp_path / "bad-inventory.yaml"
    bad.write_text(text)
    output = cli("--inventory", str(bad), "services", "list", code=2)
    assert "unknown pool 'lab-v6'" in output


def test_apply_runs_what_is_due(cli) -> None:  # type: ignore[no-untyped-def]
    report = json.loads(cli("apply", "--at", "2026-11-21", "--json"))
    # The invoice due 1 December went out on 17 November (Klikserver: 14 days before).
    assert [s["kind"] for s in report["steps"]] == ["create", "assign_ips", "notice"]
    assert all(s["state"] == "done" for s in report["steps"])


def _closed_colocation(cli, tmp_path: Path, sid: str) -> None:  # type: ignore[no-untyped-def]
    """A colocated box whose account closes on 1 December: its hand-over ladder starts."""
    closing = {
        "id": f"{sid}-closed",
        "service": sid,
        "at": "2026-12-01T10:00:00+07:00",
        "data": {"type": "service.cancelled"},
    }
    source = tmp_path / f"{sid}.json"
    source.write_text(
        json.dumps([created(sid, product="colocation", host="metal-jkt-1"), closing])
    )
    cli("event", str(source), "--at", "2026-12-01T10:00:00+07:00")


def test_steps_list_show_cancel_and_retry(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _closed_colocation(cli, tmp_path, "c1")
    cli("apply", "--at", "2027-03-02")
    steps = json.loads(cli("steps", "list", "--service", "c1", "--json"))
    (hand_over,) = [s for s in steps if s["kind"] == "hand_over"]
    assert hand_over["state"] == "awaiting"
    shown = json.loads(cli("steps", "show", str(hand_over["id"])))
    assert shown["params"]["automatic"] is False and "auctioned" in shown["params"]["why"]
    cli("steps", "cancel", str(hand_over["id"]))
    done = next(s for s in steps if s["state"] == "done")
    assert "cannot be cancelled" in cli("steps", "cancel", str(done["id"]), code=2)
    cli("steps", "retry", str(hand_over["id"]))
    assert json.loads(cli("steps", "show", str(hand_over["id"])))["state"] == "pending"
    assert json.loads(cli("audit", "verify", "--json"))["ok"] is True


def test_notifications_list_and_replay(cli) -> None:  # type: ignore[no-untyped-def]
    cli("apply", "--at", "2026-11-21")
    queued, reminder = json.loads(cli("notifications", "list", "--json"))
    assert queued["kind"] == "ip.assigned" and queued["state"] == "pending"
    assert reminder["kind"] == "service.notice"  # the invoice, 14 days before it falls due
    assert "not a dead letter" in cli("notifications", "replay", str(queued["id"]), code=2)
    assert json.loads(cli("notifications", "list", "--state", "dead", "--json")) == []


def test_colo_due_lists_boxes_whose_hand_over_has_come(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _closed_colocation(cli, tmp_path, "c2")
    assert json.loads(cli("colo", "due", "--at", "2027-02-28", "--json")) == []
    (due,) = json.loads(cli("colo", "due", "--at", "2027-03-02", "--json"))
    assert (due["service_id"], due["step"]) == ("c2", "not journaled")
    assert due["deadline"].startswith("2027-03-01T10:00") and "auctioned" in due["clause"]
    cli("apply", "--at", "2027-03-02")
    (due,) = json.loads(cli("colo", "due", "--at", "2027-03-02", "--json"))
    assert due["step"] == "awaiting" and due["phase"] == "handed_over"
    cli("apply", "--at", "2027-03-02", "--yes")
    (due,) = json.loads(cli("colo", "due", "--at", "2027-03-03", "--json"))
    assert due["step"] == "done"
    assert "c2" in cli("colo", "due", "--at", "2027-03-03")
