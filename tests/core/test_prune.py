"""Prune: Proxmox's retention rules, worked out by hand, then as properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core.prune import KEEP_ONE, Backup, Decision, KeepRules, prune

WIB = ZoneInfo("Asia/Jakarta")
BERLIN = ZoneInfo("Europe/Berlin")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=WIB)


def named(times: list[datetime]) -> list[Backup]:
    """Backups named by their wall time, so a failing assert reads like a calendar."""
    return [Backup(t.strftime("%Y-%m-%d %H:%M"), t) for t in times]


def kept(decisions: list[Decision]) -> set[str]:
    return {d.backup_id for d in decisions if d.kept}


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.backup_id: d for d in decisions}


def simulator_default() -> list[Backup]:
    """The PBS prune simulator's default: every 6 hours, every day, 15 weeks.

    Here the 15 weeks end on Friday 2026-11-20 at 18:00.
    """
    end = at(2026, 11, 20, 18)
    return named([end - timedelta(hours=6 * n) for n in range(15 * 7 * 4)])


def test_simulator_default_options() -> None:
    # Simulator defaults keep-last=4, keep-daily=5, keep-weekly=2.
    # keep-last takes the 4 newest: all of Friday 20 (18, 12, 06, 00).
    # keep-daily skips Friday (covered) and keeps the 18:00 of Thu 19 .. Sun 15.
    # keep-weekly: ISO weeks 47 (Nov 16-22) and 46 (Nov 9-15) are covered by the
    # daily keeps, so it keeps the newest of weeks 45 and 44: Sundays 8 and 1 Nov.
    decisions = prune(simulator_default(), KeepRules(last=4, daily=5, weekly=2))
    assert kept(decisions) == {
        "2026-11-20 18:00", "2026-11-20 12:00", "2026-11-20 06:00", "2026-11-20 00:00",
        "2026-11-19 18:00", "2026-11-18 18:00", "2026-11-17 18:00", "2026-11-16 18:00",
        "2026-11-15 18:00",
        "2026-11-08 18:00", "2026-11-01 18:00",
    }  # fmt: skip
    reasons = by_id(decisions)
    assert reasons["2026-11-20 12:00"].reason == "keep-last 2/4"
    assert reasons["2026-11-15 18:00"].reason == "keep-daily 2026-11-15 (5/5)"
    assert reasons["2026-11-01 18:00"].reason == "keep-weekly 2026-W44 (2/2)"
    # 31 Oct is older than the kept Sunday of its week W44; 25 Oct lies past the last week.
    assert reasons["2026-10-31 18:00"].reason.startswith("keep-weekly 2026-W44: a newer")
    assert reasons["2026-10-25 18:00"].reason == "not selected by any rule"


def test_decisions_are_newest_first_and_cover_every_backup() -> None:
    backups = simulator_default()
    decisions = prune(reversed(backups), KeepRules(last=4))
    assert [d.backup_id for d in decisions] == [b.backup_id for b in backups]


def test_covered_periods_do_not_count() -> None:
    # Daily backups through Wednesday 18 Nov. keep-daily=3 keeps Wed, Tue, Mon,
    # which covers ISO week 47, so keep-weekly=2 reaches back to weeks 46 and 45
    # and keeps their newest backups, the Sundays 15 and 8 Nov.
    backups = named([at(2026, 11, 18, 2) - timedelta(days=n) for n in range(30)])
    decisions = prune(backups, KeepRules(daily=3, weekly=2))
    assert kept(decisions) == {
        "2026-11-18 02:00", "2026-11-17 02:00", "2026-11-16 02:00",
        "2026-11-15 02:00", "2026-11-08 02:00",
    }  # fmt: skip


def test_monthly_and_yearly_keep_the_newest_of_each_period() -> None:
    # Weekly backups on Sundays through 2026. keep-monthly=2 keeps the last Sunday
    # of December and November; keep-yearly=2 has 2026 covered and keeps the
    # newest of 2025, its last Sunday, 28 Dec 2025.
    backups = named([at(2026, 12, 27, 3) - timedelta(weeks=n) for n in range(60)])
    decisions = prune(backups, KeepRules(monthly=2, yearly=2))
    assert kept(decisions) == {"2026-12-27 03:00", "2026-11-29 03:00", "2025-12-28 03:00"}


def test_several_backups_in_one_period_keep_only_the_newest() -> None:
    # Two backups a day; keep-daily=2 keeps the evening one of the two newest
    # days. The morning ones are removed as superseded within their period.
    times = [at(2026, 11, d, h) for d in (20, 19, 18) for h in (22, 9)]
    decisions = by_id(prune(named(times), KeepRules(daily=2)))
    assert {k for k, d in decisions.items() if d.kept} == {"2026-11-20 22:00", "2026-11-19 22:00"}
    assert decisions["2026-11-20 09:00"].mark == "remove"
    assert "same period" in decisions["2026-11-20 09:00"].reason
    assert decisions["2026-11-18 22:00"].reason == "not selected by any rule"


def test_hosting_terms_keep_one_replaces_the_previous_backup() -> None:
    # cybernet and Herza.ID: one weekly copy, each new backup replaces the last.
    backups = named([at(2026, 11, 22, 1) - timedelta(weeks=n) for n in range(3)])
    decisions = prune(backups, KEEP_ONE)
    assert [d.mark for d in decisions] == ["keep", "remove", "remove"]
    assert KEEP_ONE.to_text() == "keep-last=1"


def test_protected_in_the_middle_is_kept_and_does_not_count() -> None:
    # keep-last=2 over four backups, the second newest protected: keep-last skips
    # it and takes the first and third; the protected one stays; the fourth goes.
    times = [at(2026, 11, 20 - n) for n in range(4)]
    backups = [Backup(str(n), t, protected=(n == 1)) for n, t in enumerate(times)]
    assert [d.mark for d in prune(backups, KeepRules(last=2))] == [
        "keep",
        "protected",
        "keep",
        "remove",
    ]


def test_protected_backup_does_not_cover_its_period() -> None:
    # PBS only counts "keep" marks as covering: the day's newest is protected, so
    # keep-daily still keeps the newest unprotected backup of that day.
    backups = [
        Backup("evening", at(2026, 11, 20, 22), protected=True),
        Backup("morning", at(2026, 11, 20, 9)),
        Backup("yesterday", at(2026, 11, 19, 9)),
    ]
    marks = {d.backup_id: d.mark for d in prune(backups, KeepRules(daily=1))}
    assert marks == {"evening": "protected", "morning": "keep", "yesterday": "remove"}


@pytest.mark.parametrize(
    ("rules", "reason"),
    [(KeepRules(keep_all=True), "keep-all"), (KeepRules(), "no keep option set: keep all")],
)
def test_keep_all_or_no_option_keeps_everything(rules: KeepRules, reason: str) -> None:
    backups = named([at(2026, 11, 20) - timedelta(days=n) for n in range(5)])
    backups.append(Backup("locked", at(2020, 1, 1), protected=True))
    decisions = prune(backups, rules)
    assert [d.mark for d in decisions] == ["keep"] * 5 + ["protected"]
    assert decisions[0].reason == reason


def test_empty() -> None:
    assert prune([], KeepRules(last=3)) == []


def test_tuples_are_accepted() -> None:
    decisions = prune([("a", at(2026, 1, 1), False), ("b", at(2026, 1, 2), True)], KEEP_ONE)
    assert decisions == [
        Decision("b", "protected", "protected"),
        Decision("a", "keep", "keep-last 1/1"),
    ]


def test_iso_week_crosses_new_year() -> None:
    # 29 Dec 2026 and 2 Jan 2027 are both in ISO week 2026-W53, so keep-weekly=2
    # keeps 2 Jan (W53) and 22 Dec (W52) and drops 29 Dec. A calendar-year week
    # (%Y/%W) would have split them and kept 29 Dec instead.
    backups = named([at(2027, 1, 2), at(2026, 12, 29), at(2026, 12, 22)])
    decisions = prune(backups, KeepRules(weekly=2))
    assert kept(decisions) == {"2027-01-02 00:00", "2026-12-22 00:00"}
    assert decisions[0].reason == "keep-weekly 2026-W53 (1/2)"


def test_days_are_read_on_the_backups_own_clock() -> None:
    # 16:00 and 18:00 UTC on 20 Nov are one UTC day but two Jakarta days
    # (23:00 on the 20th, 01:00 on the 21st): keep-daily=2 keeps both only in WIB.
    utc = [datetime(2026, 11, 20, 18, tzinfo=UTC), datetime(2026, 11, 20, 16, tzinfo=UTC)]
    in_utc = prune([Backup(str(n), t) for n, t in enumerate(utc)], KeepRules(daily=2))
    in_wib = prune(
        [Backup(str(n), t.astimezone(WIB)) for n, t in enumerate(utc)], KeepRules(daily=2)
    )
    assert [d.mark for d in in_utc] == ["keep", "remove"]
    assert [d.mark for d in in_wib] == ["keep", "keep"]


def test_repeated_dst_hour_is_one_hourly_period() -> None:
    # Berlin falls back at 03:00 CEST on 25 Oct 2026: 02:30 happens twice.
    # Both are hour "02" on the wall clock, so keep-hourly=2 keeps the later
    # 02:30 (fold=1) and 01:30, and drops the first 02:30.
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)
    second = first.replace(fold=1)
    backups = [
        Backup("first 02:30", first),
        Backup("second 02:30", second),
        Backup("01:30", datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN)),
    ]
    marks = {d.backup_id: d.mark for d in prune(backups, KeepRules(hourly=2))}
    assert marks == {"second 02:30": "keep", "first 02:30": "remove", "01:30": "keep"}


def test_keep_last_counts_whole_seconds() -> None:
    # PBS and PVE key keep-last by epoch seconds: two backups in the same second
    # are one "last" period, so keep-last=2 reaches the backup a second older.
    t = at(2026, 11, 20, 1)
    backups = [
        Backup("b", t.replace(microsecond=500)),
        Backup("a", t),
        Backup("older", t - timedelta(seconds=1)),
    ]
    assert [d.mark for d in prune(backups, KeepRules(last=2))] == ["keep", "remove", "keep"]


def test_naive_times_and_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        prune([Backup("a", datetime(2026, 1, 1))], KEEP_ONE)
    with pytest.raises(ValueError, match="twice"):
        prune([Backup("a", at(2026, 1, 1)), Backup("a", at(2026, 1, 2))], KEEP_ONE)


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("keep-last=3,keep-daily=7", KeepRules(last=3, daily=7)),
        (" keep-weekly = 4 , keep-yearly=1,", KeepRules(weekly=4, yearly=1)),
        ("keep-all=1", KeepRules(keep_all=True)),
        ("keep-all=0,keep-monthly=6", KeepRules(monthly=6)),
        ("keep-all=yes,keep-last=0", KeepRules(keep_all=True)),
        ("keep-hourly=24", KeepRules(hourly=24)),
        ("", KeepRules()),
    ],
)
def test_parse(text: str, rules: KeepRules) -> None:
    assert KeepRules.parse(text) == rules


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("keep-lst=3", "'keep-lst=3'"),
        ("keep-last=-1", "'keep-last=-1'"),
        ("keep-daily=1.5", "'keep-daily=1.5'"),
        ("keep-daily=seven", "'keep-daily=seven'"),
        ("keep-last", "'keep-last'"),
        ("keep-last=1,keep-last=2", "'keep-last=2'"),
        ("keep-all=maybe", "'keep-all=maybe'"),
        ("keep-all=1,keep-last=2", "keep-all cannot be set together"),
    ],
)
def test_parse_names_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(ValueError, match=names.replace(".", r"\.")):
        KeepRules.parse(text)


def test_negative_counts_are_refused_in_code_too() -> None:
    with pytest.raises(ValueError, match="keep-daily"):
        KeepRules(daily=-1)


counts = st.integers(0, 4)
rules_strategy = st.builds(
    KeepRules, last=counts, hourly=counts, daily=counts, weekly=counts, monthly=counts,
    yearly=counts,
)  # fmt: skip


@st.composite
def backup_lists(draw: st.DrawFn) -> list[Backup]:
    """Up to 40 backups at distinct minutes, some protected.

    Spread over two days, two weeks or three years, so that periods often hold
    several backups and every rule gets to choose.
    """
    span = draw(st.sampled_from([2 * 24 * 60, 14 * 24 * 60, 3 * 365 * 24 * 60]))
    minutes = draw(st.lists(st.integers(0, span), unique=True, max_size=40))
    zone = draw(st.sampled_from([UTC, WIB, BERLIN]))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        Backup(f"b{m}", (start + timedelta(minutes=m)).astimezone(zone), draw(st.booleans()))
        for m in minutes
    ]


@given(rules_strategy)
def test_to_text_round_trips(rules: KeepRules) -> None:
    assert KeepRules.parse(rules.to_text()) == rules


@given(backup_lists(), rules_strategy)
def test_kept_set_contains_the_newest_n(backups: list[Backup], rules: KeepRules) -> None:
    newest = sorted(backups, key=lambda b: b.taken_at, reverse=True)[: rules.last]
    assert {b.backup_id for b in newest} <= kept(prune(backups, rules))


@given(
    backup_lists(),
    rules_strategy,
    st.sampled_from(["last", "hourly", "daily", "weekly", "monthly", "yearly"]),
    st.integers(1, 3),
)
def test_raising_a_count_never_removes_a_kept_backup(
    backups: list[Backup], rules: KeepRules, rule: str, more: int
) -> None:
    if not rules.keeps_something():
        return  # from keep-everything, any count removes: that is the point of a rule
    raised = KeepRules(**{**rules.__dict__, rule: getattr(rules, rule) + more})
    assert kept(prune(backups, rules)) <= kept(prune(backups, raised))


@given(backup_lists(), rules_strategy)
def test_pruning_the_kept_set_again_keeps_all_of_it(
    backups: list[Backup], rules: KeepRules
) -> None:
    survivors = kept(prune(backups, rules))
    again = prune([b for b in backups if b.backup_id in survivors], rules)
    assert all(d.kept for d in again)


@given(backup_lists(), rules_strategy)
def test_protected_always_kept_and_every_decision_explained(
    backups: list[Backup], rules: KeepRules
) -> None:
    decisions = by_id(prune(backups, rules))
    assert decisions.keys() == {b.backup_id for b in backups}
    assert all(decisions[b.backup_id].mark == "protected" for b in backups if b.protected)
    assert all(d.reason for d in decisions.values())
