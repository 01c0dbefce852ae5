"""The ``ips`` commands through Typer's runner, on a store of their own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from orchestrator.faces.cli import app
from orchestrator.state import ipam
from orchestrator.state.db import open_engine
from tests.conftest import REPO, wib

Cli = Callable[..., str]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def cli(db: str) -> Cli:
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--db", db, *args], env={"USER": "ana"})
        assert result.exit_code == code, result.output
        return result.output

    run("init")
    return run


@pytest.fixture
def quarantined(db: str, cli: Cli) -> str:
    """192.0.2.4, reclaimed from s1 until the end of December (WIB)."""
    sessions = sessionmaker(open_engine(db))
    with sessions.begin() as session:
        address = ipam.assign(session, "lab-v4", "s1", wib(2026, 12, 1))
        ipam.reclaim(session, "s1", wib(2026, 12, 31), wib(2026, 12, 2))
    return address


def _show(cli: Cli, address: str) -> dict[str, Any]:
    return dict(json.loads(cli("ips", "show", address, "--json", "--at", "2026-12-03")))


def test_list_filters_by_pool_and_state(cli: Cli) -> None:
    reserved = json.loads(cli("ips", "list", "--state", "reserved", "--json"))
    expected = ["198.51.100.1", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [r["address"] for r in reserved] == expected
    colo = json.loads(cli("ips", "list", "--pool", "colo-v4", "--state", "free", "--json"))
    assert len(colo) == 61 and {r["pool"] for r in colo} == {"colo-v4"}
    assert "192.0.2.4" in cli("ips", "list", "--pool", "lab-v4")
    lab = json.loads(cli("ips", "list", "--pool", "lab-v4", "--json"))
    assert [r["address"] for r in lab[8:10]] == ["192.0.2.9", "192.0.2.10"]


def test_show_in_words(cli: Cli) -> None:
    assert "unchanged since it was seeded" in cli("ips", "show", "192.0.2.9")
    cli("ips", "block", "192.0.2.9", "--reason", "on a blocklist")
    shown = cli("ips", "show", "192.0.2.9")
    assert "blocked" in shown and "on a blocklist" in shown


def test_show_release_and_its_audit_entry(cli: Cli, quarantined: str) -> None:
    shown = _show(cli, quarantined)
    assert shown["state"] == "quarantine" and shown["last_service_id"] == "s1"
    assert shown["quarantine_until"].startswith("2026-12-31T00:00:00+07:00")
    assert "released: now free" in cli("ips", "release", quarantined, "--at", "2026-12-03")
    last = _show(cli, quarantined)["history"][-1]
    assert (last["from_state"], last["to_state"], last["actor"]) == (
        "quarantine", "free", "operator:ana"
    )
    assert json.loads(cli("audit", "verify", "--json"))["entries"] == 1


def test_extend_takes_a_date_as_the_end_of_that_day(cli: Cli, quarantined: str) -> None:
    cli("ips", "extend", quarantined, "--until", "2027-01-15", "--at", "2026-12-03")
    shown = _show(cli, quarantined)
    assert shown["quarantine_until"] == "2027-01-15T23:59:59+07:00"
    assert shown["history"][-1]["reason"] == "quarantine extended"


def test_block_needs_force_for_an_assigned_address(db: str, cli: Cli) -> None:
    sessions = sessionmaker(open_engine(db))
    with sessions.begin() as session:
        address = ipam.assign(session, "lab-v4", "s1", wib(2026, 12, 1))
    refused = cli("ips", "block", address, "--reason", "spam", code=2)
    assert "assigned to s1" in refused and "force" in refused
    assert _show(cli, address)["state"] == "assigned"
    cli("ips", "block", address, "--reason", "spam", "--force")
    shown = _show(cli, address)
    assert shown["state"] == "blocked" and shown["history"][-1]["reason"] == "spam"
    assert "unblocked: now free" in cli("ips", "unblock", address)
    assert json.loads(cli("audit", "verify", "--json"))["entries"] == 2


def test_block_without_a_reason_is_refused_by_the_parser(cli: Cli) -> None:
    assert "--reason" in cli("ips", "block", "192.0.2.9", code=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ips", "show", "192.0.2.999"), "'192.0.2.999' is not an IP address"),
        (("ips", "release", "10.1.2.3"), "10.1.2.3 is in no pool"),
        (("ips", "release", "192.0.2.9"), "192.0.2.9 is free, not quarantine"),
        (("ips", "unblock", "192.0.2.9"), "192.0.2.9 is free, not blocked"),
        (("ips", "extend", "192.0.2.9", "--until", "next week"), "--until 'next week' is neither"),
        (("ips", "extend", "192.0.2.9", "--until", "2027-01-01"), "is free, not quarantine"),
        (("ips", "block", "192.0.2.1", "--reason", "x"), "192.0.2.1 is reserved"),
        (("ips", "list", "--state", "gone"), "unknown state 'gone'"),
        (("ips", "list", "--pool", "nowhere"), "unknown pool 'nowhere'"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    cli: Cli, args: tuple[str, ...], message: str
) -> None:
    before = cli("ips", "list", "--json")
    assert message in cli(*args, code=2)
    assert cli("ips", "list", "--json") == before
    assert json.loads(cli("audit", "verify", "--json"))["entries"] == 0


def test_an_ipv6_pool_from_the_inventory(tmp_path: Path) -> None:
    v6 = """      lab-v6:
        site: jkt
        cidr: 2001:db8:77::/64
        gateway: 2001:db8:77::1
        range: [2001:db8:77::100, 2001:db8:77::1ff]
        reserved: [2001:db8:77::100-2001:db8:77::103]
"""
    text = (REPO / "inventory" / "lab.yaml").read_text()
    inventory = tmp_path / "v6.yaml"
    inventory.write_text(text.replace("      colo-v4:\n", v6 + "      colo-v4:\n", 1))
    runner = CliRunner()
    base = ["--db", f"sqlite:///{tmp_path / 'v6.db'}", "--inventory", str(inventory)]
    assert runner.invoke(app, [*base, "init"]).exit_code == 0
    listed = runner.invoke(app, [*base, "ips", "list", "--pool", "lab-v6", "--json"])
    rows = json.loads(listed.output)
    assert len(rows) == 256 and {r["site"] for r in rows} == {"jkt"}
    assert [r["state"] for r in rows[:5]] == ["reserved"] * 4 + ["free"]
