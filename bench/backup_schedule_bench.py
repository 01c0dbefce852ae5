"""A week of backups for a fleet: makespan against the lower bound, and a naive baseline.

    .venv/bin/python bench/backup_schedule_bench.py --jobs 10000 --hosts 50

Draws N weekly backups over H hosts (seeded durations, 5-60 minutes), each
host's storage shared by five hosts, and schedules the week with
``schedule_week`` (at most 2 backups per host, 10 per storage, a nightly
window). Prints, each measured in this run:

- the makespan: window time used from the first night's opening until the
  last backup ends (hours outside the window do not count);
- the lower bound: the busiest host's total work divided by its limit, which
  no schedule can beat;
- a naive baseline: backups in arrival order, each on the host's earliest
  free lane, as a cron script would do it;
- the wall time of scheduling, and the plan checked by ``check_plan``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from datetime import UTC, date, timedelta
from datetime import time as clock
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.core.backup_schedule import (  # noqa: E402
    BackupJob,
    Limits,
    Plan,
    Week,
    Window,
    check_plan,
    schedule_week,
)

MONDAY = date(2026, 11, 23)
HOSTS_PER_STORAGE = 5


def fleet(jobs: int, hosts: int, seed: int) -> list[BackupJob]:
    rng = random.Random(seed)
    return [
        BackupJob(
            f"svc-{n:05d}",
            f"kvm-{n % hosts:02d}",
            f"pbs-{n % hosts // HOSTS_PER_STORAGE:02d}",
            timedelta(minutes=rng.randint(5, 60)),
        )
        for n in range(jobs)
    ]


def window_hours(week: Week) -> float:
    opens, closes = week.window.on(week.start)
    return (closes.timestamp() - opens.timestamp()) / 3600


def makespan(plan: Plan, week: Week) -> float:
    """Window hours from the first opening to the last end, skipping the gaps between nights."""
    last = max(plan.slots, key=lambda s: s.end.timestamp())
    nights = (last.day - week.start).days
    opens = week.window.on(last.day)[0]
    return nights * window_hours(week) + (last.end.timestamp() - opens.timestamp()) / 3600


def lower_bound(jobs: list[BackupJob], limit: int) -> float:
    work: dict[str, float] = defaultdict(float)
    for job in jobs:
        work[job.host] += job.duration.total_seconds() / 3600
    return max(work.values()) / limit


def naive(jobs: list[BackupJob], limit: int, night: float) -> float:
    """Arrival order, earliest free lane of the host, next night when it would overrun."""
    lanes: dict[str, list[float]] = defaultdict(lambda: [0.0] * limit)
    for job in jobs:
        free = lanes[job.host]
        lane = min(range(limit), key=free.__getitem__)
        start, hours = free[lane], job.duration.total_seconds() / 3600
        if start % night + hours > night:
            start = (start // night + 1) * night
        free[lane] = start + hours
    return max(max(free) for free in lanes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--window", default="20:00-08:00", help="nightly window, UTC")
    parser.add_argument("--jitter-minutes", type=int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    jobs = fleet(args.jobs, args.hosts, args.seed)
    opens, closes = (clock.fromisoformat(t) for t in args.window.split("-"))
    week = Week(MONDAY, Window(opens, closes, UTC), Limits(host=args.limit, storage=10))
    jitter = timedelta(minutes=args.jitter_minutes)

    started = time.perf_counter()
    plan = schedule_week(jobs, week, jitter, args.seed)
    seconds = time.perf_counter() - started
    checked = time.perf_counter()
    problems = check_plan(plan, jobs, week)
    check_seconds = time.perf_counter() - checked

    bound = lower_bound(jobs, args.limit)
    span = makespan(plan, week)
    baseline = naive(jobs, args.limit, window_hours(week))
    print(f"{args.jobs:,} weekly backups, {args.hosts} hosts at limit {args.limit}, ", end="")
    print(f"window {args.window} ({window_hours(week):.0f} h a night, 7 nights)")
    print(f"planned {len(plan.slots):,}, unfit {len(plan.unfit)}, check: {problems or 'ok'}")
    print(f"lower bound (busiest host work / limit): {bound:8.2f} window-hours")
    print(f"makespan, list scheduling + jitter:      {span:8.2f} window-hours")
    print(f"makespan, naive arrival order:           {baseline:8.2f} window-hours")
    print(f"ratio makespan/lower bound: {span / bound:.3f}")
    print(f"ratio naive/lower bound:    {baseline / bound:.3f}")
    print(f"scheduling wall time: {seconds:.2f} s ({seconds / args.jobs * 1e6:.0f} us a backup)")
    print(f"check_plan wall time: {check_seconds:.2f} s")
    print(f"first start {min(s.start for s in plan.slots):%a %H:%M}, ", end="")
    print(f"last end {max(s.end for s in plan.slots):%a %H:%M}")


if __name__ == "__main__":
    main()
