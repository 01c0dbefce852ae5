"""The backup rules of the policies, joined to services: pure, no driver."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from drivers.base import BackupCopy
from orchestrator.core import backups
from orchestrator.core.backup_schedule import Slot
from orchestrator.core.events import Event
from orchestrator.core.facts import derive_facts
from orchestrator.core.inventory import HostVars
from orchestrator.core.lifecycle import lifecycle
from orchestrator.core.policy import Backups, Policy
from orchestrator.core.prune import KeepRules
from tests.conftest import created, events, invoice, wib

CLAUSE = "4.4.5: weekly"


def _facts(items: list[Event]):  # type: ignore[no-untyped-def]
    return derive_facts(items[0].service, items)


def test_herza_vps_is_backed_up_weekly_in_the_night_and_keeps_one(
    policies: dict[str, Policy],
) -> None:
    facts = _facts(events(created("h1", policy="herza")))
    herza = policies["herza"]
    assert backups.frequency(facts, herza) == "weekly"
    rules = backups.rules_of(facts, herza)
    assert rules.keep_rules() == KeepRules(last=1)
    window = backups.window_of(rules, herza)
    assert (window.start, window.end) == (time(1), time(5)) and str(window.zone) == "Asia/Jakarta"


def test_the_daily_add_on_where_the_policy_sells_it(policies: dict[str, Policy]) -> None:
    spec = {"vcpus": 1, "memory_mib": 512, "disk_gib": 1, "daily_backups": True}
    herza = _facts(events(created("h2", policy="herza", spec=spec)))
    assert backups.frequency(herza, policies["herza"]) == "daily"
    klik = _facts(events(created("k2", policy="klikserver", spec=spec)))
    assert backups.frequency(klik, policies["klikserver"]) == "weekly"  # no add-on sold there


def test_a_job_takes_the_measured_length_with_a_margin(policies: dict[str, Policy]) -> None:
    facts = _facts(events(created("h3", policy="herza")))
    host = HostVars(pool="lab-v4", backup_minutes=45, backup_storage="nas-1")
    guessed = backups.job_for(facts, policies["herza"], "kvm-jkt-1", host, None)
    assert guessed is not None and guessed.duration == timedelta(minutes=45)
    assert guessed.storage == "nas-1"
    measured = backups.job_for(
        facts, policies["herza"], "kvm-jkt-1", host, backups.estimate(30 * 60.0)
    )
    assert measured is not None and measured.duration == timedelta(minutes=38)


def test_no_backup_while_suspended_for_nonpayment_when_the_policy_says_so(
    policies: dict[str, Policy],
) -> None:
    facts = _facts(events(created("c1", policy="cybernet"), invoice("c1", "2026-12-01")))
    verdict = lifecycle(facts, policies["cybernet"], wib(2026, 12, 4))
    assert verdict.phase.value == "suspended"
    forbidding = Backups(frequency="weekly", keep=1, while_suspended=False, clause=CLAUSE)
    assert "nonpayment" in (backups.refusal(verdict, forbidding) or "")
    allowing = forbidding.model_copy(update={"while_suspended": True})
    assert backups.refusal(verdict, allowing) is None
    active = lifecycle(facts, policies["cybernet"], wib(2026, 11, 20))
    assert backups.refusal(active, forbidding) is None


def test_no_backup_of_a_terminated_service(policies: dict[str, Policy]) -> None:
    facts = _facts(events(created("c2", policy="cybernet"), invoice("c2", "2026-12-01")))
    verdict = lifecycle(facts, policies["cybernet"], wib(2027, 1, 20))
    rules = Backups(frequency="weekly", keep=1, clause=CLAUSE)
    assert "no machine" in (backups.refusal(verdict, rules) or "")


def test_retention_never_counts_or_prunes_the_archive() -> None:
    start = datetime(2026, 12, 1, 19, tzinfo=UTC)
    copies = [
        BackupCopy("b-old", start),
        BackupCopy("b-new", start + timedelta(days=7)),
        BackupCopy("archive", start + timedelta(days=8), archive=True),
    ]
    decided = {d.backup_id: d for d in backups.retention(copies, KeepRules(last=1))}
    assert [d.backup_id for d in backups.retention(copies, KeepRules(last=1))] == [
        "archive", "b-new", "b-old"]
    assert decided["b-new"].mark == "keep" and decided["b-old"].mark == "remove"
    assert decided["archive"].kept and "archive" in decided["archive"].reason


def test_slot_keys_name_the_week_or_the_night(policies: dict[str, Policy]) -> None:
    facts = _facts(events(created("h4", policy="herza")))
    host = HostVars(pool="lab-v4")
    job = backups.job_for(facts, policies["herza"], "h", host, None)
    assert job is not None
    monday = date(2026, 12, 7)
    start = datetime(2026, 12, 9, 18, tzinfo=UTC)
    slot = Slot(job, date(2026, 12, 10), start, start + timedelta(minutes=30))
    assert backups.slot_key(slot, monday) == "h4:backup:weekly:2026-12-07"
    daily = Slot(
        job.__class__(**{**job.__dict__, "frequency": "daily"}), slot.day, slot.start, slot.end
    )
    assert backups.slot_key(daily, monday) == "h4:backup:daily:2026-12-10"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"window": "1:00-05:00"}, "HH:MM-HH:MM"),
        ({"window": "01:00-24:00"}, "HH:MM-HH:MM"),
        ({"retention": "keep-lats=1"}, "keep-lats"),
        ({"retention": "keep-last=-1"}, "keep-last"),
        ({"keep": 0}, "none kept"),
    ],
)
def test_bad_backup_rules_are_refused_with_what_is_wrong(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Backups.model_validate({"frequency": "weekly", "keep": 1, "clause": CLAUSE, **fields})


def test_retention_in_proxmox_words_wins_over_keep() -> None:
    rules = Backups(frequency="daily", keep=1, retention="keep-daily=7,keep-weekly=4",
                    window="22:00-02:00", clause=CLAUSE)
    assert rules.keep_rules() == KeepRules(daily=7, weekly=4)
    assert rules.window_times() == (time(22), time(2))


def test_a_backup_step_knows_when_its_window_closes(policies: dict[str, Policy]) -> None:
    facts = _facts(events(created("h5", policy="herza")))
    job = backups.job_for(facts, policies["herza"], "h", HostVars(pool="lab-v4"), None)
    assert job is not None
    start = wib(2026, 12, 10, 1, 20)
    spec = backups.step_for(Slot(job, date(2026, 12, 10), start, start + timedelta(minutes=30)),
                            date(2026, 12, 7))
    assert spec.action.value == "backup" and not spec.destructive
    assert datetime.fromisoformat(spec.params["window_closes"]) == wib(2026, 12, 10, 5)
    assert spec.key == "h5:backup:weekly:2026-12-07"
