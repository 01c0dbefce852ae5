"""A week of backups, placed inside their windows without overloading anything.

Backups hurt the guests they copy and the storage they land on, so each host
and each storage takes at most a few at once, and only inside a nightly
window. The terms ask for weekly copies (cybernet "Data Backup", Herza.ID
4.4.5, daily as a paid add-on); this module decides when each one runs.

It is pure: the week, the windows, the limits, the jitter and the random
seed are parameters, so the same input always gives the same plan, and a
plan can be checked (``check_plan``) by tests, benchmarks and operators.

How: list scheduling. Runs are placed longest first, each at the earliest
instant where its host and its storage both stay under their limits for its
whole duration, inside its window (a weekly job tries each night of the week
in turn; a daily job has one run per night). Long runs placed first leave the
short ones to fill the gaps, which keeps the busiest host close to the
lower bound of its total work divided by its limit. Then each run is moved
later by a seeded random amount within its slack, never past its window or
into a full stretch, so that runs do not all start on the same second.
A run that fits nowhere is returned in ``Plan.unfit`` with the reason; it is
never dropped silently.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal

__all__ = [
    "BackupJob",
    "Limits",
    "Plan",
    "Slot",
    "Unfit",
    "Week",
    "Window",
    "check_plan",
    "peak_concurrency",
    "schedule_week",
]

Frequency = Literal["weekly", "daily"]
DAYS_IN_WEEK = 7
_NEVER = 2**62


@dataclass(frozen=True)
class Window:
    """A nightly window on a zone's wall clock; ``end <= start`` crosses midnight.

    ``start == end`` is a whole day. The window opening on day ``d`` is read
    on that date's wall clock, so it follows the zone through DST changes.
    """

    start: time
    end: time
    zone: tzinfo

    def on(self, day: date) -> tuple[datetime, datetime]:
        """The window instance that opens on ``day``."""
        opens = datetime.combine(day, self.start, self.zone)
        close_day = day if self.end > self.start else day + timedelta(days=1)
        return opens, datetime.combine(close_day, self.end, self.zone)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class BackupJob:
    """One service's backup: where it runs, where it lands, how long it takes."""

    service_id: str
    host: str
    storage: str
    duration: timedelta
    frequency: Frequency = "weekly"
    window: Window | None = None

    def __post_init__(self) -> None:
        if self.duration <= timedelta(0):
            raise ValueError(f"{self.service_id}: duration must be positive")
        if self.frequency not in ("weekly", "daily"):
            raise ValueError(f"{self.service_id}: frequency must be weekly or daily")


@dataclass(frozen=True)
class Limits:
    """Concurrent backups allowed per host and per storage; storage is unlimited by default."""

    host: int = 2
    storage: int | None = None
    per_host: Mapping[str, int] = field(default_factory=dict)
    per_storage: Mapping[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = [self.host, self.storage, *self.per_host.values(), *self.per_storage.values()]
        if any(v is not None and v < 1 for v in values):
            raise ValueError("a concurrency limit must be at least 1")

    def for_host(self, host: str) -> int:
        """The host's own limit, else the default."""
        return self.per_host.get(host, self.host)

    def for_storage(self, storage: str) -> int | None:
        """The storage's own limit, else the default; None means unlimited."""
        return self.per_storage.get(storage, self.storage)


@dataclass(frozen=True)
class Week:
    """The seven windows to fill: the first opens on ``start``."""

    start: date
    window: Window
    limits: Limits = Limits()

    def days(self) -> list[date]:
        """The dates on which the week's windows open."""
        return [self.start + timedelta(days=n) for n in range(DAYS_IN_WEEK)]

    def window_of(self, job: BackupJob) -> Window:
        """A job's preferred window wins over the week's."""
        return job.window or self.window


@dataclass(frozen=True)
class Slot:
    """A planned run: ``day`` is the date its window opens."""

    job: BackupJob
    day: date
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Unfit:
    """A run that could not be placed; ``day`` is set for a daily job's night."""

    job: BackupJob
    day: date | None
    reason: str


@dataclass(frozen=True)
class Plan:
    """Planned runs in start order, and the runs that did not fit."""

    slots: tuple[Slot, ...]
    unfit: tuple[Unfit, ...]


@dataclass(frozen=True)
class _Run:
    """One run to place: a weekly job's may go on any day, a daily one's on one."""

    job: BackupJob
    days: tuple[date, ...]
    seconds: int


class _Profile:
    """How many runs a host or storage has at each instant, as a step function.

    ``usage[i]`` holds from ``times[i]`` to ``times[i + 1]``; times are epoch
    seconds. The last step is always 0, which ends every scan.
    """

    __slots__ = ("limit", "times", "usage")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.times = [-_NEVER]
        self.usage = [0]

    def add(self, start: int, end: int, delta: int = 1) -> None:
        """Count a run in (or out, with ``delta=-1``) over ``[start, end)``."""
        first, last = self._split(start), self._split(end)
        for i in range(first, last):
            self.usage[i] += delta

    def _split(self, t: int) -> int:
        i = bisect_right(self.times, t) - 1
        if self.times[i] == t:
            return i
        self.times.insert(i + 1, t)
        self.usage.insert(i + 1, self.usage[i])
        return i + 1

    def blocked_until(self, start: int, end: int) -> int | None:
        """If ``[start, end)`` meets a full stretch, the instant that stretch ends.

        No run can start before then without overlapping it, so a search may jump there.
        """
        times, usage, limit = self.times, self.usage, self.limit
        i = bisect_right(times, start) - 1
        while times[i] < end:
            if usage[i] >= limit:
                while usage[i] >= limit:
                    i += 1
                return times[i]
            i += 1
            if i == len(times):
                return None
        return None

    def full_from(self, t: int, horizon: int) -> int:
        """The first instant at or after ``t`` (before ``horizon``) where it is full."""
        i = bisect_right(self.times, t) - 1
        while i < len(self.times) and self.times[i] < horizon:
            if self.usage[i] >= self.limit:
                return max(self.times[i], t)
            i += 1
        return horizon


class _Board:
    """The profiles of every limited host and storage while a plan is built."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.profiles: dict[tuple[str, str], _Profile] = {}

    def of(self, job: BackupJob) -> list[_Profile]:
        """The profiles a job's run occupies; an unlimited storage has none."""
        found = [self._profile("host", job.host, self.limits.for_host(job.host))]
        storage_limit = self.limits.for_storage(job.storage)
        if storage_limit is not None:
            found.append(self._profile("storage", job.storage, storage_limit))
        return found

    def _profile(self, kind: str, name: str, limit: int) -> _Profile:
        key = (kind, name)
        if key not in self.profiles:
            self.profiles[key] = _Profile(limit)
        return self.profiles[key]


def schedule_week(
    jobs: Iterable[BackupJob],
    week: Week,
    jitter: timedelta = timedelta(0),
    seed: int = 0,
) -> Plan:
    """Place a week of backups: longest first at the earliest fit, then jitter."""
    runs = sorted(_runs(list(jobs), week), key=_placement_order)
    board = _Board(week.limits)
    placed: list[tuple[_Run, date, int]] = []
    unfit: list[Unfit] = []
    demand = _demand(runs)
    for run in runs:
        found = _earliest(run, week, board)
        if found is None:
            unfit.append(_unfit(run, week, demand))
        else:
            placed.append((run, *found))
    slots = _jittered(placed, week, board, jitter, random.Random(seed))
    return Plan(tuple(sorted(slots, key=_slot_order)), tuple(unfit))


def _runs(jobs: list[BackupJob], week: Week) -> list[_Run]:
    seen: set[str] = set()
    runs: list[_Run] = []
    for job in jobs:
        if job.service_id in seen:
            raise ValueError(f"service {job.service_id!r} has two backup jobs")
        seen.add(job.service_id)
        seconds = math.ceil(job.duration.total_seconds())
        if job.frequency == "daily":
            runs.extend(_Run(job, (day,), seconds) for day in week.days())
        else:
            runs.append(_Run(job, tuple(week.days()), seconds))
    return runs


def _placement_order(run: _Run) -> tuple[int, int, str, date]:
    """Longest first (LPT); daily runs before weekly ones of the same length,
    since they have one night to fit and weekly runs have seven."""
    return (-run.seconds, len(run.days), run.job.service_id, run.days[0])


def _slot_order(slot: Slot) -> tuple[float, str]:
    """By instant, not wall clock, so a DST night's repeated hour sorts right."""
    return (slot.start.timestamp(), slot.job.service_id)


def _bounds(window: Window, day: date) -> tuple[int, int]:
    opens, closes = window.on(day)
    return int(opens.timestamp()), int(closes.timestamp())


def _earliest(run: _Run, week: Week, board: _Board) -> tuple[date, int] | None:
    """The first night, and the first second in it, where the run fits."""
    profiles = board.of(run.job)
    for day in run.days:
        lo, hi = _bounds(week.window_of(run.job), day)
        start = _first_fit(profiles, lo, hi, run.seconds)
        if start is not None:
            for profile in profiles:
                profile.add(start, start + run.seconds)
            return day, start
    return None


def _first_fit(profiles: list[_Profile], lo: int, hi: int, seconds: int) -> int | None:
    start = lo
    while start + seconds <= hi:
        ends = [p.blocked_until(start, start + seconds) for p in profiles]
        later = max((e for e in ends if e is not None), default=start)
        if later == start:
            return start
        start = later
    return None


def _jittered(
    placed: list[tuple[_Run, date, int]],
    week: Week,
    board: _Board,
    jitter: timedelta,
    rng: random.Random,
) -> list[Slot]:
    """Move each run later by a seeded amount within its slack, latest run first."""
    most = int(jitter.total_seconds())
    order = sorted(placed, key=lambda p: (-p[2], p[0].job.service_id, p[1]))
    return [_shift(run, day, start, week, board, most, rng) for run, day, start in order]


def _shift(
    run: _Run, day: date, start: int, week: Week, board: _Board, most: int, rng: random.Random
) -> Slot:
    window = week.window_of(run.job)
    end = start + run.seconds
    if most > 0:
        profiles = board.of(run.job)
        horizon = min(_bounds(window, day)[1], end + most)
        for profile in profiles:
            profile.add(start, end, -1)
        room = min(p.full_from(end, horizon) for p in profiles) - end
        start += rng.randint(0, room)
        end = start + run.seconds
        for profile in profiles:
            profile.add(start, end)
    zone = window.zone
    return Slot(
        run.job, day, datetime.fromtimestamp(start, zone), datetime.fromtimestamp(end, zone)
    )


def _demand(runs: list[_Run]) -> dict[tuple[str, str], int]:
    """Seconds of backup work per host and per storage over the week."""
    total: dict[tuple[str, str], int] = defaultdict(int)
    for run in runs:
        total["host", run.job.host] += run.seconds
        total["storage", run.job.storage] += run.seconds
    return total


def _unfit(run: _Run, week: Week, demand: dict[tuple[str, str], int]) -> Unfit:
    day = run.days[0] if len(run.days) == 1 else None
    return Unfit(run.job, day, _why(run, week, demand))


def _why(run: _Run, week: Week, demand: dict[tuple[str, str], int]) -> str:
    """The most telling reason first: too long, then an overloaded host or storage."""
    window = week.window_of(run.job)
    lo, hi = _bounds(window, run.days[0])
    if run.seconds > hi - lo:
        return f"{_span(run.seconds)} backup is longer than its {window} window ({_span(hi - lo)})"
    limits = week.limits
    for kind, name, limit in (
        ("host", run.job.host, limits.for_host(run.job.host)),
        ("storage", run.job.storage, limits.for_storage(run.job.storage)),
    ):
        reason = _overload(kind, name, limit, demand[kind, name], hi - lo)
        if reason:
            return reason
    return (
        f"no gap of {_span(run.seconds)} left on host {run.job.host} and storage "
        f"{run.job.storage} together in {window} over {len(run.days)} night(s)"
    )


def _overload(kind: str, name: str, limit: int | None, demand: int, length: int) -> str | None:
    """Name the resource whose week of work cannot fit its windows even packed perfectly."""
    if limit is None or demand <= limit * DAYS_IN_WEEK * length:
        return None
    return (
        f"{kind} {name} needs {_span(demand)} of backups in {DAYS_IN_WEEK} windows of "
        f"{_span(length)} at limit {limit}"
    )


def _span(seconds: int) -> str:
    """Hours and minutes, the way an operator reads a backup window."""
    hours, rest = divmod(seconds, 3600)
    minutes = math.ceil(rest / 60)
    if hours and minutes:
        return f"{hours}h{minutes:02d}m"
    return f"{hours}h" if hours else f"{minutes}m"


def peak_concurrency(slots: Iterable[Slot], key: Callable[[BackupJob], str]) -> dict[str, int]:
    """The most runs at once per host (``key=lambda j: j.host``) or per storage."""
    events: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for slot in slots:
        events[key(slot.job)] += [(slot.start, 1), (slot.end, -1)]
    return {name: _peak(points) for name, points in events.items()}


def _peak(points: list[tuple[datetime, int]]) -> int:
    """Ends sort before starts at the same instant: back-to-back runs do not overlap."""
    running = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0].timestamp(), p[1])):
        running += delta
        peak = max(peak, running)
    return peak


def check_plan(plan: Plan, jobs: Iterable[BackupJob], week: Week) -> list[str]:
    """Every broken promise of a plan, in words; an empty list means it holds."""
    jobs = list(jobs)
    return [
        *_check_windows(plan, week),
        *_check_limits(plan, week.limits),
        *_check_accounting(plan, jobs),
    ]


def _check_windows(plan: Plan, week: Week) -> list[str]:
    problems = []
    for slot in plan.slots:
        opens, closes = _bounds(week.window_of(slot.job), slot.day)
        inside = opens <= slot.start.timestamp() and slot.end.timestamp() <= closes
        if slot.day not in week.days() or not inside:
            problems.append(f"{slot.job.service_id}: {slot.start}-{slot.end} outside its window")
        elapsed = slot.end.timestamp() - slot.start.timestamp()  # same-zone "-" is wall time
        if elapsed < slot.job.duration.total_seconds():
            problems.append(f"{slot.job.service_id}: shorter than its duration")
    return problems


def _check_limits(plan: Plan, limits: Limits) -> list[str]:
    problems = []
    for name, peak in peak_concurrency(plan.slots, lambda j: j.host).items():
        if peak > limits.for_host(name):
            problems.append(f"host {name}: {peak} at once, limit {limits.for_host(name)}")
    for name, peak in peak_concurrency(plan.slots, lambda j: j.storage).items():
        limit = limits.for_storage(name)
        if limit is not None and peak > limit:
            problems.append(f"storage {name}: {peak} at once, limit {limit}")
    return problems


def _check_accounting(plan: Plan, jobs: list[BackupJob]) -> list[str]:
    """Each job has one run a week, or one a night if daily, planned or unfit."""
    counts: dict[str, int] = defaultdict(int)
    for job in [s.job for s in plan.slots] + [u.job for u in plan.unfit]:
        counts[job.service_id] += 1
    problems = [f"{u.job.service_id}: unfit without a reason" for u in plan.unfit if not u.reason]
    for job in jobs:
        expected = DAYS_IN_WEEK if job.frequency == "daily" else 1
        if counts[job.service_id] != expected:
            problems.append(f"{job.service_id}: {counts[job.service_id]} runs, expected {expected}")
    return problems
