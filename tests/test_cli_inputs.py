"""Bad files and arguments: one clear line naming the file or argument, a non-zero exit,
nothing recorded, never a traceback (finding 12); texts shown verbatim (issue 17, item 2)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.faces.cli import app
from tests.conftest import REPO, created

Run = Callable[..., Any]
WIDE = {"COLUMNS": "240", "USER": "ana"}


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def run() -> Run:
    runner = CliRunner()

    def invoke(*args: str, stdin: str | bytes | None = None) -> Any:
        return runner.invoke(app, list(args), input=stdin, env=WIDE)

    return invoke


def _refused(result: Any, *words: str) -> str:
    """Exit non-zero, on purpose (no exception escaped), with one line saying why."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = " ".join(result.output.split())
    assert "Traceback" not in result.output
    for word in words:
        assert word in text, result.output
    return text


def _events(db: str) -> int:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        return int(connection.execute("SELECT count(*) FROM events").fetchone()[0])


def _init(run: Run, db: str, *services: str) -> None:
    assert run("--db", db, "init").exit_code == 0
    stdin = json.dumps([created(s) for s in services])
    assert run("--db", db, "event", "-", stdin=stdin).exit_code == 0


# -- Rich output: error texts and ids shown as written ------------------------


def test_steps_list_shows_bracketed_errors_verbatim(run: Run, db: str) -> None:
    _init(run, db, "s1")
    assert run("--db", db, "apply").exit_code == 0
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE steps SET error = 'disk [sda] failed, see [/var/log/x]'")
    result = run("--db", db, "steps", "list")
    assert result.exit_code == 0, result.output
    assert "disk [sda] failed, see [/var/log/x]" in result.output


@pytest.mark.parametrize("service", ["[/var/log/x]", "disk [sda] failed", "[bold]x"])
def test_the_error_path_shows_bracketed_ids_verbatim(run: Run, db: str, service: str) -> None:
    _init(run, db)
    result = run("--db", db, "explain", service)
    assert _refused(result) == f"error: unknown service {service!r}"


# -- files ---------------------------------------------------------------------


def _policies(tmp_path: Path, name: str, content: bytes) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / name).write_bytes(content)
    return directory


def test_a_non_utf8_policy_is_named_with_its_line(run: Run, db: str, tmp_path: Path) -> None:
    text = (REPO / "inventory" / "policies" / "klikserver.yaml").read_bytes()
    directory = _policies(tmp_path, "klikserver.yaml", b"# caf\xe9\n" + text)
    result = run("--db", db, "--policies", str(directory), "init")
    _refused(result, f"{directory / 'klikserver.yaml'}:1: not UTF-8 text")
    checked = run("policy", "check", str(directory / "klikserver.yaml"))
    _refused(checked, "klikserver.yaml:1: not UTF-8 text")


def test_a_missing_policies_directory_is_named(run: Run, db: str, tmp_path: Path) -> None:
    result = run("--db", db, "--policies", str(tmp_path / "nowhere"), "init")
    _refused(result, f"--policies {tmp_path / 'nowhere'}: no such directory")


def test_a_duplicate_policy_key_is_refused_with_its_line(run: Run, tmp_path: Path) -> None:
    text = (REPO / "inventory" / "policies" / "klikserver.yaml").read_text()
    first_key = next(line for line in text.splitlines() if line and not line.startswith("#"))
    twice = text + first_key + "\n"
    directory = _policies(tmp_path, "klikserver.yaml", twice.encode())
    line = len(twice.splitlines())
    key = first_key.split(":")[0]
    result = run("policy", "check", str(directory / "klikserver.yaml"))
    _refused(result, f"klikserver.yaml:{line}:", f"key {key!r} is written twice")


def _inventory(tmp_path: Path, children: dict[str, Any]) -> Path:
    data = {"all": {"vars": {"pools": {"lab-v4": {"cidr": "192.0.2.0/24"}}}, "children": children}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_host_in_two_groups_is_refused_with_its_line(run: Run, db: str, tmp_path: Path) -> None:
    groups = {
        "jakarta": {"hosts": {"kvm-1": {"driver": "libvirt", "pool": "lab-v4"}}},
        "surabaya": {"hosts": {"kvm-1": {"driver": "libvirt", "pool": "lab-v4"}}},
    }
    path = _inventory(tmp_path, groups)
    line = path.read_text().splitlines().index("        kvm-1:", 10) + 1
    result = run("--db", db, "--inventory", str(path), "init")
    _refused(result, f"{path}:{line}:", "host kvm-1 is listed in jakarta and in surabaya")


def test_an_unknown_driver_is_refused_with_its_line(run: Run, db: str, tmp_path: Path) -> None:
    path = _inventory(
        tmp_path, {"x": {"hosts": {"kvm-1": {"driver": "libvrit", "pool": "lab-v4"}}}}
    )
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if "driver:" in t)
    result = run("--db", db, "--inventory", str(path), "init")
    _refused(result, f"{path}:{line}:", "unknown compute driver 'libvrit'")


# -- stores ------------------------------------------------------------------


def test_an_unreachable_postgresql_is_one_line(run: Run) -> None:
    url = "postgresql+psycopg://orch:hunter22secret@127.0.0.1:1/orch"
    result = run("--db", url, "services", "list")
    text = _refused(result, "cannot open the store postgresql+psycopg://orch:***@127.0.0.1:1/orch")
    assert "hunter22secret" not in text and len(result.output.strip().splitlines()) == 1


def test_an_unopenable_sqlite_path_is_one_line(run: Run, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'o.db'}"
    result = run("--db", url, "init")
    _refused(result, f"cannot open the store {url}: unable to open database file")


# -- arguments and events ------------------------------------------------------


def test_removing_a_hold_the_service_lacks_fails_and_records_nothing(run: Run, db: str) -> None:
    _init(run, db, "s1")
    before = _events(db)
    result = run("--db", db, "hold", "remove", "s1", "no-such-hold")
    _refused(result, "s1 has no hold 'no-such-hold' (its holds: none)")
    assert _events(db) == before
    placed = run("--db", db, "hold", "add", "s1", "legal", "--reason", "police request")
    hold_id = placed.output.split()[3]
    assert run("--db", db, "hold", "remove", "s1", hold_id).exit_code == 0


def test_deeply_nested_event_json_is_refused_not_a_crash(run: Run, db: str) -> None:
    _init(run, db)
    result = run("--db", db, "event", "-", stdin="[" * 100_000 + "]" * 100_000)
    _refused(result, "nothing was stored: JSON nested deeper than 32 levels")
    assert _events(db) == 0


def test_a_non_utf8_event_file_is_named(run: Run, db: str, tmp_path: Path) -> None:
    _init(run, db)
    source = tmp_path / "events.json"
    source.write_bytes(b'{"id": "caf\xe9"}')
    _refused(run("--db", db, "event", str(source)), f"{source}:1: not UTF-8 text")
    _refused(run("--db", db, "event", "-", stdin=b'{"id": "caf\xe9"}'), "stdin: not UTF-8 text")
