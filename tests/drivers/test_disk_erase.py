"""The purge playbook's module: which method a device gets, and what its record proves.

The lab's disks are loop devices, which only an overwrite can erase; the
firmware methods are chosen from capabilities as real devices report them
(``nvme id-ctrl -o json`` and ``hdparm -I`` output), and the overwrite runs
here on a real file, read back past the page cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "disk_erase", REPO / "playbooks" / "library" / "disk_erase.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


disk_erase = _module()

HDPARM_HEAD = """
/dev/sda:

ATA device, with non-removable media
\tModel Number:       Samsung SSD 870 EVO 1TB
\tSerial Number:      S6PTNZ0R123456A
Commands/features:
\tEnabled\tSupported:
\t   *\tSMART feature set
"""
SECURITY_NOT_FROZEN = """Security:
\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\tnot\tfrozen
\tnot\texpired: security count
\t\tsupported: enhanced erase
\t2min for SECURITY ERASE UNIT. 8min for ENHANCED SECURITY ERASE UNIT.
"""
SECURITY_FROZEN = """Security:
\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\t\tfrozen
\tnot\texpired: security count
\t\tsupported: enhanced erase
"""
SANITIZE = """\t   *\tSANITIZE feature set
\t   *\tCRYPTO_SCRAMBLE_EXT command
\t   *\tBLOCK_ERASE_EXT command
"""


@pytest.mark.parametrize(
    ("id_ctrl", "method"),
    [
        ({"sanicap": 0x3, "fna": 0x4}, "nvme-sanitize-crypto"),
        ({"sanicap": 0x2, "fna": 0x4}, "nvme-sanitize-block"),
        ({"sanicap": 0x0, "fna": 0x4}, "nvme-format-crypto"),
        ({"sanicap": 0x0, "fna": 0x0}, "overwrite"),
    ],
)
def test_nvme_gets_its_strongest_method(id_ctrl: dict[str, int], method: str) -> None:
    caps = disk_erase.nvme_caps(json.dumps({"sn": "S4EWNX0R", **id_ctrl}))
    assert disk_erase.choose_method(caps) == method


@pytest.mark.parametrize(
    ("hdparm", "method"),
    [
        (HDPARM_HEAD + SANITIZE + SECURITY_NOT_FROZEN, "ata-sanitize-crypto"),
        (HDPARM_HEAD + SECURITY_NOT_FROZEN, "ata-secure-erase-enhanced"),
        (HDPARM_HEAD + SECURITY_NOT_FROZEN.replace("\t\tsupported: enhanced erase\n", ""),
         "ata-secure-erase"),
        # A frozen drive refuses SECURITY ERASE until a power cycle: overwrite, never "done".
        (HDPARM_HEAD + SECURITY_FROZEN, "overwrite"),
        (HDPARM_HEAD, "overwrite"),
    ],
)
def test_ata_gets_its_strongest_method(hdparm: str, method: str) -> None:
    assert disk_erase.choose_method(disk_erase.ata_caps(hdparm)) == method


def test_only_firmware_methods_count_as_purge_and_overwrite_as_clear() -> None:
    assert disk_erase.nist_category("overwrite") == "clear"
    spinning = {"rotating": True}
    assert {disk_erase.nist_category(m, spinning) for m in disk_erase.PURGE_METHODS} == {"purge"}


def test_an_overwrite_of_a_real_file_is_verified_from_the_medium(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(os.urandom(3 * 1024 * 1024 + 4096))
    record = disk_erase.erase_device(str(disk), samples=16, seed=7)
    assert record["method"] == "overwrite" and record["nist_category"] == "clear"
    assert record["result"] == "verified"
    assert record["bytes"] == record["bytes_written"] == disk.stat().st_size
    size = disk.stat().st_size  # the first and last blocks are always among the samples
    assert record["samples_checked"] == len(disk_erase.sample_offsets(size, 16, 7)) >= 17
    assert disk.read_bytes().count(0) == disk.stat().st_size
    for field in ("device", "serial", "passes", "started_at", "finished_at", "capabilities"):
        assert field in record


def test_a_quick_wipe_is_never_reported_as_verified(tmp_path: Path) -> None:
    """A wipe of the first megabyte (a new partition table) leaves data behind."""
    disk = tmp_path / "disk"
    disk.write_bytes(os.urandom(4 * 1024 * 1024))
    offsets = disk_erase.sample_offsets(disk.stat().st_size, 32, 3)
    with disk.open("r+b") as handle:
        handle.write(bytes(1024 * 1024))
    after = disk_erase.read_samples(str(disk), offsets)
    assert not disk_erase._verify("overwrite", [], after, 0)
    # A firmware erase that changed nothing: samples as they were, and not uniform.
    unchanged = [hashlib.sha256(block).hexdigest() for block in after]
    assert not disk_erase._verify("nvme-sanitize-crypto", unchanged, after, 0)
    assert disk_erase._verify("nvme-sanitize-crypto", ["changed"] * len(after), after, 0)
