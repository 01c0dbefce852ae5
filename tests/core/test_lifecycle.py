"""The lifecycle as tables of dates: what happens when, for the Klikserver terms."""

from dataclasses import replace
from datetime import date, timedelta

import pytest

from orchestrator.core.facts import derive_facts
from orchestrator.core.lifecycle import Phase, lifecycle
from orchestrator.core.policy import Policy, ReasonOwner
from orchestrator.core.steps import StepKind
from tests.conftest import created, events, invoice, paid, wib

UNPAID = [created("s1"), invoice("s1", "2026-12-01")]


def verdict_at(policies: dict[str, Policy], items: list[dict], moment):  # type: ignore[no-untyped-def]
    facts = derive_facts("s1", events(*items))
    return lifecycle(facts, policies[facts.policy], moment)


def test_klikserver_unpaid_vps_timeline(policies: dict[str, Policy]) -> None:
    verdict = verdict_at(policies, UNPAID, wib(2026, 12, 1))
    days = {e.step: e.at.date() for e in verdict.timeline}
    assert days[StepKind.SUSPEND] == date(2026, 12, 6)  # "Overdue Payment of 5 days"
    assert days[StepKind.RECLAIM_IPS] == date(2026, 12, 9)  # "does not extend for more than 7 days"
    assert days[StepKind.TERMINATE] == date(2026, 12, 9)  # "arrears exceeding 7 days"
    assert days[StepKind.PURGE] == date(2026, 12, 16)  # 7 days after expiry, safe reading
    assert all(e.clause for e in verdict.timeline)


@pytest.mark.parametrize(
    ("moment", "phase"),
    [
        (wib(2026, 11, 30), Phase.ACTIVE),
        (wib(2026, 12, 2, 1), Phase.GRACE),
        (wib(2026, 12, 5, 23, 59), Phase.GRACE),
        (wib(2026, 12, 6), Phase.SUSPENDED),
        (wib(2026, 12, 8, 23), Phase.SUSPENDED),
        (wib(2026, 12, 9), Phase.TERMINATED),
        (wib(2026, 12, 16), Phase.PURGED),
        (wib(2027, 3, 1), Phase.PURGED),
    ],
)
def test_klikserver_phase_by_date(policies: dict[str, Policy], moment, phase) -> None:  # type: ignore[no-untyped-def]
    assert verdict_at(policies, UNPAID, moment).phase == phase


def test_next_transition_is_the_next_step(policies: dict[str, Policy]) -> None:
    assert verdict_at(policies, UNPAID, wib(2026, 12, 3)).next_at == wib(2026, 12, 6)
    assert verdict_at(policies, UNPAID, wib(2026, 12, 20)).next_at is None


def test_payment_on_day_five_returns_to_active_and_lists_undo(policies: dict[str, Policy]) -> None:
    items = [*UNPAID, paid("s1", "2026-12-06T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2026, 12, 6, 12))
    assert verdict.phase == Phase.ACTIVE and verdict.good_standing
    assert verdict.undo == ("unsuspend",)
    assert verdict.timeline == ()


def test_payment_after_termination_restores_from_archive(policies: dict[str, Policy]) -> None:
    items = [*UNPAID, paid("s1", "2026-12-12T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2026, 12, 13))
    assert verdict.phase == Phase.ACTIVE
    assert verdict.undo[0].startswith("restore from archive")
    assert "same IP" in verdict.undo[1]


def test_payment_after_purge_cannot_bring_it_back(policies: dict[str, Policy]) -> None:
    items = [*UNPAID, paid("s1", "2026-12-20T10:00:00+07:00")]
    facts = replace(derive_facts("s1", events(*items)), purged_at=wib(2026, 12, 16, 0, 1))
    verdict = lifecycle(facts, policies[facts.policy], wib(2026, 12, 21))
    assert verdict.phase == Phase.PURGED
    assert verdict.undo == ("fresh provision only: the data was purged",)


def test_payment_after_the_purge_date_before_it_ran_brings_the_archive_back(
    policies: dict[str, Policy],
) -> None:
    """The purge's date is when the terms let the data go, not proof that it went: a
    customer who pays before the purge ran (the scheduler was down, a hold had kept it
    back) gets the archive back, and no purge is asked for."""
    items = [*UNPAID, paid("s1", "2026-12-20T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2026, 12, 21))
    assert verdict.phase == Phase.ACTIVE and verdict.good_standing
    assert verdict.undo[0].startswith("restore from archive")


def test_each_entry_says_what_paying_after_it_would_undo(policies: dict[str, Policy]) -> None:
    verdict = verdict_at(policies, UNPAID, wib(2026, 12, 1))
    undo = {e.step: e.if_paid for e in verdict.timeline}
    assert undo[StepKind.SUSPEND] == ("unsuspend",)
    assert undo[StepKind.TERMINATE][0].startswith("restore from archive")
    assert undo[StepKind.PURGE] == ("fresh provision only: the data was purged",)


def _hold(kind: str, at: str, hold_id: str = "h1", until: str | None = None) -> dict:  # type: ignore[type-arg]
    data = {
        "type": "hold.placed",
        "hold": hold_id,
        "kind": kind,
        **({"until": until} if until else {}),
    }
    return {"id": f"hold-{hold_id}", "service": "s1", "at": at, "data": data}


def test_legal_hold_blocks_every_data_step_after_it(policies: dict[str, Policy]) -> None:
    items = [*UNPAID, _hold("legal", "2026-12-07T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2027, 1, 31))
    assert verdict.phase == Phase.IPS_RECLAIMED
    blocked = {e.step for e in verdict.timeline if e.blocked_by}
    assert blocked == {StepKind.TERMINATE, StepKind.PURGE}


def test_releasing_the_hold_lets_the_ladder_go_on(policies: dict[str, Policy]) -> None:
    release = {
        "id": "rel",
        "service": "s1",
        "at": "2027-01-05T10:00:00+07:00",
        "data": {"type": "hold.released", "hold": "h1"},
    }
    items = [*UNPAID, _hold("legal", "2026-12-07T10:00:00+07:00"), release]
    # The archive the terms promise (7 days from removal to deletion) is kept in full.
    assert verdict_at(policies, items, wib(2027, 1, 6)).phase == Phase.TERMINATED
    verdict = verdict_at(policies, items, wib(2027, 1, 13))
    assert verdict.phase == Phase.PURGED
    days = {e.step: e.at for e in verdict.timeline}
    assert days[StepKind.TERMINATE] == wib(2027, 1, 5, 10)
    assert days[StepKind.PURGE] - days[StepKind.TERMINATE] == timedelta(days=7)
    purge = next(e for e in verdict.timeline if e.step == StepKind.PURGE)
    assert purge.delayed_by is not None and "legal hold h1" in purge.delayed_by


def test_a_legal_hold_keeps_the_data_not_the_unpaid_service_running(
    policies: dict[str, Policy],
) -> None:
    items = [*UNPAID, _hold("legal", "2026-12-02T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2026, 12, 20))
    assert verdict.phase == Phase.IPS_RECLAIMED  # suspended on its day, addresses reclaimed
    blocked = {e.step: e.blocked_by for e in verdict.timeline if e.blocked_by}
    assert set(blocked) == {StepKind.TERMINATE, StepKind.PURGE}


def test_a_hold_with_an_end_delays_steps_to_it(policies: dict[str, Policy]) -> None:
    items = [
        *UNPAID,
        _hold("legal", "2026-12-07T10:00:00+07:00", until="2026-12-20T00:00:00+07:00"),
    ]
    verdict = verdict_at(policies, items, wib(2026, 12, 1))
    days = {e.step: e.at.date() for e in verdict.timeline}
    assert days[StepKind.TERMINATE] == date(2026, 12, 20)
    assert days[StepKind.PURGE] == date(2026, 12, 27)  # still 7 days after termination


def _abuse(n: int, at: str) -> dict:  # type: ignore[type-arg]
    return {
        "id": f"abuse-{n}",
        "service": "s1",
        "at": at,
        "data": {"type": "abuse.reported", "category": "ddos"},
    }


def test_first_ddos_suspends_for_three_days_and_payment_does_not_lift_it(
    policies: dict[str, Policy],
) -> None:
    items = [created("s1"), _abuse(1, "2026-12-10T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2026, 12, 11))
    assert verdict.phase == Phase.SUSPENDED
    assert [r.owner for r in verdict.reasons] == [ReasonOwner.ABUSE]
    assert verdict.reasons[0].until == wib(2026, 12, 13, 10)
    assert verdict_at(policies, items, wib(2026, 12, 13, 11)).phase == Phase.ACTIVE


def test_third_ddos_suspends_for_seven_days(policies: dict[str, Policy]) -> None:
    items = [created("s1")] + [_abuse(n, f"2026-12-{n:02d}T10:00:00+07:00") for n in (1, 5, 10)]
    verdict = verdict_at(policies, items, wib(2026, 12, 11))
    assert verdict.reasons[-1].until == wib(2026, 12, 17, 10)


def test_payment_clears_only_the_billing_reason(policies: dict[str, Policy]) -> None:
    admin = {
        "id": "adm",
        "service": "s1",
        "at": "2026-12-07T09:00:00+07:00",
        "data": {"type": "admin.suspended", "reason": "investigation"},
    }
    items = [*UNPAID, admin, paid("s1", "2026-12-07T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2026, 12, 7, 11))
    assert verdict.phase == Phase.SUSPENDED
    assert [r.owner for r in verdict.reasons] == [ReasonOwner.ADMIN]
    assert not verdict.good_standing


def test_cybernet_dispute_suspends_for_five_times_24_hours(policies: dict[str, Policy]) -> None:
    items = [created("s1", policy="cybernet"), _hold("dispute", "2026-12-10T08:00:00+07:00")]
    during = verdict_at(policies, items, wib(2026, 12, 14, 8))
    assert during.phase == Phase.SUSPENDED and during.reasons[0].owner == ReasonOwner.DISPUTE
    assert verdict_at(policies, items, wib(2026, 12, 15, 8)).phase == Phase.ACTIVE


def test_payment_before_due_is_no_episode(policies: dict[str, Policy]) -> None:
    items = [*UNPAID, paid("s1", "2026-11-28T10:00:00+07:00")]
    verdict = verdict_at(policies, items, wib(2026, 12, 20))
    assert verdict.phase == Phase.ACTIVE and verdict.undo == ()
