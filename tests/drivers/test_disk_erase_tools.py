"""The purge module against nvme-cli's and hdparm's own outputs.

The outputs are recorded from the tools' source: nvme-cli's
``json_sanitize_log`` (src/nvme-print-json.c) and hdparm's
``do_sanitize_cmd``/``sanitize_normal_output`` and ``-I`` security section.
Stand-in ``nvme`` and ``hdparm`` executables on PATH print them in turn and
log every argument vector, so the module runs its real subprocess code.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.drivers.test_disk_erase import HDPARM_HEAD, SECURITY_NOT_FROZEN, disk_erase

TOOL = """#!/bin/sh
# Stand-in for {name}: log the arguments, print the next recorded answer for them.
echo "$*" >> "{log}"
for word in "$@"; do
  case "$word" in
    -I|id-ctrl|sanitize-log|--sanitize-status|--security-erase|--security-erase-enhanced)
      key=$(echo "$word" | tr -d -)
      n=$(cat "{dir}/$key.n" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{dir}/$key.n"
      file="{dir}/$key.$n"; [ -f "$file" ] || file=$(ls "{dir}/$key".[0-9]* | sort -V | tail -1)
      [ -f "{dir}/$key.sleep" ] && exec sleep "$(cat "{dir}/$key.sleep")"
      cat "$file"
      exit $(cat "{dir}/$key.rc" 2>/dev/null || echo 0)
      ;;
  esac
done
"""


def sanitize_log(device: str, status: int, text: str) -> str:
    """nvme-cli's JSON sanitize log, as ``json_sanitize_log`` builds it."""
    return json.dumps({device: {
        "sprog": 65535 if status != 2 else 16384,
        "sstat": {"media_verification_canceled": 0, "global_erased": int(status == 1),
                  "no_cmplted_passes": 1, "status": f"({status}) {text}"},
        "cdw10_info": 2, "time_over_write": 4294967295, "time_block_erase": 4294967295,
        "time_crypto_erase": 4294967295, "time_over_write_no_dealloc": 4294967295,
        "time_block_erase_no_dealloc": 4294967295, "time_crypto_erase_no_dealloc": 4294967295,
        "time_post_verification_dealloc": 4294967295,
        "sanitize_state_information": {"sanitize_state": "(0) Sanitize State Idle"},
    }})


IN_PROGRESS = sanitize_log("nvme0n1", 2, "Sanitize in Progress.")
COMPLETED = sanitize_log("nvme0n1", 1, "Most Recent Sanitize Command Completed Successfully.")
FAILED = sanitize_log("nvme0n1", 3, "Most Recent Sanitize Command Failed.")
ATA_IN_PROCESS = """
/dev/sda:
Issuing SANITIZE_STATUS command
Sanitize status:
    State:    SD2 Sanitize operation In Process
    Progress: 0x41c2 (25%)
"""
ATA_DONE = """
/dev/sda:
Issuing SANITIZE_STATUS command
Sanitize status:
    State:    SD0 Sanitize Idle
    Last Sanitize Operation Completed Without Error
"""
ATA_FROZEN = """
/dev/sda:
Issuing SANITIZE_STATUS command
Sanitize status:
    State:    SD1 Sanitize Frozen
"""
ATA_SANITIZE = "\t   *\tSANITIZE feature set\n\t   *\tBLOCK_ERASE_EXT command\n"
SSD = "\tNominal Media Rotation Rate: Solid State Device\n"
HDD = "\tNominal Media Rotation Rate: 7200\n"


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of recorded answers; ``log`` there collects every command line."""
    answers = tmp_path / "answers"
    answers.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("nvme", "hdparm"):
        path = bin_dir / name
        path.write_text(TOOL.format(name=name, dir=answers, log=answers / "log"))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(disk_erase, "POLL_SECONDS", 0, raising=False)
    return answers


def answer(tools: Path, key: str, *outputs: str, rc: int = 0) -> None:
    for n, output in enumerate(outputs, 1):
        (tools / f"{key}.{n}").write_text(output)
    (tools / f"{key}.rc").write_text(str(rc))


def disk(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(os.urandom(256 * 1024))
    return str(path)


def commands(tools: Path) -> list[str]:
    return (tools / "log").read_text().splitlines()


@pytest.mark.parametrize(
    ("log", "status"),
    [(IN_PROGRESS, 2), (COMPLETED, 1), (FAILED, 3),
     (sanitize_log("nvme0n1", 4, "Most Recent Sanitize Command (No-Deallocate After "
                   "Sanitize) Completed Successfully."), 4),
     (json.dumps({"nvme0n1": {"sstat": 0x0103}}), 3)],  # older nvme-cli: the raw register
)
def test_the_sanitize_status_is_read_from_nvme_clis_nested_json(log: str, status: int) -> None:
    assert disk_erase.nvme_sanitize_status(log) == status


def test_an_nvme_sanitize_is_polled_until_it_completes(tools: Path, tmp_path: Path) -> None:
    answer(tools, "idctrl", json.dumps({"sn": "S4EW", "sanicap": 0x2, "fna": 0}))
    answer(tools, "sanitizelog", IN_PROGRESS, IN_PROGRESS, COMPLETED)
    record = disk_erase.erase_device(disk(tmp_path, "nvme0n1"), samples=8, seed=1)
    assert record["method"] == "nvme-sanitize-block" and record["sanitize_status"] == 1
    assert [c for c in commands(tools) if c.startswith("sanitize-log")] == [
        f"sanitize-log {tmp_path}/nvme0n1 -o json"] * 3


def test_a_failed_nvme_sanitize_is_a_failed_erase(tools: Path, tmp_path: Path) -> None:
    answer(tools, "idctrl", json.dumps({"sn": "S4EW", "sanicap": 0x1, "fna": 0}))
    answer(tools, "sanitizelog", IN_PROGRESS, FAILED)
    record = disk_erase.erase_device(disk(tmp_path, "nvme0n1"), samples=8, seed=1)
    assert record["result"] == "failed" and "sanitize failed" in record["error"]


def test_ata_sanitize_is_polled_until_the_drive_reports_it_done(
    tools: Path, tmp_path: Path
) -> None:
    answer(tools, "I", HDPARM_HEAD + SSD + ATA_SANITIZE + SECURITY_NOT_FROZEN)
    answer(tools, "sanitizestatus", ATA_IN_PROCESS, ATA_IN_PROCESS, ATA_DONE)
    device = disk(tmp_path, "sda")
    ran = disk_erase.firmware_erase(device, "ata-sanitize-block", {})
    assert ran == {"sanitize_status": "completed without error"}
    assert commands(tools) == [
        f"--yes-i-know-what-i-am-doing --sanitize-block-erase {device}",
        *[f"--sanitize-status {device}"] * 3,
    ]


def test_a_frozen_ata_sanitize_fails(tools: Path, tmp_path: Path) -> None:
    answer(tools, "sanitizestatus", ATA_FROZEN)
    with pytest.raises(disk_erase.EraseFailed, match="did not complete"):
        disk_erase.firmware_erase(disk(tmp_path, "sda"), "ata-sanitize-block", {})


def test_the_erase_waits_as_long_as_the_drive_says_and_no_password_is_secret(
    tools: Path, tmp_path: Path
) -> None:
    identify = HDPARM_HEAD + HDD + SECURITY_NOT_FROZEN.replace("8min", "410min")
    answer(tools, "I", identify)
    answer(tools, "securityeraseenhanced", " Issuing SECURITY_ERASE command, password=\"\"\n")
    caps = disk_erase.ata_caps(identify)
    assert caps["erase_minutes"] == {"normal": 2, "enhanced": 410}
    # hdparm itself waits the estimate plus an hour: the module waits longer than hdparm.
    assert disk_erase.security_erase_timeout(caps, True, 10**9) > (410 + 60) * 60
    record = disk_erase.erase_device(disk(tmp_path, "sda"), samples=8, seed=1)
    assert record["method"] == "ata-secure-erase-enhanced" and record["nist_category"] == "purge"
    passwords = {c.split()[c.split().index(f) + 1] for c in commands(tools)
                 for f in ("--security-set-pass", "--security-erase-enhanced") if f in c}
    assert passwords == {"NULL"} and "NULL" in record["ata_password"]


def test_a_failed_security_erase_leaves_no_password_set(tools: Path, tmp_path: Path) -> None:
    answer(tools, "I", HDPARM_HEAD + HDD + SECURITY_NOT_FROZEN)
    answer(tools, "securityeraseenhanced", "SECURITY_ERASE: Input/output error\n", rc=5)
    record = disk_erase.erase_device(disk(tmp_path, "sda"), samples=8, seed=1)
    assert record["result"] == "failed" and "security erase failed" in record["error"]
    assert commands(tools)[-1].startswith("--user-master u --security-disable NULL")


def test_an_erase_past_its_time_fails_only_once_hdparm_has_exited(
    tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer(tools, "I", HDPARM_HEAD + HDD + SECURITY_NOT_FROZEN)
    answer(tools, "securityeraseenhanced", "")
    (tools / "securityeraseenhanced.sleep").write_text("30")
    monkeypatch.setattr(disk_erase, "security_erase_timeout", lambda *_: 0.5)
    record = disk_erase.erase_device(disk(tmp_path, "sda"), samples=8, seed=1)
    assert record["result"] == "failed" and "still running" in record["error"]
    assert commands(tools)[-1].startswith("--user-master u --security-disable NULL")
    hung = [p for p in Path("/proc").glob("[0-9]*/cmdline")
            if b"--security-erase-enhanced" in _read(p)]
    assert hung == []  # killed and waited for before the failure was reported


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize(
    ("media", "enhanced", "category"),
    [(SSD, False, "clear"), (HDD, False, "purge"), (SSD, True, "purge"), ("", False, "clear")],
)
def test_a_plain_security_erase_purges_only_a_spinning_disk(
    media: str, enhanced: bool, category: str
) -> None:
    security = SECURITY_NOT_FROZEN if enhanced else SECURITY_NOT_FROZEN.replace(
        "\t\tsupported: enhanced erase\n", "")
    caps = disk_erase.ata_caps(HDPARM_HEAD + media + security)
    method = disk_erase.choose_method(caps)
    assert disk_erase.nist_category(method, caps) == category
