"""A backup booted in a scratch machine, to see that it starts; then the machine goes.

The scratch machine ``scratch-<service>-<n>`` boots from a throwaway qcow2
overlay on top of the copy, so the boot writes nothing into the backup; it
has no network interface, so it cannot clash with the live guest's
addresses; it is transient and started with auto-destroy, so even a crash of
this process takes it down. It passes when its console shows the banner
within the timeout. The scratch domain and overlay are removed whatever
happened, and their absence checked.
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import libvirt

from drivers.base import PermanentError, TemporaryError
from drivers.libvirt import storage
from drivers.libvirt.connection import alive
from drivers.libvirt.domain import disk_xml, still_running

SCRATCH_ATTEMPTS = 100


@dataclass(frozen=True)
class Scratch:
    """How to boot a service's backup: its pool, its boot, its size, what to wait for."""

    service_id: str
    pool: str
    domain_type: str
    os_xml: str
    vcpus: int
    memory_mib: int
    banner: str
    timeout: float


def boot(conn: libvirt.virConnect, how: Scratch, copy: libvirt.virStorageVol) -> dict[str, Any]:
    """Boot ``copy`` as a scratch machine; the evidence says whether it showed the banner."""
    overlay = _overlay(conn, how, copy)
    name = overlay.name().removesuffix(".qcow2")
    started = time.monotonic()
    result: dict[str, Any] = {"scratch": name}
    domain: libvirt.virDomain | None = None
    try:
        domain, booted, console = _start(conn, _xml(how, name, overlay), how)
        result.update(booted=booted)
        if not booted:
            result["console_tail"] = console
    finally:
        _remove(conn, how, name, domain, overlay)
    result.update(
        seconds=round(time.monotonic() - started, 1),
        checked=["sha256", "format", f"console shows {how.banner!r} within "
                 f"{how.timeout:g}s", "scratch removed"],
        scratch_removed=True,
    )
    return result


def _overlay(
    conn: libvirt.virConnect, how: Scratch, copy: libvirt.virStorageVol
) -> libvirt.virStorageVol:
    """The first free ``scratch-<service>-<n>``: creating the volume is what claims it."""
    pool = conn.storagePoolLookupByName(how.pool)
    capacity, backing = copy.info()[1], (copy.path(), "qcow2")
    for n in range(1, SCRATCH_ATTEMPTS + 1):
        name = f"scratch-{how.service_id}-{n}"
        with suppress(libvirt.libvirtError):
            conn.lookupByName(name)
            continue
        try:
            xml = storage.volume_xml(f"{name}.qcow2", capacity, "qcow2", backing=backing)
            return pool.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                raise
    raise TemporaryError(f"no free scratch name for svc-{how.service_id}: too many verifications")


def _xml(how: Scratch, name: str, overlay: libvirt.virStorageVol) -> str:
    """The service's boot, on the overlay, with no interface and a console we can read."""
    return (
        f"<domain type='{how.domain_type}'><name>{escape(name)}</name>"
        f"<memory unit='MiB'>{how.memory_mib}</memory><vcpu>{how.vcpus}</vcpu>"
        f"{how.os_xml}<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>"
        f"<devices>{disk_xml(overlay.path(), 'qcow2')}"
        "<serial type='pty'><target port='0'/></serial>"
        "<console type='pty'><target type='serial' port='0'/></console></devices></domain>"
    )


def _start(
    conn: libvirt.virConnect, xml: str, how: Scratch
) -> tuple[libvirt.virDomain | None, bool, str]:
    """Started paused, its console opened, then let run: no early line is missed.

    QEMU refusing to start it (an unreadable copy) is a failed boot, not an error.
    """
    flags = libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY
    try:
        domain = conn.createXML(xml, flags)
    except libvirt.libvirtError as exc:
        if not alive(conn):
            raise
        return None, False, str(exc.get_error_message())
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        domain.resume()
        booted, console = _await_banner(stream, domain, how.banner, how.timeout)
    finally:
        with suppress(libvirt.libvirtError):
            stream.abort()
    return domain, booted, console


def _await_banner(
    stream: libvirt.virStream, domain: libvirt.virDomain, banner: str, timeout: float
) -> tuple[bool, str]:
    """Read the console until ``banner`` shows, the guest dies, or ``timeout`` passes.

    Returns whether it showed, and the console's last 400 characters (for a failure's record).
    """
    seen = b""
    wanted = banner.encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = stream.recv(4096)
        if data == -2:  # nothing yet (a non-blocking stream)
            if not still_running(domain):
                break
            time.sleep(0.2)
            continue
        if not isinstance(data, bytes) or not data:
            break  # the console closed: QEMU went away
        seen = (seen + data)[-(len(wanted) + 4096) :]
        if wanted in seen:
            return True, ""
    return False, seen.decode(errors="replace")[-400:]


def _remove(
    conn: libvirt.virConnect,
    how: Scratch,
    name: str,
    domain: libvirt.virDomain | None,
    overlay: libvirt.virStorageVol,
) -> None:
    """Whatever happened: the scratch domain and its overlay go, and are seen gone."""
    if domain is not None:
        with suppress(libvirt.libvirtError):
            domain.destroy()
    with suppress(libvirt.libvirtError):
        conn.lookupByName(name).destroy()
    overlay.delete(0)
    left = []
    with suppress(libvirt.libvirtError):
        conn.lookupByName(name)
        left.append(f"domain {name}")
    pool = conn.storagePoolLookupByName(how.pool)
    if f"{name}.qcow2" in pool.listVolumes():
        left.append(f"volume {name}.qcow2")
    if left:
        raise PermanentError(f"scratch machine not removed: {', '.join(left)}")
