"""The faces call the engine's use-cases, never the store: nothing under orchestrator/faces/
imports orchestrator.state or SQLAlchemy (the import-linter contract "faces ⟂ state" to come)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

FACES = REPO / "orchestrator" / "faces"
FORBIDDEN = ("orchestrator.state", "sqlalchemy")


def _imported(path: Path) -> list[str]:
    """Every module a file imports, at any depth (a lazy import inside a function too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import hides what it reaches"
            module = node.module or ""
            found += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return found


def _forbidden(name: str) -> bool:
    return any(name == root or name.startswith(f"{root}.") for root in FORBIDDEN)


@pytest.mark.parametrize(
    "path", sorted(FACES.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO))
)
def test_a_face_imports_neither_the_state_layer_nor_sqlalchemy(path: Path) -> None:
    assert [name for name in _imported(path) if _forbidden(name)] == []


def test_the_check_sees_what_it_must_refuse(tmp_path: Path) -> None:
    sample = tmp_path / "face.py"
    sample.write_text(
        "from orchestrator import state\n"
        "def f():\n    import sqlalchemy.orm\n"
        "from orchestrator.engine import operations\n"
        "from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore\n"
    )
    assert [name for name in _imported(sample) if _forbidden(name)] == [
        "orchestrator.state",
        "sqlalchemy.orm",
    ]
