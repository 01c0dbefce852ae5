"""Notifications to a billing endpoint that is down, then up: in order, none lost, none twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from orchestrator.core.inventory import load_inventory
from orchestrator.engine import Orchestrator
from orchestrator.run import notify
from orchestrator.secrets.signing import verify
from orchestrator.state import ipam
from orchestrator.state.models import NotificationRow
from tests.conftest import REPO, created, events, invoice, paid, wib

SECRET = b"billing-shared-secret"
PATH = "/orchestrator"


class Billing(BaseHTTPRequestHandler):
    """A billing system's receiver: checks the signature, de-duplicates by event id."""

    seen: list[str]
    now: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        verify([SECRET], self.headers, "POST", self.path, body, self.now)
        event_id = json.loads(body)["id"]
        if event_id not in self.seen:
            self.seen.append(event_id)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def billing_port() -> int:
    with HTTPServer(("127.0.0.1", 0), Billing) as probe:  # a port nobody listens on afterwards
        return int(probe.server_address[1])


@pytest.fixture
def post(billing_port: int) -> Iterator[notify.Post]:
    with httpx.Client(timeout=5) as client:

        def send(body: bytes, headers: dict[str, str]) -> int:
            try:
                return client.post(
                    f"http://127.0.0.1:{billing_port}{PATH}", content=body, headers=headers
                ).status_code
            except httpx.TransportError as exc:
                raise OSError(str(exc)) from exc

        yield send


def _lifecycle(orchestrator: Orchestrator, sid: str) -> None:
    orchestrator.ingest(events(created(sid), invoice(sid, "2026-12-01")), wib(2026, 11, 20))
    orchestrator.apply(wib(2026, 11, 20, 0, 1))
    orchestrator.apply(wib(2026, 12, 6, 0, 1))
    orchestrator.ingest(events(paid(sid, "2026-12-07T10:00:00+07:00")), wib(2026, 12, 7, 10))
    orchestrator.apply(wib(2026, 12, 7, 10, 1))


def test_billing_down_then_up_gets_everything_in_order_once(
    orchestrator: Orchestrator, post: notify.Post, billing_port: int
) -> None:
    sid = "n-1"
    _lifecycle(orchestrator, sid)
    down = notify.deliver(orchestrator.sessions, post, SECRET, wib(2026, 12, 7, 11), PATH)
    assert down.delivered == 0 and down.failed == 1
    with orchestrator.sessions() as session:
        queued = session.scalars(select(NotificationRow).order_by(NotificationRow.id)).all()
    kinds = [n.kind for n in queued]
    # The invoice reminder (14 days before due) reaches billing too: it sends the e-mail.
    assert kinds == ["ip.assigned", "service.notice", "service.suspended", "service.unsuspended"]
    Billing.seen, Billing.now = [], wib(2026, 12, 7, 12)
    server = HTTPServer(("127.0.0.1", billing_port), Billing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        early = notify.deliver(orchestrator.sessions, post, SECRET, wib(2026, 12, 7, 11, 0), PATH)
        assert (
            early.delivered == 0
        )  # the first one waits out its backoff, and keeps the others back
        up = notify.deliver(orchestrator.sessions, post, SECRET, Billing.now, PATH)
        again = notify.deliver(orchestrator.sessions, post, SECRET, Billing.now, PATH)
    finally:
        server.shutdown()
    assert up.delivered == 4 and again.delivered == 0
    assert Billing.seen == [n.event_id for n in queued]


def test_a_notification_that_keeps_failing_is_dead_lettered_and_replayable(
    orchestrator: Orchestrator,
) -> None:
    _lifecycle(orchestrator, "n-2")
    moment = wib(2026, 12, 8)
    for _ in range(notify.MAX_ATTEMPTS):
        notify.deliver(orchestrator.sessions, lambda body, headers: 503, SECRET, moment, PATH)
        moment = moment.replace(hour=moment.hour + 1) if moment.hour < 23 else moment
    with orchestrator.sessions() as session:
        first = session.scalars(select(NotificationRow).order_by(NotificationRow.id)).first()
        assert first is not None and first.state == notify.DEAD and first.last_error == "HTTP 503"
    with orchestrator.sessions.begin() as session:
        assert notify.replay(session, first.id, moment)
    result = notify.deliver(orchestrator.sessions, lambda body, headers: 200, SECRET, moment, PATH)
    assert result.delivered == 4


def test_a_paying_customer_whose_address_went_elsewhere_is_told_old_and_new(
    sqlite_engine: Any, policies: Any, tmp_path: Any
) -> None:
    """Two addresses: the customer's first goes to another after quarantine, they get the other."""
    text = (REPO / "inventory" / "lab.yaml").read_text()
    small = text.replace(
        "cidr: 198.51.100.0/26",
        "cidr: 198.51.100.0/29\n        reserved: [198.51.100.4-198.51.100.6]",
    )
    (tmp_path / "small.yaml").write_text(small)
    orch = Orchestrator(
        sqlite_engine, policies, load_inventory(tmp_path / "small.yaml"), sleep=lambda _: None
    )
    orch.seed_pools()
    first, other = "198.51.100.2", "198.51.100.3"
    with orch.sessions.begin() as session:  # kept from everyone until after the reclaim
        ipam.block(session, other, ipam.Change(wib(2026, 11, 19), reason="on a blocklist"))
    colo = {"product": "colocation", "host": "metal-jkt-1"}
    orch.ingest(events(created("a", **colo), invoice("a", "2026-12-01")), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    orch.apply(wib(2026, 12, 9, 0, 1))  # reclaimed on day 8, resting for "a" until 8 January
    with orch.sessions.begin() as session:
        ipam.unblock(session, other, ipam.Change(wib(2026, 12, 20), reason="delisted"))
    orch.ingest(events(created("b", **colo)), wib(2027, 1, 9))
    orch.apply(wib(2027, 1, 9, 1, 0))  # the least recently used: "a"'s old address
    orch.ingest(events(paid("a", "2027-01-10T10:00:00+07:00")), wib(2027, 1, 10, 10))
    orch.apply(wib(2027, 1, 10, 10, 1))
    with orch.sessions() as session:
        assigned = [
            (n.service_id, json.loads(n.body))
            for n in session.scalars(select(NotificationRow).order_by(NotificationRow.id))
            if n.kind == "ip.assigned"
        ]
        assert ipam.held_by(session, "b") == (first,) and ipam.held_by(session, "a") == (other,)
    changes = [(service, body.get("address_change")) for service, body in assigned]
    assert changes == [
        ("a", None),
        ("b", None),
        ("a", {"old": [first], "new": [other]}),
    ]
    assert assigned[-1][1]["detail"]["previous_addresses"] == [first]
