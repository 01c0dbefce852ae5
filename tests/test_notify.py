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

from orchestrator import notify
from orchestrator.engine import Orchestrator
from orchestrator.signing import verify
from orchestrator.store.models import NotificationRow
from tests.conftest import created, events, invoice, paid, wib

SECRET = b"billing-shared-secret"


class Billing(BaseHTTPRequestHandler):
    """A billing system's receiver: checks the signature, de-duplicates by event id."""

    seen: list[str]
    now: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        verify(
            [SECRET],
            self.headers["X-Orchestrator-Timestamp"],
            self.headers["X-Orchestrator-Signature"],
            body,
            self.now,
        )
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
                    f"http://127.0.0.1:{billing_port}/orchestrator", content=body, headers=headers
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
    down = notify.deliver(orchestrator.sessions, post, SECRET, wib(2026, 12, 7, 11))
    assert down.delivered == 0 and down.failed == 1
    with orchestrator.sessions() as session:
        queued = session.scalars(select(NotificationRow).order_by(NotificationRow.id)).all()
    kinds = [n.kind for n in queued]
    assert kinds == ["ip.assigned", "service.suspended", "service.unsuspended"]
    Billing.seen, Billing.now = [], wib(2026, 12, 7, 12)
    server = HTTPServer(("127.0.0.1", billing_port), Billing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        early = notify.deliver(orchestrator.sessions, post, SECRET, wib(2026, 12, 7, 11, 0))
        assert (
            early.delivered == 0
        )  # the first one waits out its backoff, and keeps the others back
        up = notify.deliver(orchestrator.sessions, post, SECRET, Billing.now)
        again = notify.deliver(orchestrator.sessions, post, SECRET, Billing.now)
    finally:
        server.shutdown()
    assert up.delivered == 3 and again.delivered == 0
    assert Billing.seen == [n.event_id for n in queued]


def test_a_notification_that_keeps_failing_is_dead_lettered_and_replayable(
    orchestrator: Orchestrator,
) -> None:
    _lifecycle(orchestrator, "n-2")
    moment = wib(2026, 12, 8)
    for _ in range(notify.MAX_ATTEMPTS):
        notify.deliver(orchestrator.sessions, lambda body, headers: 503, SECRET, moment)
        moment = moment.replace(hour=moment.hour + 1) if moment.hour < 23 else moment
    with orchestrator.sessions() as session:
        first = session.scalars(select(NotificationRow).order_by(NotificationRow.id)).first()
        assert first is not None and first.state == notify.DEAD and first.last_error == "HTTP 503"
    with orchestrator.sessions.begin() as session:
        assert notify.replay(session, first.id, moment)
    result = notify.deliver(orchestrator.sessions, lambda body, headers: 200, SECRET, moment)
    assert result.delivered == 3
