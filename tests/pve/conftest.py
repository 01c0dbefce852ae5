"""The Proxmox VE emulator (lab/pve) as a real HTTPS process, one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.pve.harness import PveLab, start_lab


@pytest.fixture(scope="module")
def pve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PveLab]:
    lab = start_lab(tmp_path_factory.mktemp("pve"))
    try:
        yield lab
    finally:
        lab.stop()
