#!/usr/bin/python3
"""Ansible module: erase a box's disks after NIST SP 800-88 and prove it by reading back.

Runs on the box (booted into the rescue system). Per device it reads what
the device can do, picks the strongest method it supports, erases, then
verifies by reading samples back, and returns one erase record a device.

Method order (strongest first; NIST SP 800-88 Rev. 1, table A-8 for ATA
and NVMe): NVMe Sanitize Crypto Erase, NVMe Sanitize Block Erase, NVMe
Format with Cryptographic Erase, ATA Sanitize Crypto Scramble, ATA
Sanitize Block Erase, ATA Enhanced Security Erase, ATA Security Erase,
then a full overwrite. The sanitize and format methods and the enhanced
security erase are NIST "Purge"; the plain (normal) security erase is
"Purge" on a rotating disk only: on a solid-state one it need not reach
spare and remapped blocks, and without the vendor's assurance it is
recorded as "Clear", as is overwrite. A frozen ATA device cannot take
security erase until power-cycled, so it drops to the next method.

Waiting for the device: NVMe sanitize and ATA SANITIZE run in the
background; the sanitize log (``nvme sanitize-log -o json``, its status
nested as ``{"<dev>": {"sstat": {"status": "(2) ..."}}}``) or ``hdparm
--sanitize-status`` is polled until the operation ends, and a failed one
(NVMe status 3, ATA "Sanitize Frozen" or no "Completed Without Error") is
a failure. SECURITY ERASE UNIT blocks in hdparm for as long as the drive
says it takes (``hdparm -I``: "Nmin for SECURITY ERASE UNIT"); it is given
that time plus hdparm's own margins, and a run past it is ended only once
hdparm has let go of the drive, whose security is then disabled.

The ATA security password: hdparm takes it only as a command-line argument
(``--security-set-pass PWD``; there is no file or stdin form), so no secret
is used at all: the password is hdparm's ``NULL`` (32 zero bytes), set for
this erase only and cleared by it (or by ``--security-disable`` when the
erase fails), and the record says so.

Verification: before erasing, a seeded sample of block-sized regions (plus
the first and last) is hashed; afterwards every sample is read again past
the page cache. An overwrite must read back as its pattern everywhere; any
other method must leave no sample as it was. A device that is not fully
erased or not verified is reported ``failed``, never as erased: a quick or
metadata-only wipe (wipefs, a new partition table) is not a method here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

BLOCK = 4096
CHUNK = 4 * 1024 * 1024
BLKFLSBUF = 0x1261

PURGE_METHODS = (
    "nvme-sanitize-crypto",
    "nvme-sanitize-block",
    "nvme-format-crypto",
    "ata-sanitize-crypto",
    "ata-sanitize-block",
    "ata-secure-erase-enhanced",
    "ata-secure-erase",
)
OVERWRITE = "overwrite"


def choose_method(caps: dict[str, Any]) -> str:
    """The strongest method the device reports it can do; overwrite when it reports nothing."""
    if caps.get("transport") == "nvme":
        sanicap = int(caps.get("sanicap", 0))
        if sanicap & 0x1:
            return "nvme-sanitize-crypto"
        if sanicap & 0x2:
            return "nvme-sanitize-block"
        if int(caps.get("fna", 0)) & 0x4:
            return "nvme-format-crypto"
        return OVERWRITE
    if caps.get("transport") == "ata":
        if caps.get("sanitize_crypto"):
            return "ata-sanitize-crypto"
        if caps.get("sanitize_block"):
            return "ata-sanitize-block"
        if caps.get("security_supported") and not caps.get("security_frozen"):
            return "ata-secure-erase-enhanced" if caps.get("enhanced_erase") else "ata-secure-erase"
    return OVERWRITE


def nist_category(method: str, caps: dict[str, Any] | None = None) -> str:
    """Purge only where SP 800-88 grants it: a plain security erase purges a spinning disk."""
    if method == "ata-secure-erase" and not (caps or {}).get("rotating"):
        return "clear"
    return "purge" if method in PURGE_METHODS else "clear"


class EraseFailed(Exception):
    """The device's own erase did not complete; the record says ``failed`` with this text."""


def ata_caps(hdparm_identify: str) -> dict[str, Any]:
    """Capabilities from ``hdparm -I`` text."""
    text = hdparm_identify
    security = text.split("Security:", 1)[1] if "Security:" in text else ""
    return {
        "transport": "ata",
        "sanitize_crypto": "CRYPTO_SCRAMBLE_EXT command" in text,
        "sanitize_block": "BLOCK_ERASE_EXT command" in text,
        "security_supported": bool(re.search(r"^\s*supported\s*$", security, re.M)),
        "security_frozen": not re.search(r"^\s*not\s+frozen", security, re.M),
        "enhanced_erase": bool(re.search(r"^\s*supported: enhanced erase", security, re.M)),
        "rotating": bool(re.search(r"Nominal Media Rotation Rate:\s*\d+", text)),
        "erase_minutes": _erase_minutes(security),
    }


def _erase_minutes(security: str) -> dict[str, int]:
    """The drive's own estimates, as hdparm prints words 89/90 ("2min for SECURITY ERASE
    UNIT. 8min for ENHANCED SECURITY ERASE UNIT."); ">508min" is its "more than"."""
    found = re.finditer(r"(>?)(\d+)min for (ENHANCED )?SECURITY ERASE UNIT", security)
    return {("enhanced" if m.group(3) else "normal"): int(m.group(2)) + (90 if m.group(1) else 0)
            for m in found}


def nvme_caps(id_ctrl_json: str) -> dict[str, Any]:
    """Capabilities from ``nvme id-ctrl -o json``."""
    ctrl = json.loads(id_ctrl_json)
    return {"transport": "nvme", "sanicap": ctrl.get("sanicap", 0), "fna": ctrl.get("fna", 0)}


POLL_SECONDS = 5.0
NVME_SANITIZE_DONE = {1, 4}  # completed (4: without deallocation)
NVME_SANITIZE_IN_PROGRESS = 2
NVME_SANITIZE_FAILED = 3


def _run(*argv: str, timeout: float = 600) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def device_caps(device: str) -> dict[str, Any]:
    name = os.path.basename(os.path.realpath(device))
    if name.startswith("nvme"):
        return nvme_caps(_run("nvme", "id-ctrl", device, "-o", "json"))
    if name.startswith(("sd", "hd")):
        try:
            return ata_caps(_run("hdparm", "-I", device))
        except (OSError, subprocess.CalledProcessError):
            return {"transport": "scsi"}
    return {"transport": "other"}


def identity(device: str) -> dict[str, str]:
    """Serial and model as the kernel reports them; a loop device names its backing file."""
    name = os.path.basename(os.path.realpath(device))
    found = {"serial": "", "model": ""}
    for key, paths in {
        "serial": (f"/sys/block/{name}/device/serial", f"/sys/block/{name}/loop/backing_file"),
        "model": (f"/sys/block/{name}/device/model",),
    }.items():
        for path in paths:
            if os.path.exists(path):
                with open(path) as handle:
                    found[key] = handle.read().strip()
                break
    return found


def size_of(device: str) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def sample_offsets(size: int, count: int, seed: int) -> list[int]:
    blocks = max(size // BLOCK, 1)
    rng = random.Random(seed)
    chosen = {0, blocks - 1, *(rng.randrange(blocks) for _ in range(count))}
    return sorted(block * BLOCK for block in chosen)


def read_samples(device: str, offsets: list[int]) -> list[bytes]:
    """Read past the page cache, so what was written is read back from the device."""
    fd = os.open(device, os.O_RDONLY)
    try:
        _drop_cache(fd)
        return [os.pread(fd, BLOCK, offset) for offset in offsets]
    finally:
        os.close(fd)


def _drop_cache(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def overwrite(device: str, size: int, pattern: int = 0) -> int:
    """One full pass of ``pattern``; returns the bytes written (all of them, or it raises)."""
    chunk = bytes([pattern]) * CHUNK
    written = 0
    fd = os.open(device, os.O_WRONLY)
    try:
        while written < size:
            written += os.write(fd, chunk[: min(CHUNK, size - written)])
        os.fsync(fd)
        _drop_cache(fd)
    finally:
        os.close(fd)
    return written


def firmware_erase(device: str, method: str, caps: dict[str, Any]) -> dict[str, Any]:
    """The device's own erase, waited for until the device says it is done; what ran."""
    if method.startswith("nvme-sanitize"):
        action = "--sanact=4" if method.endswith("crypto") else "--sanact=2"  # crypto, block
        _run("nvme", "sanitize", device, action)
        return {"sanitize_status": _wait_nvme_sanitize(device)}
    if method == "nvme-format-crypto":
        _run("nvme", "format", device, "--ses=2", "--force", timeout=24 * 3600)
        return {}
    if method.startswith("ata-sanitize"):
        action = "--sanitize-crypto-scramble" if method.endswith("crypto") else (
            "--sanitize-block-erase")
        _run("hdparm", "--yes-i-know-what-i-am-doing", action, device)
        return {"sanitize_status": _wait_ata_sanitize(device)}
    return _ata_security_erase(device, method == "ata-secure-erase-enhanced", caps)


def nvme_sanitize_status(log_json: str) -> int:
    """The Sanitize Operation Status from nvme-cli's JSON sanitize log.

    nvme-cli (``json_sanitize_log``) writes ``{"<dev>": {"sstat": {"status":
    "(2) Sanitize in Progress.", "global_erased": 0, ...}, "sprog": ...}}``;
    older releases wrote ``sstat`` as the raw register, whose low 3 bits
    are the status.
    """
    log = json.loads(log_json)
    device = next(iter(log.values()), {}) if isinstance(log, dict) else {}
    sstat = device.get("sstat", {}) if isinstance(device, dict) else {}
    if isinstance(sstat, int):
        return sstat & 0x7
    found = re.match(r"\((\d+)\)", str(sstat.get("status", "")))
    if not found:
        raise EraseFailed(f"unreadable sanitize log: {log_json[:200]!r}")
    return int(found.group(1))


def _wait_nvme_sanitize(device: str) -> int:
    while True:
        status = nvme_sanitize_status(_run("nvme", "sanitize-log", device, "-o", "json"))
        if status in NVME_SANITIZE_DONE:
            return status
        if status != NVME_SANITIZE_IN_PROGRESS:
            word = "failed" if status == NVME_SANITIZE_FAILED else "did not run"
            raise EraseFailed(f"NVMe sanitize {word} (sanitize status {status})")
        time.sleep(POLL_SECONDS)


def ata_sanitize_state(status_text: str) -> str:
    """``in-progress``, ``done`` or ``failed`` from ``hdparm --sanitize-status``.

    hdparm prints "State: SD2 Sanitize operation In Process" with a progress
    line while it runs, and "Last Sanitize Operation Completed Without Error"
    once the last one succeeded; a frozen device (SD1) or an idle one
    without that line did not sanitize.
    """
    if "In Process" in status_text:
        return "in-progress"
    if "Completed Without Error" in status_text and "Frozen" not in status_text:
        return "done"
    return "failed"


def _wait_ata_sanitize(device: str) -> str:
    while True:
        try:
            text = _run("hdparm", "--sanitize-status", device)
        except subprocess.CalledProcessError as exc:
            raise EraseFailed(f"ATA sanitize failed: {(exc.stderr or '').strip()[-200:]}") from None
        state = ata_sanitize_state(text)
        if state == "done":
            return "completed without error"
        if state == "failed":
            raise EraseFailed(f"ATA sanitize did not complete: {' '.join(text.split())[-200:]}")
        time.sleep(POLL_SECONDS)


def security_erase_timeout(caps: dict[str, Any], enhanced: bool, size: int) -> float:
    """Longer than hdparm's own limit for the erase, so hdparm always returns first.

    hdparm (``get_erase_timeout_secs``) waits the drive's estimate plus an
    hour (508+90 minutes for ">508"), or one second per 30 MB plus half an
    hour, whichever is longer; this adds ten minutes more.
    """
    minutes = caps.get("erase_minutes", {}).get("enhanced" if enhanced else "normal", 0)
    by_size = size / (30 * 1000**2) + 1800
    return max((minutes + 60) * 60, by_size) + 600


def _ata_security_erase(device: str, enhanced: bool, caps: dict[str, Any]) -> dict[str, Any]:
    _run("hdparm", "--user-master", "u", "--security-set-pass", "NULL", device)
    erase = "--security-erase-enhanced" if enhanced else "--security-erase"
    timeout = security_erase_timeout(caps, enhanced, size_of(device))
    argv = ["hdparm", "--user-master", "u", erase, "NULL", device]
    try:
        _run_until_released(argv, timeout)
    except EraseFailed:
        _security_disable(device)
        raise
    return {"ata_password": "NULL (hdparm takes passwords only as arguments: none is secret)",
            "erase_timeout_s": round(timeout)}


def _run_until_released(argv: list[str], timeout: float) -> None:
    """Run hdparm; past ``timeout`` it is killed, and waited for until it has let go."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()  # returns only once hdparm has left the drive's ioctl
        raise EraseFailed(f"security erase still running after {timeout:.0f}s") from None
    if process.returncode != 0:
        raise EraseFailed(f"security erase failed: {err.strip()[-200:]}")


def _security_disable(device: str) -> None:
    """Leave no password behind: a drive locked with it would refuse the next boot."""
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        _run("hdparm", "--user-master", "u", "--security-disable", "NULL", device)


def erase_device(device: str, samples: int, seed: int, pattern: int = 0) -> dict[str, Any]:
    started = datetime.now(UTC)
    caps = device_caps(device)
    method = choose_method(caps)
    size = size_of(device)
    offsets = sample_offsets(size, samples, seed)
    before = [hashlib.sha256(block).hexdigest() for block in read_samples(device, offsets)]
    written, ran, error = 0, {}, ""
    try:
        if method == OVERWRITE:
            written = overwrite(device, size, pattern)
        else:
            ran = firmware_erase(device, method, caps)
    except (EraseFailed, subprocess.CalledProcessError) as exc:
        error = str(exc) if isinstance(exc, EraseFailed) else f"{exc.cmd[0]} failed"
    after = read_samples(device, offsets)
    verified = not error and _verify(method, before, after, pattern) and (
        method != OVERWRITE or written == size)
    return {
        "device": device,
        "kernel_name": os.path.realpath(device),
        **identity(device),
        "capabilities": caps,
        "method": method,
        **ran,
        **({"error": error} if error else {}),
        "nist_category": nist_category(method, caps),
        "passes": 1,
        "pattern": f"0x{pattern:02x}" if method == OVERWRITE else None,
        "bytes": size,
        "bytes_written": written,
        "samples_checked": len(after),
        "result": "verified" if verified else "failed",
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }


def _verify(method: str, before: list[str], after: list[bytes], pattern: int) -> bool:
    if method == OVERWRITE:
        expected = bytes([pattern]) * BLOCK
        return all(block == expected for block in after)
    # A crypto erase leaves noise (every sample changed); a block erase leaves
    # a uniform fill. A sample as it was before, and not uniform, is data left.
    return all(
        hashlib.sha256(block).hexdigest() != was or block == block[:1] * len(block)
        for was, block in zip(before, after, strict=True)
    )


def discover() -> list[str]:
    """Every non-removable whole disk that holds no mounted filesystem (not the rescue system)."""
    listing = json.loads(_run("lsblk", "-J", "-p", "-o", "NAME,TYPE,RM,MOUNTPOINT"))
    return [d["name"] for d in listing["blockdevices"] if _erasable(d)]


def _erasable(disk: dict[str, Any]) -> bool:
    def mounted(node: dict[str, Any]) -> bool:
        return bool(node.get("mountpoint")) or any(mounted(c) for c in node.get("children", []))

    return disk.get("type") == "disk" and not disk.get("rm") and not mounted(disk)


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "devices": {"type": "list", "elements": "str", "required": False},
            "samples": {"type": "int", "default": 64},
            "seed": {"type": "int", "required": False},
        },
        supports_check_mode=True,
    )
    devices = module.params["devices"] or discover()
    if not devices:
        module.fail_json(msg="no disk to erase was found")
    if module.check_mode:
        module.exit_json(changed=False, devices=devices,
                         methods={d: choose_method(device_caps(d)) for d in devices})
    seed = module.params["seed"] if module.params["seed"] is not None else random.randrange(2**31)
    records = [erase_device(d, module.params["samples"], seed) for d in devices]
    failed = [r["device"] for r in records if r["result"] != "verified"]
    if failed:
        module.fail_json(msg=f"erase not verified on {', '.join(failed)}", records=records)
    module.exit_json(changed=True, records=records)


if __name__ == "__main__":
    main()
