"""The drivers stand alone: no module under drivers/ imports the orchestrator.

Secrets come in as values (``drivers.base.Secret``), resolved by the loader
on the orchestrator's side (``orchestrator.engine.wiring``); errors are
redacted where the orchestrator stores or shows them. Checked on the source's
syntax tree, so an import inside a function or behind a condition counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

DRIVERS = Path(__file__).resolve().parents[2] / "drivers"
MODULES = sorted(DRIVERS.rglob("*.py"))


def imported(tree: ast.AST) -> list[str]:
    """Every module name an import statement in ``tree`` names."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            names.append(node.args[0].value)  # type: ignore[attr-defined]
    return names


def _dynamic_import(call: ast.Call) -> bool:
    """``importlib.import_module("...")`` or ``__import__("...")`` with a literal name."""
    func = call.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("__import__", "import_module")
    )
    return (
        named and bool(call.args) and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def test_there_are_drivers_to_check() -> None:
    assert len(MODULES) >= 10 and DRIVERS / "base.py" in MODULES
    assert DRIVERS / "libvirt" / "compute.py" in MODULES  # packages are walked too


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(DRIVERS)))
def test_a_driver_module_imports_nothing_of_the_orchestrator(module: Path) -> None:
    tree = ast.parse(module.read_text(encoding="utf-8"), filename=str(module))
    offending = [name for name in imported(tree) if name.split(".")[0] == "orchestrator"]
    assert offending == [], f"{module.relative_to(DRIVERS.parent)} imports {offending}"


def test_the_check_sees_every_kind_of_import() -> None:
    source = (
        "import orchestrator.a\nfrom orchestrator.b import c\n"
        "def f():\n    from orchestrator import d\n"
        "importlib.import_module('orchestrator.e')\n"
    )
    assert imported(ast.parse(source)) == [
        "orchestrator.a", "orchestrator.b", "orchestrator", "orchestrator.e"
    ]


def test_importing_every_driver_starts_nothing() -> None:
    """No thread, no handler at import: libvirt's event loop starts on the first connection."""
    names = [
        ".".join(p.relative_to(DRIVERS.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in MODULES
    ]
    probe = (
        "import importlib, sys, threading\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted(t.name for t in threading.enumerate()))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'orchestrator'))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], cwd=DRIVERS.parent, capture_output=True, text=True,
        check=True,
    )
    assert ran.stdout.splitlines() == ["['MainThread']", "[]"]
