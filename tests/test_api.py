"""The hooks API served by uvicorn on loopback, spoken to over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from orchestrator.secrets.signing import signed_headers
from tests.conftest import NEW, OLD, REPO, Served, created, invoice, paid, wib


def test_a_signed_event_is_taken_and_a_replayed_id_ignored(served: Served) -> None:
    response = served.post("/v1/events", [created("h1"), invoice("h1", "2026-12-01")])
    assert response.status_code == 202 and len(response.json()["accepted"]) == 2
    again = served.post("/v1/events", [created("h1")], skew=1)  # resent, signed anew
    assert again.status_code == 202 and again.json()["duplicates"] == ["h1-created"]
    assert served.events() == 2


def test_both_rotating_secrets_are_accepted_others_refused(served: Served) -> None:
    assert served.post("/v1/events", created("h1"), secret=OLD).status_code == 202
    refused = served.post("/v1/events", created("h2"), secret=b"guessed")
    assert refused.status_code == 401 and "guessed" not in refused.text
    assert served.events() == 1


@pytest.mark.parametrize(("skew", "why"), [(-301, "stale"), (61, "future")])
def test_stale_and_future_requests_are_refused(served: Served, skew: int, why: str) -> None:
    response = served.post("/v1/events", created("h1"), skew=skew)
    assert response.status_code == 401 and why in response.json()["detail"]
    assert served.events() == 0


def test_tampered_and_replayed_requests_change_nothing(served: Served) -> None:
    tampered = json.dumps(created("h1", policy="cybernet")).encode()
    assert served.post("/v1/events", created("h1"), body=tampered).status_code == 401
    raw = json.dumps(created("h1")).encode()
    headers = {
        **signed_headers(NEW, "POST", "/v1/events", int(served.clock.now.timestamp()), raw),
        "Content-Type": "application/json",
    }
    assert served.client.post("/v1/events", content=raw, headers=headers).status_code == 202
    replayed = served.client.post("/v1/events", content=raw, headers=headers)
    assert replayed.status_code == 409 and served.events() == 1


def test_a_malformed_event_is_refused_whole(served: Served) -> None:
    bad = [
        created("h1"),
        {
            "id": "x",
            "service": "h1",
            "at": "2026-11-20T10:00:00+07:00",
            "data": {"type": "invoice.paid"},
        },
    ]
    response = served.post("/v1/events", bad)
    assert response.status_code == 422 and served.events() == 0


def test_module_commands_replay_their_first_response(served: Served) -> None:
    body = {"customer": "acme", "policy": "klikserver", "product": "kvm_vps", "host": "kvm-jkt-1"}
    first = served.post("/v1/services/h1/create", body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and first.json()["accepted"] is True
    again = served.post("/v1/services/h1/create", body, headers={"Idempotency-Key": "k-1"}, skew=1)
    assert again.status_code == 202 and again.json() == first.json()
    other = served.post(
        "/v1/services/h1/create",
        {**body, "host": "kvm-jkt-2"},
        headers={"Idempotency-Key": "k-1"},
        skew=2,
    )
    assert other.status_code == 422 and served.events() == 1
    suspended = served.post("/v1/services/h1/suspend", {"reason": "chargeback"}, skew=3)
    assert suspended.status_code == 202
    state = served.client.get("/v1/services/h1").json()
    assert state["phase"] == "suspended" and state["reasons"][0]["owner"] == "admin"


def test_a_paid_invoice_unsuspends_at_the_next_tick(served: Served) -> None:
    served.post("/v1/events", [created("h9"), invoice("h9", "2026-12-01")])
    served.orchestrator.apply(wib(2026, 12, 6, 0, 1))
    assert served.client.get("/v1/services/h9").json()["phase"] == "active"  # clock: 20 Nov
    served.clock.now = wib(2026, 12, 6, 10)
    assert served.client.get("/v1/services/h9").json()["phase"] == "suspended"
    assert served.post("/v1/events", paid("h9", "2026-12-06T10:00:00+07:00")).status_code == 202
    report = served.orchestrator.apply(served.clock.now + timedelta(minutes=1))
    assert [(s.kind, s.state) for s in report.steps] == [("resume", "done")]


def test_health_metrics_and_the_published_openapi(served: Served) -> None:
    assert served.client.get("/healthz").json() == {"status": "ok"}
    served.post("/v1/events", created("h1"))
    served.orchestrator.apply(wib(2026, 11, 20, 10, 1))
    metrics = served.client.get("/metrics").text
    assert 'orchestrator_steps{kind="create",state="done"} 1' in metrics
    assert "orchestrator_queue_depth 0" in metrics and "orchestrator_breaker_open 0" in metrics
    tick = wib(2026, 11, 20, 10, 1).timestamp()
    assert f"orchestrator_last_tick_timestamp_seconds {tick}" in metrics
    published = json.loads((REPO / "orchestrator" / "faces" / "openapi.json").read_text())
    assert served.client.get("/openapi.json").json() == published
    assert served.client.get("/v1/services/nope").status_code == 404


def test_a_signature_for_one_command_is_refused_at_another(served: Served) -> None:
    """Finding 4: method and path are signed, so a captured `{}` cannot be redirected."""
    served.post("/v1/events", [created("ha"), created("hb")])
    raw = b"{}"
    stamp = int(served.clock.now.timestamp())
    captured = signed_headers(NEW, "POST", "/v1/services/ha/unsuspend", stamp, raw)
    moved = served.client.post("/v1/services/hb/terminate", content=raw, headers=captured)
    assert moved.status_code == 401 and "signature does not match" in moved.json()["detail"]
    as_put = served.client.put("/v1/services/ha/unsuspend", content=raw, headers=captured)
    assert as_put.status_code == 405
    assert served.events() == 2


def test_two_commands_with_one_body_in_one_second_are_both_taken(served: Served) -> None:
    """Finding 5: replays are told apart by request id, not by what the body says."""
    served.post("/v1/events", [created("ha"), created("hb")])
    first = served.post("/v1/services/ha/suspend", {}, request_id="billing-1")
    second = served.post("/v1/services/hb/suspend", {}, request_id="billing-2")
    assert (first.status_code, second.status_code) == (202, 202)
    replayed = served.post("/v1/services/ha/suspend", {}, request_id="billing-1")
    assert replayed.status_code == 409 and "billing-1" in replayed.json()["detail"]
    assert served.events() == 4


@pytest.mark.parametrize("request_id", ["", "has space", "x" * 81])
def test_a_bad_request_id_is_refused(served: Served, request_id: str) -> None:
    raw = json.dumps(created("h1")).encode()
    stamp = int(served.clock.now.timestamp())
    headers = signed_headers(NEW, "POST", "/v1/events", stamp, raw, "placeholder")
    headers["X-Orchestrator-Request-Id"] = request_id
    response = served.client.post("/v1/events", content=raw, headers=headers)
    assert response.status_code == 401 and served.events() == 0


def _chunks(total: int, size: int = 1 << 16) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_413(served: Served, declared: bool) -> None:
    total = 4 << 20
    headers = {"Content-Length": str(total)} if declared else {}
    response = served.client.post("/v1/events", content=_chunks(total), headers=headers)
    assert response.status_code == 413 and "at most 1048576 bytes" in response.json()["detail"]
    assert served.events() == 0
    assert served.post("/v1/events", created("h1")).status_code == 202


@pytest.mark.parametrize("path", ["/v1/events", "/v1/services/h1/suspend"])
def test_json_nested_too_deep_is_a_422_not_a_500(served: Served, path: str) -> None:
    """Finding 10: a body of 100,000 brackets would recurse json.loads to death."""
    deep = b"[" * 100_000 + b"]" * 100_000
    stamp = int(served.clock.now.timestamp())
    headers = signed_headers(NEW, "POST", path, stamp, deep)
    response = served.client.post(path, content=deep, headers=headers)
    assert response.status_code == 422 and "nested deeper than 32" in response.json()["detail"]
    assert served.events() == 0


def test_a_refusal_quoting_a_secret_is_redacted(served: Served) -> None:
    response = served.client.get("/v1/services/Authorization:%20Bearer%20hunter22secret")
    assert response.status_code == 404 and "hunter22secret" not in response.text
    assert response.json()["detail"] == "unknown service 'Authorization: ***'"
