#!/usr/bin/python3
"""Ansible module: erase a box's disks after NIST SP 800-88 and prove it by reading back.

Runs on the box (booted into the rescue system). Per device it reads what
the device can do, picks the strongest method it supports, erases, then
verifies by reading samples back, and returns one erase record a device.

Method order (strongest first; NIST SP 800-88 Rev. 1, table A-8 for ATA
and NVMe): NVMe Sanitize Crypto Erase, NVMe Sanitize Block Erase, NVMe
Format with Cryptographic Erase, ATA Sanitize Crypto Scramble, ATA
Sanitize Block Erase, ATA Enhanced Security Erase, ATA Security Erase,
then a full overwrite. The first seven are NIST "Purge"; overwrite is
NIST "Clear" and is recorded as such. A frozen ATA device cannot take
security erase until power-cycled, so it drops to the next method.

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


def nist_category(method: str) -> str:
    return "purge" if method in PURGE_METHODS else "clear"


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
    }


def nvme_caps(id_ctrl_json: str) -> dict[str, Any]:
    """Capabilities from ``nvme id-ctrl -o json``."""
    ctrl = json.loads(id_ctrl_json)
    return {"transport": "nvme", "sanicap": ctrl.get("sanicap", 0), "fna": ctrl.get("fna", 0)}


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600).stdout


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


def firmware_erase(device: str, method: str) -> None:
    """The device's own erase; each command blocks or is polled until the device is done."""
    commands = {
        "nvme-sanitize-crypto": [["nvme", "sanitize", device, "--sanact=4"]],
        "nvme-sanitize-block": [["nvme", "sanitize", device, "--sanact=2"]],
        "nvme-format-crypto": [["nvme", "format", device, "--ses=2", "--force"]],
        "ata-sanitize-crypto": [["hdparm", "--yes-i-know-what-i-am-doing",
                                 "--sanitize-crypto-scramble", device]],
        "ata-sanitize-block": [["hdparm", "--yes-i-know-what-i-am-doing",
                                "--sanitize-block-erase", device]],
        "ata-secure-erase-enhanced": _ata_security(device, "--security-erase-enhanced"),
        "ata-secure-erase": _ata_security(device, "--security-erase"),
    }[method]
    for argv in commands:
        _run(*argv)
    if method.startswith("nvme-sanitize"):
        _wait_nvme_sanitize(device)


def _ata_security(device: str, erase: str) -> list[list[str]]:
    # A temporary user password is required by the ATA security feature set;
    # it lives only for this erase and is cleared by the erase itself.
    return [
        ["hdparm", "--user-master", "u", "--security-set-pass", "purge", device],
        ["hdparm", "--user-master", "u", erase, "purge", device],
    ]


def _wait_nvme_sanitize(device: str) -> None:
    while True:
        log = json.loads(_run("nvme", "sanitize-log", device, "-o", "json"))
        status = next(iter(log.values())) if log else {}
        if int(status.get("sstat", 0)) & 0x7 != 2:  # 2: in progress
            return
        time.sleep(5)


def erase_device(device: str, samples: int, seed: int, pattern: int = 0) -> dict[str, Any]:
    started = datetime.now(UTC)
    caps = device_caps(device)
    method = choose_method(caps)
    size = size_of(device)
    offsets = sample_offsets(size, samples, seed)
    before = [hashlib.sha256(block).hexdigest() for block in read_samples(device, offsets)]
    written = 0
    if method == OVERWRITE:
        written = overwrite(device, size, pattern)
    else:
        firmware_erase(device, method)
    after = read_samples(device, offsets)
    verified = _verify(method, before, after, pattern) and (method != OVERWRITE or written == size)
    return {
        "device": device,
        "kernel_name": os.path.realpath(device),
        **identity(device),
        "capabilities": caps,
        "method": method,
        "nist_category": nist_category(method),
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
