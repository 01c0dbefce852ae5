"""The layer rules hold: `lint-imports` keeps pyproject.toml's contracts, and can fail.

The contracts are in ``[tool.importlinter]`` and drawn in orchestrator/ARCHITECTURE.md. The
second half proves each contract bites: in a copy of the tree, one deliberate import per
contract breaks it, and lint-imports (run on the copy, not on the installed package) names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

# The console script sits beside the venv's python; importlinter.cli has no __main__.
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
TREES = ("orchestrator", "drivers", "lab")


def _lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """lint-imports run from root, finding the packages there before any installed copy."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    args += [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)


def _contract_ids() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [contract["id"] for contract in config["tool"]["importlinter"]["contracts"]]


@pytest.mark.parametrize("contract", _contract_ids())
def test_the_contract_holds(contract: str) -> None:
    result = _lint_imports(REPO, contract)
    assert result.returncode == 0, result.stdout + result.stderr


def _copy_tree(tmp_path: Path) -> Path:
    for tree in TREES:
        shutil.copytree(
            REPO / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


# (contract id, its name as lint-imports prints it, file to append to, the import, the import
# as lint-imports reports it).
VIOLATIONS = [
    (
        "layers",
        "orchestrator's layers point down",
        "orchestrator/core/policy.py",
        "import orchestrator.faces.cli  # noqa",
        "orchestrator.core.policy -> orchestrator.faces.cli",
    ),
    (
        "layers",
        "orchestrator's layers point down",
        "orchestrator/secrets/redact.py",
        "import orchestrator.core.days  # noqa",
        "orchestrator.secrets.redact -> orchestrator.core.days",
    ),
    (
        "drivers-standalone",
        "drivers import nothing from orchestrator",
        "drivers/base.py",
        "import orchestrator.secrets.redact  # noqa",
        "drivers.base -> orchestrator.secrets.redact",
    ),
    (
        "lab-standalone",
        "the lab never imports the code it judges",
        "lab/bmcs.py",
        "import orchestrator.engine  # noqa",
        "lab.bmcs -> orchestrator.engine",
    ),
    (
        "lab-standalone",
        "the lab never imports the code it judges",
        "lab/pve/app.py",
        "import drivers.proxmox  # noqa",
        "lab.pve.app -> drivers.proxmox",
    ),
    (
        "faces-use-cases",
        "faces call use-cases, never the store",
        "orchestrator/faces/views.py",
        "import orchestrator.state.db  # noqa",
        "orchestrator.faces.views -> orchestrator.state.db",
    ),
    (
        "core-pure",
        "the core is pure",
        "orchestrator/core/days.py",
        "import sqlalchemy  # noqa",
        "orchestrator.core.days -> sqlalchemy",
    ),
    (
        "core-pure",
        "the core is pure",
        "orchestrator/core/lifecycle.py",
        "import paramiko  # noqa",
        "orchestrator.core.lifecycle -> paramiko",
    ),
]


@pytest.mark.parametrize(
    ("contract", "name", "path", "line", "reported"), VIOLATIONS, ids=[v[2] for v in VIOLATIONS]
)
def test_a_deliberate_violation_breaks_its_contract(
    tmp_path: Path, contract: str, name: str, path: str, line: str, reported: str
) -> None:
    root = _copy_tree(tmp_path)
    with (root / path).open("a") as module:
        module.write(f"\n{line}\n")
    result = _lint_imports(root, contract)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    broken = [row for row in output.splitlines() if row.startswith(name)]
    assert broken and broken[0].endswith("BROKEN"), output
    # The copy's import is what is named: lint-imports read the copy, not the installed package.
    assert reported in output, output
