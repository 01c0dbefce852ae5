"""Billing truth (issue 13): no paying customer loses a byte, whatever order billing speaks in.

Each reproduction runs through the real CLI (Typer's runner, on a store of
its own and libvirt's test hypervisor) and through the signed hooks (uvicorn
on loopback). A store-level test sends one event id fifty times at once.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from orchestrator.core.events import parse_events
from orchestrator.core.inventory import Inventory
from orchestrator.core.lifecycle import PAID_AFTER_PURGE, UNDER_REVIEW
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.faces.cli import app
from orchestrator.state.models import EventRow, NotificationRow, StepRow
from tests.conftest import Served, created, invoice, paid, wib

Cli = Callable[..., str]
ISSUED = "2026-11-17T10:00:00+07:00"


@pytest.fixture
def sid() -> str:
    return f"b{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """The CLI in this process. libvirt's test hypervisor keeps its machines only while
    a connection to it is open: one is held for the test, so they last from apply to apply."""
    pin = libvirt.open("test:///default")
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--db", db, *args])
        assert result.exit_code == code, result.output
        return result.output

    run("init")
    yield run
    pin.close()


def _send(cli: Cli, tmp_path: Path, items: list[dict[str, Any]], at: str, code: int = 0) -> str:
    source = tmp_path / f"events-{uuid.uuid4().hex[:6]}.json"
    source.write_text(json.dumps(items))
    return cli("event", str(source), "--at", at, code=code)


def _explain(cli: Cli, sid: str, at: str) -> dict[str, Any]:
    return json.loads(cli("explain", sid, "--at", at, "--json"))  # type: ignore[no-any-return]


def _done(cli: Cli, sid: str) -> list[str]:
    rows = json.loads(cli("steps", "list", "--service", sid, "--json"))
    return [r["kind"] for r in rows if r["state"] == "done"]


def _unpaid(sid: str) -> list[dict[str, Any]]:
    return [created(sid), invoice(sid, "2026-12-01", at=ISSUED)]


def _early_payment(sid: str) -> dict[str, Any]:
    """Dated a minute before its invoice: one billing node's clock runs behind."""
    return paid(sid, "2026-11-17T09:59:00+07:00")


# -- 1. a payment dated before its invoice -------------------------------------


def test_cli_a_payment_dated_before_its_invoice_keeps_the_service(
    cli: Cli, tmp_path: Path, sid: str
) -> None:
    _send(cli, tmp_path, _unpaid(sid), "2026-11-18")
    _send(cli, tmp_path, [_early_payment(sid)], "2026-11-18")
    for day in ("2026-11-20", "2026-12-06", "2026-12-20"):
        cli("apply", "--at", day, "--yes")
    assert _explain(cli, sid, "2026-12-20")["phase"] == "active"
    assert _done(cli, sid) == ["create", "assign_ips"]  # paid: not even a reminder


def test_hooks_a_payment_dated_before_its_invoice_keeps_the_service(
    served: Served, sid: str
) -> None:
    assert served.post("/v1/events", _unpaid(sid)).status_code == 202
    assert served.post("/v1/events", _early_payment(sid)).status_code == 202
    served.clock.now = wib(2026, 12, 20)
    assert served.client.get(f"/v1/services/{sid}").json()["phase"] == "active"


# -- 2. a payment for an invoice nobody issued ---------------------------------


def _stray_payment(sid: str) -> dict[str, Any]:
    return paid(sid, "2026-12-02T09:00:00+07:00", invoice_id="INV-TYPO")


def test_cli_an_unmatched_payment_is_refused_kept_and_holds_the_service(
    cli: Cli, tmp_path: Path, sid: str
) -> None:
    _send(cli, tmp_path, _unpaid(sid), "2026-11-18")
    refused = _send(cli, tmp_path, [_stray_payment(sid)], "2026-12-02", code=2)
    assert "unmatched payment" in refused and "INV-TYPO" in refused
    (review,) = json.loads(cli("events", "unmatched", "--json"))
    assert review["service"] == sid and review["invoice"] == "INV-TYPO"
    held = _explain(cli, sid, "2026-12-06T01:00:00+07:00")
    assert held["phase"] == "grace" and UNDER_REVIEW in held["attention"]
    suspend = next(e for e in held["timeline"] if e["step"] == "suspend")
    assert suspend["blocked_by"].startswith("review hold")
    cli("apply", "--at", "2026-12-06T01:00:00+07:00", "--yes")
    assert "suspend" not in _done(cli, sid)
    cli("events", "match", review["event"], "inv-1", "--at", "2026-12-06T02:00:00+07:00")
    assert json.loads(cli("events", "unmatched", "--json")) == []
    settled = _explain(cli, sid, "2026-12-20")
    assert settled["phase"] == "active" and settled["attention"] == []


def test_cli_a_discarded_payment_lets_the_ladder_go_on(cli: Cli, tmp_path: Path, sid: str) -> None:
    _send(cli, tmp_path, _unpaid(sid), "2026-11-18")
    _send(cli, tmp_path, [_stray_payment(sid)], "2026-12-02", code=2)
    (review,) = json.loads(cli("events", "unmatched", "--json"))
    cli("events", "discard", review["event"], "--reason", "billing's test payment")
    assert _explain(cli, sid, "2026-12-06T01:00:00+07:00")["phase"] == "suspended"
    assert "no payment" in cli("events", "match", review["event"], "inv-1", code=2)


def test_a_second_stray_payment_after_a_discard_is_held_for_review_again(
    cli: Cli, tmp_path: Path, sid: str
) -> None:
    """The same attention twice on unchanged facts: billing is told each time, nothing clashes."""
    _send(cli, tmp_path, _unpaid(sid), "2026-11-18")
    _send(cli, tmp_path, [_stray_payment(sid)], "2026-12-02", code=2)
    (first,) = json.loads(cli("events", "unmatched", "--json"))
    cli("events", "discard", first["event"], "--reason", "billing's test payment")
    again = paid(sid, "2026-12-03T09:00:00+07:00", invoice_id="INV-TYPO-2")
    assert "unmatched payment" in _send(cli, tmp_path, [again], "2026-12-03", code=2)
    (second,) = json.loads(cli("events", "unmatched", "--json"))
    assert second["invoice"] == "INV-TYPO-2"
    told = json.loads(cli("notifications", "list", "--json"))
    assert [n["kind"] for n in told].count("service.needs_attention") == 2


def test_an_unmatched_payment_matches_by_itself_when_its_invoice_arrives(
    orchestrator: Orchestrator, sid: str
) -> None:
    now = wib(2026, 11, 20)
    orchestrator.ingest(parse_events(json.dumps([created(sid)])), now)
    early = paid(sid, "2026-11-19T10:00:00+07:00", invoice_id="inv-7")
    with pytest.raises(Exception, match="unmatched payment"):
        orchestrator.ingest(parse_events(json.dumps([early])), now)
    late_invoice = invoice(sid, "2026-12-01", invoice_id="inv-7", at="2026-11-20T10:00:00+07:00")
    report = orchestrator.ingest(parse_events(json.dumps([late_invoice])), now)
    assert set(report.accepted) == {late_invoice["id"], early["id"]}
    assert orchestrator.facts(sid).unpaid == {}


def test_hooks_an_unmatched_payment_is_a_422_with_its_reason(served: Served, sid: str) -> None:
    served.post("/v1/events", _unpaid(sid))
    response = served.post("/v1/events", _stray_payment(sid))
    assert response.status_code == 422 and "unmatched payment" in response.json()["detail"]
    assert UNDER_REVIEW in served.client.get(f"/v1/services/{sid}").json()["attention"]


# -- 3. one event id, two bodies -----------------------------------------------


def test_cli_an_event_id_with_another_body_is_a_conflict(
    cli: Cli, tmp_path: Path, sid: str
) -> None:
    items = _unpaid(sid)
    _send(cli, tmp_path, items, "2026-11-18")
    assert "0 accepted, 2 already known" in _send(cli, tmp_path, items, "2026-11-19")
    payment = {**paid(sid, "2026-11-20T10:00:00+07:00"), "id": items[1]["id"]}
    refused = _send(cli, tmp_path, [payment], "2026-11-20", code=2)
    assert "already stands for another event" in refused and items[1]["id"] in refused
    twice = [paid(sid, "2026-11-20T10:00:00+07:00")] * 2
    twice[1] = {**twice[1], "at": "2026-11-21T10:00:00+07:00"}
    assert "already stands for" in _send(cli, tmp_path, twice, "2026-11-21", code=2)
    assert _explain(cli, sid, "2026-12-06T01:00:00+07:00")["phase"] == "suspended"


def test_hooks_an_event_id_with_another_body_is_a_409(served: Served, sid: str) -> None:
    items = _unpaid(sid)
    served.post("/v1/events", items)
    assert served.post("/v1/events", items).json()["duplicates"] == [i["id"] for i in items]
    payment = {**paid(sid, "2026-11-20T10:00:00+07:00"), "id": items[1]["id"]}
    response = served.post("/v1/events", payment)
    assert response.status_code == 409 and "stands for" in response.json()["detail"]
    assert served.events() == 2


@pytest.mark.postgres
def test_one_event_sent_fifty_times_at_once_is_stored_once(
    postgres_engine: Engine, policies: dict[str, Policy], inventory: Inventory, sid: str
) -> None:
    orchestrator = Orchestrator(postgres_engine, policies, inventory, sleep=lambda _: None)
    batch = json.dumps([created(sid)])
    errors: list[BaseException] = []
    start = threading.Barrier(50)

    def send() -> None:
        start.wait()
        try:
            orchestrator.ingest(parse_events(batch), wib(2026, 11, 20))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with orchestrator.sessions() as session:
        assert session.scalar(select(func.count()).select_from(EventRow)) == 1


# -- 4. a payment dated before the purge, arriving after it ---------------------


def _through_purge(cli: Cli, tmp_path: Path, sid: str) -> None:
    _send(cli, tmp_path, _unpaid(sid), "2026-11-18")
    for day in ("2026-11-20", "2026-12-06", "2026-12-09", "2026-12-16T01:00:00+07:00"):
        cli("apply", "--at", day, "--yes")
    assert _done(cli, sid)[-1] == "purge", cli("steps", "list", "--service", sid, "--json")


def test_cli_a_payment_dated_before_the_purge_that_arrives_after_it(
    cli: Cli, tmp_path: Path, sid: str
) -> None:
    _through_purge(cli, tmp_path, sid)
    _send(cli, tmp_path, [paid(sid, "2026-12-15T16:00:00+07:00")], "2026-12-17")
    (row,) = json.loads(cli("services", "list", "--needs-attention", "--json"))
    assert row["service"] == sid and row["phase"] == "purged"
    assert row["attention"] == [PAID_AFTER_PURGE]
    assert json.loads(cli("drift", "--json", "--at", "2026-12-17")) == []
    told = json.loads(cli("notifications", "list", "--json"))
    assert [n["kind"] for n in told if n["service"] == sid].count("service.needs_attention") == 1
    cli("services", "reprovision", sid, "--reason", "customer paid", "--at", "2026-12-17T10:00")
    cli("apply", "--at", "2026-12-17T11:00:00+07:00")
    assert _done(cli, sid)[-2:] == ["create", "assign_ips"]
    fresh = _explain(cli, sid, "2026-12-17T12:00:00+07:00")
    assert fresh["phase"] == "active" and fresh["attention"] == []


def test_an_automatic_reprovision_after_purge_creates_a_fresh_machine(
    sqlite_engine: Engine, policies: dict[str, Policy], inventory: Inventory, sid: str
) -> None:
    klik = policies["klikserver"]
    vps = klik.products["kvm_vps"]
    undo = vps.undo.model_copy(update={"reprovision_after_purge": "automatic"})
    products = {**klik.products, "kvm_vps": vps.model_copy(update={"undo": undo})}
    changed = {**policies, "klikserver": klik.model_copy(update={"products": products})}
    orchestrator = Orchestrator(sqlite_engine, changed, inventory, sleep=lambda _: None)
    orchestrator.seed_pools()
    orchestrator.ingest(parse_events(json.dumps(_unpaid(sid))), wib(2026, 11, 18))
    for moment in (wib(2026, 11, 20), wib(2026, 12, 6), wib(2026, 12, 9), wib(2026, 12, 16, 1)):
        orchestrator.apply(moment, yes=True)
    late = paid(sid, "2026-12-15T16:00:00+07:00")
    orchestrator.ingest(parse_events(json.dumps([late])), wib(2026, 12, 17))
    orchestrator.apply(wib(2026, 12, 17, 1))
    with orchestrator.sessions() as session:
        kinds = list(
            session.scalars(
                select(StepRow.kind)
                .where(StepRow.service_id == sid, StepRow.state == "done")
                .order_by(StepRow.id)
            )
        )
        assert kinds[-3:] == ["purge", "create", "assign_ips"]
        told = session.scalar(
            select(func.count())
            .select_from(NotificationRow)
            .where(NotificationRow.kind == "service.needs_attention")
        )
        assert told == 0  # nothing for a person to do: the policy provisions anew
    assert orchestrator.verdict(orchestrator.facts(sid), wib(2026, 12, 17, 2)).phase == "active"


def test_hooks_a_payment_after_the_purge_says_purged_and_needs_attention(
    served: Served, sid: str
) -> None:
    served.post("/v1/events", _unpaid(sid))
    for moment in (wib(2026, 11, 20), wib(2026, 12, 6), wib(2026, 12, 9), wib(2026, 12, 16, 1)):
        served.orchestrator.apply(moment, yes=True)
    served.clock.now = wib(2026, 12, 17)
    assert served.post("/v1/events", paid(sid, "2026-12-15T16:00:00+07:00")).status_code == 202
    state = served.client.get(f"/v1/services/{sid}").json()
    assert state["phase"] == "purged" and state["attention"] == [PAID_AFTER_PURGE]


# -- 5. a hold released after the ladder's days ---------------------------------


def _hold(sid: str, placed: str, released: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{sid}-hold",
            "service": sid,
            "at": placed,
            "data": {"type": "hold.placed", "hold": "h1", "kind": "legal"},
        },
        {
            "id": f"{sid}-release",
            "service": sid,
            "at": released,
            "data": {"type": "hold.released", "hold": "h1"},
        },
    ]


def test_cli_a_late_release_keeps_the_archive_window(cli: Cli, tmp_path: Path, sid: str) -> None:
    placed, released = _hold(sid, "2026-12-07T10:00:00+07:00", "2027-01-05T10:00:00+07:00")
    _send(cli, tmp_path, _unpaid(sid), "2026-11-18")
    for day in ("2026-11-20", "2026-12-06"):
        cli("apply", "--at", day, "--yes")
    _send(cli, tmp_path, [placed], "2026-12-07T10:00:00+07:00")
    cli("apply", "--at", "2026-12-20", "--yes")
    assert "terminate" not in _done(cli, sid)  # held: the archive is not even made
    _send(cli, tmp_path, [released], "2027-01-05T10:00:00+07:00")
    for day in ("2027-01-05T11:00:00+07:00", "2027-01-11"):
        cli("apply", "--at", day, "--yes")
    assert _done(cli, sid)[-1] == "terminate"  # the purge waits its seven days
    cli("apply", "--at", "2027-01-12T11:00:00+07:00", "--yes")
    assert _done(cli, sid)[-1] == "purge"


def test_hooks_a_late_release_delays_the_rest_of_the_ladder(served: Served, sid: str) -> None:
    served.post("/v1/events", _unpaid(sid))
    served.post("/v1/events", _hold(sid, "2026-12-07T10:00:00+07:00", "2027-01-05T10:00:00+07:00"))
    served.clock.now = wib(2027, 1, 6)
    state = served.client.get(f"/v1/services/{sid}").json()
    assert state["phase"] == "terminated"
    purge = next(e for e in state["timeline"] if e["step"] == "purge")
    assert purge["day"] == "2027-01-12" and purge["delayed_by"].startswith("legal hold h1")


# -- 6. a legal hold placed before the suspension day ---------------------------


def test_cli_a_legal_hold_does_not_keep_an_unpaid_service_running(
    cli: Cli, tmp_path: Path, sid: str
) -> None:
    _send(cli, tmp_path, _unpaid(sid), "2026-11-18")
    cli("hold", "add", sid, "legal", "--reason", "court order", "--at", "2026-12-02T09:00:00+07:00")
    for day in ("2026-11-20", "2026-12-06T01:00:00+07:00", "2026-12-20"):
        cli("apply", "--at", day, "--yes")
    assert _done(cli, sid)[-2:] == ["suspend", "reclaim_ips"]
    assert _explain(cli, sid, "2026-12-20")["phase"] == "ips_reclaimed"


def test_hooks_a_legal_hold_does_not_keep_an_unpaid_service_running(
    served: Served, sid: str
) -> None:
    served.post("/v1/events", _unpaid(sid))
    placed, _ = _hold(sid, "2026-12-02T09:00:00+07:00", "2027-06-01T00:00:00+07:00")
    served.post("/v1/events", placed)
    served.orchestrator.apply(wib(2026, 11, 20))
    served.orchestrator.apply(wib(2026, 12, 6, 1), yes=True)
    served.clock.now = wib(2026, 12, 6, 2)
    assert served.client.get(f"/v1/services/{sid}").json()["phase"] == "suspended"
