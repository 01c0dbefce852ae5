"""Which backups survive a prune, by Proxmox's retention rules.

The orchestrator, the Proxmox VE emulator and a real PVE or Proxmox Backup
Server must agree on which copies a retention setting keeps, or a dry run
would promise one thing and the storage would delete another. So this is a
port, rule for rule, of ``compute_prune_info`` (proxmox-backup,
``pbs-datastore/src/prune.rs``) and ``PVE::Storage::prune_mark_backup_group``
(pve-storage, ``src/PVE/Storage.pm``), which implement the same algorithm:

- backups are ordered newest first;
- with no positive keep option, or ``keep-all=1``, everything is kept;
- the rules run in the order last, hourly, daily, weekly, monthly, yearly.
  Each keeps the newest backup of each of its periods, up to N periods,
  walking from the newest backup. A period already holding a backup kept by
  an earlier rule is skipped and does not count, and older backups of a
  period a rule has just kept are marked removed on the spot, so later rules
  never see them;
- periods are read on the backup time's own wall clock (PBS and PVE use the
  host's local zone; here the aware datetime's ``tzinfo``): hourly
  ``%Y/%m/%d/%H``, daily ``%Y/%m/%d``, weekly ISO ``%G/%V`` (a week crossing
  New Year belongs to one ISO year), monthly ``%Y/%m``, yearly ``%Y``;
  keep-last treats each whole second as its own period, as both use epoch
  seconds;
- protected backups are always kept, marked ``protected``; they neither
  count towards a rule nor cover its period;
- everything else is removed.

The hosting terms' "weekly backup, each backup overwrites the previous"
(cybernet "Data Backup", Herza.ID 4.4.5 "1 backup file per VPS") is
``keep-last=1`` (``KEEP_ONE``). Prune only after the new backup finished, so
a failed run never leaves a service with no copy. Deleting every copy at the
end of retention is a purge, not a prune: it is decided by the lifecycle,
not here.

Not ported: PBS keeps the newest unfinished snapshot ("keep-partial");
callers pass finished backups only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Literal

__all__ = ["KEEP_ONE", "RULES", "Backup", "Decision", "KeepRules", "prune"]

Mark = Literal["keep", "remove", "protected"]

RULES: tuple[str, ...] = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
"""Rule names in the order Proxmox applies them; the finest period goes first."""

_COUNT = re.compile(r"^\d+$")
_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}


@dataclass(frozen=True)
class KeepRules:
    """A ``prune-backups`` setting; counts of 0 mean the rule is off, as in PVE."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    keep_all: bool = False

    def __post_init__(self) -> None:
        for name, count in self.counts():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"keep-{name}={count!r}: a count must be a whole number >= 0")
        if self.keep_all and self.keeps_something():
            raise ValueError("keep-all cannot be set together with other options")

    def counts(self) -> list[tuple[str, int]]:
        """The rules in Proxmox's order, since the order decides who covers a period."""
        return [(name, getattr(self, name)) for name in RULES]

    def keeps_something(self) -> bool:
        """PBS's ``keeps_something``: without a positive count nothing is pruned."""
        return any(count > 0 for _, count in self.counts())

    @property
    def keeps_everything(self) -> bool:
        """True when a prune removes nothing, the way PVE treats an empty setting."""
        return self.keep_all or not self.keeps_something()

    @classmethod
    def parse(cls, text: str) -> KeepRules:
        """Read a PVE property string, so settings copied from a PVE storage config work."""
        values: dict[str, int | bool] = {}
        for part in (p.strip() for p in text.split(",")):
            if part:
                field, value = _parse_part(part)
                if field in values:
                    raise ValueError(f"{part!r}: duplicate key {_key(field)!r}")
                values[field] = value
        return cls(**values)  # type: ignore[arg-type]

    def to_text(self) -> str:
        """The property string ``parse`` reads back to an equal value."""
        if self.keep_all:
            return "keep-all=1"
        return ",".join(f"keep-{name}={count}" for name, count in self.counts() if count)


def _key(field: str) -> str:
    return "keep-all" if field == "keep_all" else f"keep-{field}"


_FIELDS = {_key(f.name): f.name for f in fields(KeepRules)}


def _parse_part(part: str) -> tuple[str, int | bool]:
    """One ``key=value``; errors quote the part so a typo is easy to find."""
    key, sep, raw = (s.strip() for s in part.partition("="))
    if not sep:
        raise ValueError(f"{part!r}: expected key=value, e.g. keep-last=3")
    field = _FIELDS.get(key)
    if field is None:
        raise ValueError(f"{part!r}: unknown key {key!r}; known: {', '.join(_FIELDS)}")
    if field == "keep_all":
        return field, _parse_bool(part, raw)
    if not _COUNT.match(raw):
        raise ValueError(f"{part!r}: {key} must be a whole number >= 0")
    return field, int(raw)


def _parse_bool(part: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"{part!r}: keep-all must be 1 or 0")


KEEP_ONE = KeepRules(last=1)
"""The hosting terms' "each new backup replaces the previous one"."""


@dataclass(frozen=True)
class Backup:
    """What prune needs of a backup: an id, when it was taken, and its protection."""

    backup_id: str
    taken_at: datetime
    protected: bool = False


@dataclass(frozen=True)
class Decision:
    """One backup's fate, with the reason an operator sees in a dry run."""

    backup_id: str
    mark: Mark
    reason: str

    @property
    def kept(self) -> bool:
        """Protected backups are kept too; only "remove" deletes."""
        return self.mark != "remove"


def _iso_week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


_PERIOD: dict[str, Callable[[datetime], str]] = {
    "last": lambda t: datetime.fromtimestamp(_epoch(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "hourly": lambda t: t.strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": _iso_week,
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}
"""Period labels; equal labels mean the same PBS period string (``%Y/%m/%d``...)."""


def _epoch(t: datetime) -> int:
    return math.floor(t.timestamp())


def prune(
    backups: Iterable[Backup | tuple[str, datetime, bool]], rules: KeepRules
) -> list[Decision]:
    """Decide every backup's fate, newest first, as PBS and PVE would."""
    ordered = _newest_first([_as_backup(b) for b in backups])
    if rules.keeps_everything:
        return [_keep_all(b, rules) for b in ordered]
    marks: dict[str, Decision] = {}
    for name, count in rules.counts():
        if count:
            _mark_selections(marks, ordered, name, count)
    return [_final(b, marks) for b in ordered]


def _as_backup(item: Backup | tuple[str, datetime, bool]) -> Backup:
    backup = item if isinstance(item, Backup) else Backup(*item)
    if backup.taken_at.utcoffset() is None:
        raise ValueError(
            f"backup {backup.backup_id!r}: taken_at has no time zone, so its day is unknown"
        )
    return backup


def _newest_first(backups: list[Backup]) -> list[Backup]:
    """Sort newest first; ties broken by id so the same input always prunes the same.

    The key is the UTC instant: Python compares two times of one zone by wall
    clock, ignoring ``fold``, which would misorder the repeated hour of a DST change.
    """
    seen: set[str] = set()
    for b in backups:
        if b.backup_id in seen:
            raise ValueError(f"backup id {b.backup_id!r} appears twice")
        seen.add(b.backup_id)
    by_id = sorted(backups, key=lambda b: b.backup_id)
    return sorted(by_id, key=lambda b: b.taken_at.astimezone(UTC), reverse=True)


def _keep_all(backup: Backup, rules: KeepRules) -> Decision:
    if backup.protected:
        return Decision(backup.backup_id, "protected", "protected")
    reason = "keep-all" if rules.keep_all else "no keep option set: keep all"
    return Decision(backup.backup_id, "keep", reason)


def _mark_selections(
    marks: dict[str, Decision], ordered: list[Backup], rule: str, keep: int
) -> None:
    """One rule's pass: PBS ``mark_selections``, period by period from the newest."""
    period = _PERIOD[rule]
    covered = {period(b.taken_at) for b in ordered if _mark_of(marks, b) == "keep"}
    chosen: set[str] = set()
    for backup in ordered:
        if backup.backup_id in marks or backup.protected:
            continue
        label = period(backup.taken_at)
        if label in covered:
            continue
        if label in chosen:
            marks[backup.backup_id] = _superseded(backup, rule, label)
            continue
        if len(chosen) >= keep:
            break
        chosen.add(label)
        marks[backup.backup_id] = _kept(backup, rule, label, len(chosen), keep)


def _mark_of(marks: dict[str, Decision], backup: Backup) -> str | None:
    decision = marks.get(backup.backup_id)
    return None if decision is None else decision.mark


def _kept(backup: Backup, rule: str, label: str, nth: int, keep: int) -> Decision:
    if rule == "last":
        return Decision(backup.backup_id, "keep", f"keep-last {nth}/{keep}")
    return Decision(backup.backup_id, "keep", f"keep-{rule} {label} ({nth}/{keep})")


def _superseded(backup: Backup, rule: str, label: str) -> Decision:
    reason = f"keep-{rule} {label}: a newer backup of the same period is kept"
    return Decision(backup.backup_id, "remove", reason)


def _final(backup: Backup, marks: dict[str, Decision]) -> Decision:
    if backup.protected:
        return Decision(backup.backup_id, "protected", "protected")
    return marks.get(backup.backup_id) or Decision(
        backup.backup_id, "remove", "not selected by any rule"
    )
