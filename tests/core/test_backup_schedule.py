"""Backup schedule: hand-checked weeks, then the plan's promises as properties."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.backup_schedule import (
    BackupJob,
    Frequency,
    Limits,
    Plan,
    Week,
    Window,
    check_plan,
    peak_concurrency,
    schedule_week,
)

WIB = ZoneInfo("Asia/Jakarta")
BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = date(2026, 11, 23)
NIGHT = Window(time(1), time(5), WIB)


def wib(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=WIB)


def job(
    sid: str,
    minutes: int,
    host: str = "kvm-1",
    storage: str = "nfs-1",
    frequency: Frequency = "weekly",
    window: Window | None = None,
) -> BackupJob:
    return BackupJob(sid, host, storage, timedelta(minutes=minutes), frequency, window)


def starts(plan: Plan) -> dict[str, datetime]:
    return {s.job.service_id: s.start for s in plan.slots}


def test_longest_first_onto_the_earliest_free_slot() -> None:
    # Limit 2 on kvm-1: the two longest (3h, 2h) start at 01:00; the 1h30 one
    # waits for the 2h one to end at 03:00 and ends at 04:30, inside the window.
    jobs = [job("short", 90), job("long", 180), job("mid", 120)]
    week = Week(MONDAY, NIGHT)
    plan = schedule_week(jobs, week)
    assert starts(plan) == {"long": wib(23, 1), "mid": wib(23, 1), "short": wib(23, 3)}
    assert plan.unfit == ()
    assert check_plan(plan, jobs, week) == []


def test_weekly_run_moves_to_the_next_night_when_tonight_is_full() -> None:
    # Three 3h runs at limit 2: the third cannot fit Monday's 4h window after
    # either of the first two, so it goes to Tuesday 01:00.
    jobs = [job(f"vm{n}", 180) for n in range(3)]
    plan = schedule_week(jobs, Week(MONDAY, NIGHT))
    assert sorted(starts(plan).values()) == [wib(23, 1), wib(23, 1), wib(24, 1)]
    assert plan.slots[-1].day == date(2026, 11, 24)


def test_storage_limit_serialises_runs_of_different_hosts() -> None:
    # Two hosts, each with room for two runs, share a storage that takes one
    # at a time: the runs go back to back.
    jobs = [job("a", 60, host="kvm-1"), job("b", 60, host="kvm-2")]
    week = Week(MONDAY, NIGHT, Limits(storage=1))
    plan = schedule_week(jobs, week)
    assert starts(plan) == {"a": wib(23, 1), "b": wib(23, 2)}
    assert peak_concurrency(plan.slots, lambda j: j.storage) == {"nfs-1": 1}


def test_window_crossing_midnight_belongs_to_the_night_it_opens() -> None:
    # 22:00-02:00: a 3h run opening Monday night ends at 01:00 on Tuesday.
    late = Window(time(22), time(2), WIB)
    plan = schedule_week([job("vm", 180)], Week(MONDAY, late))
    (slot,) = plan.slots
    assert (slot.day, slot.start, slot.end) == (MONDAY, wib(23, 22), wib(24, 1))


def test_equal_start_and_end_is_a_whole_day() -> None:
    plan = schedule_week([job("vm", 23 * 60)], Week(MONDAY, Window(time(6), time(6), WIB)))
    (slot,) = plan.slots
    assert (slot.start, slot.end) == (wib(23, 6), wib(24, 5))


def test_daily_job_runs_every_night_and_preferred_window_wins() -> None:
    early = Window(time(3), time(4), WIB)
    jobs = [job("db", 30, frequency="daily", window=early), job("web", 30)]
    week = Week(MONDAY, NIGHT)
    plan = schedule_week(jobs, week)
    db = [s for s in plan.slots if s.job.service_id == "db"]
    assert [s.start for s in db] == [wib(23 + n, 3) for n in range(7)]
    assert starts(plan)["web"] == wib(23, 1)
    assert check_plan(plan, jobs, week) == []


def test_overloaded_host_is_reported_not_dropped() -> None:
    # Daily runs of 3h + 3h + 3h on kvm-1: 63h a week against 7 windows of 4h at
    # limit 2 (56h). Two fit each night; the third is unfit every night.
    jobs = [job(f"vm{n}", 180, frequency="daily") for n in range(3)]
    week = Week(MONDAY, NIGHT)
    plan = schedule_week(jobs, week)
    assert len(plan.slots) == 14
    assert len(plan.unfit) == 7
    assert {u.day for u in plan.unfit} == set(week.days())
    assert plan.unfit[0].reason == ("host kvm-1 needs 63h of backups in 7 windows of 4h at limit 2")
    assert check_plan(plan, jobs, week) == []


def test_run_longer_than_its_window() -> None:
    plan = schedule_week([job("big", 300)], Week(MONDAY, NIGHT))
    (unfit,) = plan.unfit
    assert unfit.day is None
    assert unfit.reason == "5h backup is longer than its 01:00-05:00 window (4h)"


def test_fragmented_nights_say_there_is_no_gap() -> None:
    # Limit 1 and a daily 3h run leave a 1h gap each night: 23h of 28h used, yet
    # a weekly 2h run fits nowhere, and the reason must not blame the total.
    jobs = [job("daily", 180, frequency="daily"), job("weekly", 120)]
    plan = schedule_week(jobs, Week(MONDAY, NIGHT, Limits(host=1)))
    (unfit,) = plan.unfit
    assert unfit.job.service_id == "weekly"
    assert unfit.reason.startswith("no gap of 2h left on host kvm-1 and storage nfs-1")


def test_dst_night_is_longer_on_the_wall_clock() -> None:
    # Berlin falls back on Sunday 25 Oct 2026: that night's 01:00-05:00 lasts 5h,
    # so a 4h30 run fits only then.
    week = Week(date(2026, 10, 19), Window(time(1), time(5), BERLIN))
    plan = schedule_week([job("vm", 270)], week)
    (slot,) = plan.slots
    assert slot.day == date(2026, 10, 25)
    # 01:00 CEST to 04:30 CET is 3h30 on the wall clock and 4h30 elapsed.
    assert slot.end.replace(tzinfo=None) == datetime(2026, 10, 25, 4, 30)
    assert slot.end.timestamp() - slot.start.timestamp() == 270 * 60
    assert check_plan(plan, [job("vm", 270)], week) == []


def test_jitter_stays_within_slack_and_depends_on_the_seed() -> None:
    jobs = [job(f"vm{n}", 20, host=f"kvm-{n}") for n in range(20)]
    week = Week(MONDAY, NIGHT)
    one = schedule_week(jobs, week, jitter=timedelta(minutes=30), seed=1)
    two = schedule_week(jobs, week, jitter=timedelta(minutes=30), seed=2)
    assert one == schedule_week(jobs, week, jitter=timedelta(minutes=30), seed=1)
    assert starts(one) != starts(two)
    assert all(wib(23, 1) <= s <= wib(23, 1, 30) for s in starts(one).values())
    assert check_plan(one, jobs, week) == []


def test_duplicate_service_and_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="two backup jobs"):
        schedule_week([job("a", 10), job("a", 20)], Week(MONDAY, NIGHT))
    with pytest.raises(ValueError, match="at least 1"):
        Limits(host=0)
    with pytest.raises(ValueError, match="positive"):
        job("a", 0)


def test_check_plan_catches_a_broken_plan() -> None:
    jobs = [job("a", 60), job("b", 60), job("c", 60)]
    week = Week(MONDAY, NIGHT)
    plan = schedule_week(jobs, week)
    crowded = Plan(tuple(s.__class__(s.job, s.day, wib(23, 1), wib(23, 2)) for s in plan.slots), ())
    assert check_plan(crowded, jobs, week) == ["host kvm-1: 3 at once, limit 2"]
    late = plan.slots[0].__class__(jobs[0], MONDAY, wib(23, 4, 30), wib(23, 5, 30))
    problems = check_plan(Plan((late,), ()), jobs, week)
    assert problems[0].startswith("a: ")
    assert "b: 0 runs, expected 1" in problems


@st.composite
def weeks(draw: st.DrawFn) -> tuple[list[BackupJob], Week]:
    """Small random fleets on 3 hosts and 2 storages, often more than fits."""
    start = draw(st.integers(0, 23))
    hours = draw(st.integers(1, 24))  # 24: start == end, a whole day
    window = Window(time(start), time((start + hours) % 24), draw(st.sampled_from([WIB, BERLIN])))
    limits = Limits(host=draw(st.integers(1, 3)), storage=draw(st.none() | st.integers(1, 3)))
    jobs = [
        BackupJob(
            f"svc-{n}",
            draw(st.sampled_from(["kvm-1", "kvm-2", "kvm-3"])),
            draw(st.sampled_from(["nfs-1", "pbs-1"])),
            timedelta(minutes=draw(st.integers(1, 8 * 60))),
            draw(st.sampled_from(["weekly", "weekly", "daily"])),
        )
        for n in range(draw(st.integers(0, 30)))
    ]
    first = draw(st.dates(date(2026, 1, 1), date(2027, 12, 31)))
    return jobs, Week(first, window, limits)


jitters = st.integers(0, 120).map(lambda m: timedelta(minutes=m))


@settings(max_examples=150, deadline=None)
@given(weeks(), jitters, st.integers(0, 2**32))
def test_every_plan_keeps_its_promises(
    fleet: tuple[list[BackupJob], Week], jitter: timedelta, seed: int
) -> None:
    # Limits never exceeded, every run inside its window, every job planned or
    # unfit with a reason: check_plan states all three.
    jobs, week = fleet
    plan = schedule_week(jobs, week, jitter, seed)
    assert check_plan(plan, jobs, week) == []


@settings(deadline=None)
@given(weeks(), jitters, st.integers(0, 2**32), st.randoms())
def test_same_seed_same_plan_whatever_the_input_order(
    fleet: tuple[list[BackupJob], Week], jitter: timedelta, seed: int, shuffle: object
) -> None:
    jobs, week = fleet
    shuffled = list(jobs)
    shuffle.shuffle(shuffled)  # type: ignore[attr-defined]
    assert schedule_week(jobs, week, jitter, seed) == schedule_week(shuffled, week, jitter, seed)


@settings(deadline=None)
@given(weeks())
def test_without_jitter_every_run_starts_at_the_window_or_after_another(
    fleet: tuple[list[BackupJob], Week],
) -> None:
    # List scheduling leaves no idle start: a run that does not open its window
    # was waiting for a run on its host or storage to end at that instant.
    jobs, week = fleet
    plan = schedule_week(jobs, week)
    ends = {(s.job.host, s.end.timestamp()) for s in plan.slots}
    ends |= {(s.job.storage, s.end.timestamp()) for s in plan.slots}
    for slot in plan.slots:
        opens = week.window_of(slot.job).on(slot.day)[0].timestamp()
        waited = {
            (slot.job.host, slot.start.timestamp()),
            (slot.job.storage, slot.start.timestamp()),
        }
        assert slot.start.timestamp() == opens or waited & ends
