"""The IPMI driver patches pyghmi's private session: only on the releases it was proven on."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from drivers.base import PermanentError
from drivers.ipmi import PROVEN_PYGHMI, _require_proven_pyghmi
from tests.conftest import REPO

# In a fresh interpreter, so the patch state seen is this driver's alone.
UNPROVEN = """
from importlib import metadata
real = metadata.version
metadata.version = lambda name: "1.7.0" if name == "pyghmi" else real(name)
from drivers.base import PermanentError
from drivers.ipmi import Bmc, IpmiPower
from pyghmi.ipmi.private import session
try:
    IpmiPower({"box": Bmc("127.0.0.1", 9, "admin", None)})
except PermanentError as exc:
    print("REFUSED", exc)
print("PATCHED" if getattr(session.Session, "_orchestrator_negotiates", False) else "UNTOUCHED")
"""


def test_an_unproven_pyghmi_is_refused_before_anything_is_patched() -> None:
    result = subprocess.run([sys.executable, "-c", UNPROVEN], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert "REFUSED pyghmi 1.7.0 is not a version" in result.stdout
    assert result.stdout.rstrip().endswith("UNTOUCHED")


@pytest.mark.parametrize("version", ["1.5.0", "1.6.18", "1.7.0", "2.0.1"])
def test_versions_outside_the_proven_range_are_refused(version: str) -> None:
    with pytest.raises(PermanentError, match=f"pyghmi {version} is not a version"):
        _require_proven_pyghmi(version)


def test_the_installed_pyghmi_is_proven_and_pyproject_pins_the_same_range() -> None:
    _require_proven_pyghmi(metadata.version("pyghmi"))
    low, high = (".".join(map(str, v)) for v in PROVEN_PYGHMI)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"pyghmi>={low},<{high}" in project["dependencies"]
