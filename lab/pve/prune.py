"""PVE's own prune marks, written from ``PVE::Storage`` (pve-storage 9.1.7), not imported.

``prune_backups`` (``PVE/Storage/Plugin.pm``) lists a storage's backups: a
backup whose name is not vzdump's standard one is marked ``renamed``, a
protected one ``protected``; the rest are grouped per guest (``qemu/100``) and
each group is marked by ``prune_mark_backup_group`` (``PVE/Storage.pm``):
newest first, each ``keep-*`` option in turn (last, hourly, daily, weekly,
monthly, yearly) keeps the newest backup of each period not yet covered
until it has kept its count; what no option kept is ``remove``. The period
of a backup comes from the time in its name, in the node's zone (the lab's
nodes run in UTC). The emulator judges the driver with this, so it must
never share code with the orchestrator's own prune.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any

from lab.pve.state import BACKUP_NAME, Volume

PERIODS: tuple[tuple[str, Callable[[time.struct_time], str]], ...] = (
    ("keep-hourly", lambda t: time.strftime("%H/%d/%m/%Y", t)),
    ("keep-daily", lambda t: time.strftime("%d/%m/%Y", t)),
    ("keep-weekly", lambda t: time.strftime("%V/%G", t)),
    ("keep-monthly", lambda t: time.strftime("%m/%Y", t)),
    ("keep-yearly", lambda t: time.strftime("%Y", t)),
)


def parse_keep(text: str) -> dict[str, int]:
    """``keep-last=3,keep-daily=7`` as PVE's ``prune-backups`` property string."""
    keep: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        keep[key.strip()] = int(value)
    return keep


def _mark(entries: list[dict[str, Any]], count: int, period: Callable[[int], str]) -> None:
    """``$prune_mark``: keep the newest unmarked backup of up to ``count`` new periods."""
    if not count:
        return
    already = {period(e["ctime"]) for e in entries if e.get("mark") == "keep"}
    newly: set[str] = set()
    for entry in entries:
        key = period(entry["ctime"])
        if entry.get("mark") is not None or key in already:
            continue
        if key not in newly:
            if len(newly) >= count:
                break
            newly.add(key)
            entry["mark"] = "keep"
        else:
            entry["mark"] = "remove"


def mark_group(group: list[dict[str, Any]], keep: dict[str, int]) -> None:
    """``prune_mark_backup_group``, in place."""
    positive = [k for k, v in keep.items() if k != "keep-all" and v > 0]
    if keep.get("keep-all") or not positive:
        for entry in group:
            if not entry.get("mark") or entry["mark"] == "remove":
                entry["mark"] = "keep"
        return
    newest_first = sorted(group, key=lambda e: e["ctime"], reverse=True)
    _mark(newest_first, keep.get("keep-last", 0), str)
    for option, label in PERIODS:
        _mark(newest_first, keep.get(option, 0), lambda c, f=label: f(time.gmtime(c)))
    for entry in newest_first:
        entry.setdefault("mark", "remove")


def prune_list(volumes: list[Volume], keep: str) -> list[dict[str, Any]]:
    """``prune_backups``'s list for these backup volumes, each with its mark."""
    entries: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for volume in volumes:
        found = BACKUP_NAME.search(volume.volid)
        entry: dict[str, Any] = {"volid": volume.volid, "ctime": volume.ctime,
                                 "type": found["type"] if found else "unknown"}
        vmid = int(found["vmid"]) if found else volume.vmid
        if vmid is not None:
            entry["vmid"] = vmid
        if found:
            entry["ctime"] = _name_time(found["stamp"])
            groups.setdefault(f"{entry['type']}/{vmid}", []).append(entry)
        else:
            entry["mark"] = "renamed"
        if volume.protected:
            entry["mark"] = "protected"
        entries.append(entry)
    for group in groups.values():
        mark_group(group, parse_keep(keep))
    return entries


def keeps_everything(keep: str) -> bool:
    rules = parse_keep(keep)
    return bool(rules.get("keep-all")) or not any(
        v > 0 for k, v in rules.items() if k != "keep-all")


def _name_time(stamp: str) -> int:
    """``archive_info``'s ctime: the name's time, read in the node's zone (UTC here)."""
    return calendar.timegm(time.strptime(stamp, "%Y_%m_%d-%H_%M_%S"))
