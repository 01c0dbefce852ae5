"""The purge playbook on disks QEMU emulates: an NVMe controller and a SATA disk on AHCI.

A TCG guest boots the lab's rescue system (lab/build-rescue.sh: sshd,
python3, nvme-cli, hdparm), reached over SSH like a box's rescue boot,
with its host key pinned from the console. The real playbook runs there
through the orchestrator's Ansible runner; afterwards the disks' backing
images are read from the host, and none of the marker bytes written into
them before is left.

What QEMU emulates decides the method, and the records must say so: its
NVMe controller reports no sanitize (SANICAP 0) and no cryptographic
format (FNA 0), its IDE/AHCI disk no security or sanitize feature set, so
both fall through to the overwrite, which the record labels NIST *clear*.
The firmware paths are covered by the tools' own outputs in
tests/drivers/test_disk_erase_tools.py.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.ansible import AnsibleRunner
from drivers.ssh import SshTarget
from orchestrator.secrets import evidence
from orchestrator.secrets.credentials import Secret
from tests.conftest import REPO
from tests.lab.conftest import LAB_DIR

DISK_BYTES = 64 * 1024 * 1024
MARKER_OFFSETS = (0, 512 * 2048, 17 * 1024 * 1024 + 4096, DISK_BYTES - 4096)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _disk(path: Path, marker: bytes) -> Path:
    with path.open("wb") as disk:
        disk.truncate(DISK_BYTES)
        for offset in MARKER_OFFSETS:
            disk.seek(offset)
            disk.write(marker * (4096 // len(marker)))
    return path


def _private_key(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


def _public_base64(key: Ed25519PrivateKey) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return public.decode().split()[1]


class Rescue:
    """A QEMU guest booted into the rescue system, its console in a file."""

    def __init__(self, directory: Path, disks: dict[str, Path], key: Ed25519PrivateKey) -> None:
        self.port, self.console = _free_port(), directory / "console.log"
        images = LAB_DIR / "images"
        nvme, sata = disks["nvme"], disks["sata"]
        self.process = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot",
             "-kernel", str(images / "vmlinuz"), "-initrd", str(images / "rescue.img"),
             "-append", f"console=ttyS0 panic=-1 lab.sshkey={_public_base64(key)}",
             "-drive", f"file={nvme},if=none,id=n0,format=raw",
             "-device", "nvme,serial=LABNVME0,drive=n0",
             "-device", "ahci,id=ahci", "-drive", f"file={sata},if=none,id=s0,format=raw",
             "-device", "ide-hd,drive=s0,bus=ahci.0,serial=LABSATA0",
             "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
             "-device", "virtio-net-pci,netdev=net0"],
            stdout=self.console.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def host_key(self, seconds: float = 600) -> str:
        """The key the rescue system made at boot, once its sshd is up."""
        deadline, text = time.monotonic() + seconds, ""
        while time.monotonic() < deadline and self.process.poll() is None:
            text = self.console.read_text(errors="replace")
            found = re.search(r"LAB-RESCUE-HOSTKEY (ssh-ed25519 \S+)", text)
            if found and "LAB-RESCUE-UP" in text:
                return found.group(1)
            time.sleep(1)
        raise AssertionError(f"the rescue system never came up: {text[-800:]}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def rescue(tmp_path: Path) -> Iterator[tuple[Rescue, dict[str, Path], bytes, Ed25519PrivateKey]]:
    subprocess.run(["bash", str(REPO / "lab" / "libvirt.sh"), "up"], check=True,
                   capture_output=True)  # the lab's kernel
    subprocess.run(["bash", str(REPO / "lab" / "build-rescue.sh")], check=True,
                   capture_output=True)
    marker = f"LABERASE:{uuid.uuid4().hex}:".encode()
    disks = {name: _disk(tmp_path / f"{name}.img", marker) for name in ("nvme", "sata")}
    key = Ed25519PrivateKey.generate()
    box = Rescue(tmp_path, disks, key)
    try:
        yield box, disks, marker, key
    finally:
        box.stop()


def test_the_purge_playbook_erases_emulated_nvme_and_sata_disks(
    rescue: tuple[Rescue, dict[str, Path], bytes, Ed25519PrivateKey], tmp_path: Path
) -> None:
    box, disks, marker, key = rescue
    for image in disks.values():
        assert image.read_bytes().count(marker) == len(MARKER_OFFSETS) * (4096 // len(marker))
    target = SshTarget("127.0.0.1", "root", Secret(_private_key(key), "test key"),
                       host_keys=(box.host_key(),), port=box.port)
    runner = AnsibleRunner({"rescue": target}, tmp_path / "runs", timeout=1800)
    outcome = runner.run("rescue", "purge-disks", {"purge_samples": 16})
    records = outcome.evidence["results"]["Erase and verify every disk"]["records"]
    box.stop()
    signing = Ed25519PrivateKey.generate()
    pem = signing.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    signed = [evidence.Signer(Secret(pem, "test signing key")).sign(r) for r in records]
    assert all(evidence.verify(s, signing.public_key()) for s in signed)
    by_device = {s["record"]["kernel_name"]: s["record"] for s in signed}
    assert set(by_device) == {"/dev/nvme0n1", "/dev/sda"}
    nvme, sata = by_device["/dev/nvme0n1"], by_device["/dev/sda"]
    # What QEMU's devices report they can do, and so what really ran and how it is labelled.
    assert (nvme["capabilities"]["sanicap"], nvme["capabilities"]["fna"]) == (0, 0)
    assert not sata["capabilities"]["security_supported"]
    assert not sata["capabilities"]["sanitize_block"]
    for record in (nvme, sata):
        assert (record["method"], record["nist_category"], record["result"]) == (
            "overwrite", "clear", "verified")
        assert record["bytes_written"] == DISK_BYTES
    for image in disks.values():  # the backing files, read from the host
        data = image.read_bytes()
        assert marker not in data and data.count(0) == DISK_BYTES
