"""The code's own rules: ruff and mypy clean, and the core never imports a protocol library."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PROTOCOL_LIBRARIES = {"libvirt", "proxmoxer", "pyghmi", "paramiko", "ansible_runner", "requests"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((REPO / "orchestrator").rglob("*.py")), ids=str)
def test_core_imports_no_protocol_library(path: Path) -> None:
    assert not _imports(path) & PROTOCOL_LIBRARIES


def test_drivers_contract_imports_no_protocol_library() -> None:
    assert not _imports(REPO / "drivers" / "base.py") & PROTOCOL_LIBRARIES


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "orchestrator", "drivers", "tests", "bench", "lab")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_the_core() -> None:
    result = _run("mypy", "orchestrator")
    assert result.returncode == 0, result.stdout + result.stderr
