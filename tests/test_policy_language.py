"""What the terms say and the policy language now says it: reminders before the anchor,
deposit thresholds, activation after the first payment, reversals, unpaid colocation,
and steps that keep their ladder's order."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from orchestrator.core.events import EventError, parse_events
from orchestrator.core.inventory import Inventory
from orchestrator.core.lifecycle import Phase
from orchestrator.core.policy import Policy, load_policy
from orchestrator.core.yamlerrors import PolicyError
from orchestrator.engine import Orchestrator
from orchestrator.faces.cli import app
from orchestrator.state.models import NotificationRow, StepRow
from tests.conftest import REPO, created, invoice, paid, wib


@pytest.fixture
def sid() -> str:
    return f"p{uuid.uuid4().hex[:8]}"


def _ingest(orch: Orchestrator, items: list[dict[str, Any]], now: datetime) -> None:
    orch.ingest(parse_events(json.dumps(items)), now)


def _steps(orch: Orchestrator, sid: str) -> list[tuple[str, str]]:
    with orch.sessions() as session:
        rows = session.scalars(
            select(StepRow).where(StepRow.service_id == sid).order_by(StepRow.id)
        )
        return [(r.kind, r.state) for r in rows]


def _told(orch: Orchestrator, sid: str) -> list[dict[str, Any]]:
    with orch.sessions() as session:
        rows = session.scalars(
            select(NotificationRow)
            .where(NotificationRow.service_id == sid)
            .order_by(NotificationRow.id)
        )
        return [json.loads(r.body) for r in rows]


def test_klikserver_sends_the_invoice_reminder_14_days_before_due(
    orchestrator: Orchestrator, sid: str
) -> None:
    _ingest(orchestrator, [created(sid), invoice(sid, "2026-12-01")], wib(2026, 11, 10))
    orchestrator.apply(wib(2026, 11, 16, 23))
    assert ("notice", "done") not in _steps(orchestrator, sid)
    orchestrator.apply(wib(2026, 11, 17, 0, 1))
    assert _steps(orchestrator, sid)[-1] == ("notice", "done")
    (reminder,) = [n for n in _told(orchestrator, sid) if n["type"] == "service.notice"]
    assert "14 days before the due date" in reminder["detail"]["detail"]
    verdict = orchestrator.verdict(orchestrator.facts(sid), wib(2026, 11, 20))
    assert verdict.phase == Phase.ACTIVE  # a reminder is not a grace period


def test_a_klikserver_order_is_provisioned_only_once_its_first_invoice_is_paid(
    orchestrator: Orchestrator, sid: str
) -> None:
    order = created(sid, at="2026-11-20T10:00:00+07:00", awaiting_payment=True)
    _ingest(orchestrator, [order, invoice(sid, "2026-11-27", at=order["at"])], wib(2026, 11, 20))
    orchestrator.apply(wib(2026, 11, 21))
    orchestrator.apply(wib(2026, 12, 20))  # long past due: nothing to suspend, nothing made
    assert [kind for kind, _ in _steps(orchestrator, sid)] == []
    assert orchestrator.verdict(orchestrator.facts(sid), wib(2026, 12, 20)).phase == Phase.PENDING
    _ingest(orchestrator, [paid(sid, "2026-12-20T10:00:00+07:00")], wib(2026, 12, 20, 10))
    orchestrator.apply(wib(2026, 12, 20, 11))
    assert _steps(orchestrator, sid)[:2] == [("create", "done"), ("assign_ips", "done")]


def test_cbncloud_deposit_reminders_suspension_and_top_up(
    orchestrator: Orchestrator, sid: str
) -> None:
    _ingest(orchestrator, [created(sid, policy="cbncloud")], wib(2026, 11, 1))
    orchestrator.apply(wib(2026, 11, 1, 11))
    for day, balance in [(2, "300"), (3, "180"), (4, "90"), (5, "45"), (6, "20"), (7, "1000")]:
        moment = wib(2026, 11, day, 10)
        reading = {
            "id": f"{sid}-deposit-{day}",
            "service": sid,
            "at": moment.isoformat(),
            "data": {
                "type": "deposit.changed",
                "balance": balance,
                "monthly": "1000",
                "next_charge": "33",
            },
        }
        _ingest(orchestrator, [reading], moment)
        orchestrator.apply(moment)
    reminders = [
        n["detail"]["detail"] for n in _told(orchestrator, sid) if n["type"] == "service.notice"
    ]
    assert len(reminders) == 3 and all("20%, 10% and 5%" in r for r in reminders)
    kinds = [kind for kind, state in _steps(orchestrator, sid) if state == "done"]
    assert kinds == ["create", "assign_ips", "notice", "notice", "notice", "suspend", "resume"]


def test_a_reversed_payment_reopens_its_invoice_with_the_policys_grace(
    policies: dict[str, Policy], orchestrator: Orchestrator, sid: str
) -> None:
    reversal = {
        "id": f"{sid}-reversed",
        "service": sid,
        "at": "2026-12-10T10:00:00+07:00",
        "data": {"type": "invoice.reversed", "invoice": "inv-1", "reason": "unconfirmed"},
    }
    items = [created(sid), invoice(sid, "2026-12-01"), paid(sid, "2026-11-30T10:00:00+07:00")]
    _ingest(orchestrator, [*items, reversal], wib(2026, 12, 10, 10))
    verdict = orchestrator.verdict(orchestrator.facts(sid), wib(2026, 12, 10, 12))
    suspend = next(e for e in verdict.timeline if e.step == "suspend")
    assert suspend.at == wib(2026, 12, 11, 10)  # the original day 5 has passed: 24 h of grace
    assert suspend.delayed_by == "a payment reversal's grace"
    assert verdict.phase == Phase.GRACE


def test_a_step_awaiting_approval_holds_back_the_rest_of_its_ladder(
    sqlite_engine: Any, policies: dict[str, Policy], inventory: Inventory, sid: str
) -> None:
    klik = policies["klikserver"]
    vps = klik.products["kvm_vps"]
    (ladder,) = vps.ladders
    steps = [
        s.model_copy(update={"automatic": False}) if s.step == "terminate" else s
        for s in ladder.steps
    ]
    vps = vps.model_copy(update={"ladders": [ladder.model_copy(update={"steps": steps})]})
    klik = klik.model_copy(update={"products": {**klik.products, "kvm_vps": vps}})
    orch = Orchestrator(
        sqlite_engine, {**policies, "klikserver": klik}, inventory, sleep=lambda _: None
    )
    orch.seed_pools()
    _ingest(orch, [created(sid), invoice(sid, "2026-12-01")], wib(2026, 11, 20))
    for moment in (wib(2026, 11, 20), wib(2026, 12, 6), wib(2026, 12, 9), wib(2026, 12, 16, 1)):
        orch.apply(moment)
    orch.apply(wib(2026, 12, 17))
    states = dict(_steps(orch, sid))
    assert states["terminate"] == "awaiting" and states["purge"] == "pending"
    orch.apply(wib(2026, 12, 17, 1), yes=True)
    kinds = [kind for kind, state in _steps(orch, sid) if state == "done"]
    assert kinds[-2:] == ["terminate", "purge"]


def _klikserver_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "inventory/policies/klikserver.yaml").read_text()
    assert old in text
    path = tmp_path / "klikserver.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_ladder_that_purges_before_it_terminates_is_refused(tmp_path: Path) -> None:
    path = _klikserver_with(
        tmp_path,
        "          - step: purge\n            after: 15d",
        "          - step: purge\n            after: 3d",
    )
    with pytest.raises(PolicyError, match=r"purge \(3d\) comes before terminate \(8d\)"):
        load_policy(path)
    result = CliRunner().invoke(app, ["policy", "check", str(path)])
    assert result.exit_code == 1 and "comes before terminate" in result.output


@pytest.mark.parametrize("offset", ["99999999999d", "3661d", "-16d"])
def test_offsets_that_overflow_or_suspend_before_the_anchor_are_refused(
    tmp_path: Path, offset: str
) -> None:
    path = _klikserver_with(tmp_path, "after: 5d", f"after: {offset}")
    with pytest.raises(PolicyError):
        load_policy(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("due", "0001-01-01"), ("due", "9999-12-31"), ("due", "2040-01-01")],
)
def test_dates_outside_a_sane_window_are_refused(field: str, value: str) -> None:
    item = invoice("s1", "2026-12-01")
    item["data"][field] = value
    with pytest.raises(EventError):
        parse_events(json.dumps(item))


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+07:00", "9999-12-31T23:59:00+07:00"])
def test_event_times_outside_a_sane_window_are_refused(at: str) -> None:
    with pytest.raises(EventError):
        parse_events(json.dumps(created("s1", at=at)))


def test_unpaid_colocation_reaches_an_operator_after_three_months(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(app, ["--db", db, *args])
        assert result.exit_code == 0, result.output
        return result.output

    cli("init")
    source = tmp_path / "colo.json"
    items = [created("u1", product="colocation", host="metal-jkt-1"), invoice("u1", "2026-12-01")]
    source.write_text(json.dumps(items))
    cli("event", str(source), "--at", "2026-11-20")
    assert json.loads(cli("colo", "due", "--at", "2027-02-28", "--json")) == []
    cli("apply", "--at", "2027-03-02")
    (due,) = json.loads(cli("colo", "due", "--at", "2027-03-02", "--json"))
    assert due["service_id"] == "u1" and due["step"] == "awaiting"  # never automatic
    assert due["deadline"].startswith("2027-03-01") and "auctioned" in due["clause"]
