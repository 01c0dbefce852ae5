"""Volumes in libvirt's storage pools: their XML, reading them back, wiping them.

Everything is done through libvirt (volume upload and download streams), so a
remote hypervisor's pools are read and written the same as a local one's.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from xml.sax.saxutils import escape

import libvirt

from drivers.base import PermanentError

SAMPLE_BYTES = 4096
CHECKSUM_SUFFIX = ".sha256"  # a sidecar volume beside each backup: its SHA-256 when taken


def volume_xml(
    name: str,
    capacity: int,
    disk_format: str,
    *,
    unit: str = "bytes",
    thin: bool = False,
    backing: tuple[str, str] | None = None,
) -> str:
    """A volume of ``capacity`` ``unit``s; ``backing`` is a backing file's (path, format)."""
    allocation = "<allocation>0</allocation>" if thin else ""
    store = ""
    if backing is not None:
        path, backing_format = backing
        store = (
            f"<backingStore><path>{escape(path)}</path>"
            f"<format type='{backing_format}'/></backingStore>"
        )
    return (
        f"<volume><name>{escape(name)}</name><capacity unit='{unit}'>{capacity}</capacity>"
        f"{allocation}<target><format type='{disk_format}'/></target>{store}</volume>"
    )


def lookup(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    """Looked up by name, not by refreshing the pool, which fails while a volume is built."""
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def refreshed(pool: libvirt.virStoragePool) -> bool:
    """A refresh rereads the pool's storage; libvirt refuses it while a volume is built."""
    try:
        pool.refresh(0)
    except libvirt.libvirtError:
        return False
    return True


def pool_path(pool: libvirt.virStoragePool) -> str:
    match = re.search(r"<target>\s*<path>([^<]+)</path>", pool.XMLDesc(0))
    if not match:
        raise PermanentError(f"backup pool {pool.name()} has no directory (a dir pool is needed)")
    return match.group(1)


def volume_format(volume: libvirt.virStorageVol) -> str:
    """The format libvirt probed in the file itself (a backup pool lists what it finds)."""
    found = re.search(r"<target>.*?<format type=['\"](\w+)['\"]", volume.XMLDesc(0), re.S)
    return found.group(1) if found else "unknown"


# -- reading and writing through streams ---------------------------------------------


def read(
    conn: libvirt.virConnect, volume: libvirt.virStorageVol, offset: int = 0, length: int = 0
) -> bytes:
    """``length`` bytes from ``offset`` (0: to the end)."""
    return b"".join(_chunks(conn, volume, offset, length))


def sha256(conn: libvirt.virConnect, volume: libvirt.virStorageVol) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(conn, volume, 0, 0):
        digest.update(chunk)
    return digest.hexdigest()


def _chunks(
    conn: libvirt.virConnect, volume: libvirt.virStorageVol, offset: int, length: int
) -> list[bytes]:
    stream = conn.newStream(0)
    volume.download(stream, offset, length, 0)
    chunks = []
    while (data := stream.recv(length or 1 << 20)) not in (b"", None):
        if isinstance(data, bytes):
            chunks.append(data)
    stream.finish()
    return chunks


def write_checksum(
    conn: libvirt.virConnect, pool: libvirt.virStoragePool, backup: str, digest: str
) -> None:
    """Through libvirt (a volume upload), so a remote hypervisor's pool keeps it too."""
    data = digest.encode()
    volume = pool.createXML(volume_xml(backup + CHECKSUM_SUFFIX, len(data), "raw"), 0)
    stream = conn.newStream(0)
    volume.upload(stream, 0, len(data), 0)
    stream.send(data)
    stream.finish()


def read_checksum(
    conn: libvirt.virConnect, pool: libvirt.virStoragePool, backup: str
) -> str | None:
    """The SHA-256 recorded when ``backup`` was taken; None for a copy taken without one."""
    volume = lookup(pool, backup + CHECKSUM_SUFFIX)
    if volume is None:
        return None
    text = read(conn, volume, 0, 64).decode(errors="replace").strip()
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else f"unreadable: {text[:16]!r}"


# -- wiping --------------------------------------------------------------------------


def wipe_verified(conn: libvirt.virConnect, volume: libvirt.virStorageVol) -> dict[str, Any]:
    """libvirt's zero wipe, named by what it did to the volume's allocation.

    On a sparse file libvirt truncates and re-extends rather than writing
    zeros: the blocks go back to the filesystem unwritten. That is a
    deallocation, and the evidence says so; only a wipe that left the
    space allocated wrote over it. The samples catch a backend that did
    neither.
    """
    size = volume.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
    allocated = volume.info()[2]
    volume.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)
    allocated_after = volume.info()[2]
    offsets = sample_offsets(size)
    dirty = [offset for offset in offsets if any(read(conn, volume, offset, SAMPLE_BYTES))]
    if dirty:
        raise PermanentError(f"wipe of {volume.name()} not verified: data at {dirty[:4]}")
    return {
        "method": wipe_method(allocated_after),
        "allocated_before": allocated,
        "allocated_after": allocated_after,
        "bytes": size,
        "samples": len(offsets),
        "sample_bytes": SAMPLE_BYTES,
        "nonzero_samples": 0,
    }


def wipe_method(allocated_after: int) -> str:
    """What a zero wipe really did: nothing left allocated means nothing was overwritten.

    Neither earns a NIST SP 800-88 category by itself: a deallocation leaves
    the old blocks on the device under the filesystem until reused.
    """
    return "deallocate" if allocated_after == 0 else "overwrite:zero"


def sample_offsets(size: int, count: int = 16) -> list[int]:
    """Evenly spread across the volume, first and last block included."""
    last = max(size - SAMPLE_BYTES, 0)
    return sorted({last * n // (count - 1) for n in range(count)})
