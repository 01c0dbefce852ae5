"""Billing's events in, facts out: validate, store, derive, and hold what cannot be matched.

Facts are a function of a service's events, plus what only the orchestrator
knows (when its data was purged, payments held for review). Every change of
facts makes the service due at the next tick.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.core.events import AbuseReported, Event, EventError, HoldPlaced, ServiceCreated
from orchestrator.core.facts import Facts, derive_facts
from orchestrator.core.lifecycle import Verdict
from orchestrator.core.policy import REVIEW_HOLD, Policy
from orchestrator.engine.reports import IngestReport
from orchestrator.run import notify
from orchestrator.state import audit, ingest, ipam, journal, services
from orchestrator.state.models import EventRow, ServiceRow

if TYPE_CHECKING:
    from orchestrator.engine.orchestrator import Orchestrator

VerdictOf = Callable[[Facts], Verdict]


def seed_pools(orch: Orchestrator) -> int:
    with orch.sessions.begin() as session:
        return sum(
            ipam.seed_pool(session, name, pool.addresses(), pool.reserved_addresses())
            for name, pool in orch.inventory.pools.items()
        )


def ingest_events(
    orch: Orchestrator, events: Sequence[Event], now: datetime, actor: str
) -> IngestReport:
    """Store new events and refresh their services; all or nothing.

    The same batch sent many times at once is taken once: a writer that
    loses the race on an event id reads the winner's rows and finds them
    resends (or a conflict).
    """
    for attempt in range(1, 4):
        try:
            return _ingest_once(orch, events, now, actor)
        except IntegrityError:
            if attempt == 3:
                raise EventError("concurrent writers kept taking these ids; send again") from None
    raise AssertionError("unreachable")


def _ingest_once(
    orch: Orchestrator, events: Sequence[Event], now: datetime, actor: str
) -> IngestReport:
    with orch.sessions.begin() as session:
        new, duplicates = ingest.split_known(session, events)
        _validate(orch, session, new)
        unmatched = ingest.unmatched(session, new)
        if unmatched:
            _hold_for_review(orch, session, unmatched, now, actor)
        else:
            new += ingest.matched_by_invoices(session, new, now)
            _store(orch, session, new, duplicates, now, actor)
    if unmatched:
        raise ingest.refusal(unmatched)
    return IngestReport([e.id for e in new], duplicates)


def _store(
    orch: Orchestrator,
    session: Session,
    new: list[Event],
    duplicates: list[str],
    now: datetime,
    actor: str,
) -> None:
    session.add_all(_event_row(event, now) for event in new)
    session.flush()
    for service_id in dict.fromkeys(e.service for e in new):
        refresh(orch, session, service_id, now)
    if new:
        detail = {"events": [e.id for e in new], "duplicates": duplicates}
        audit.append(session, now, actor, "events.ingested", "*", detail)


def _hold_for_review(
    orch: Orchestrator, session: Session, unmatched: list[Event], now: datetime, actor: str
) -> None:
    fresh = ingest.hold_for_review(session, unmatched, now)
    session.flush()
    for service_id in dict.fromkeys(e.service for e in unmatched):
        if session.get(ServiceRow, service_id) is not None:  # else created in this batch
            refresh(orch, session, service_id, now)
    if fresh:
        audit.append(session, now, actor, "payments.held_for_review", "*", {"events": fresh})


def resolve_payment(
    orch: Orchestrator, event_id: str, now: datetime, actor: str, invoice: str | None, reason: str
) -> None:
    """An operator matches a payment under review to an invoice, or discards it."""
    with orch.sessions.begin() as session:
        row = ingest.open_review(session, event_id)
        if invoice is not None:
            event = ingest.match(session, row, invoice, actor, now)
            _store(orch, session, [event], [], now, actor)
        else:
            ingest.discard(session, row, reason, actor, now)
            refresh(orch, session, row.service_id, now)
        detail = {"event": event_id, "invoice": invoice, "reason": reason}
        audit.append(session, now, actor, "payments.reviewed", row.service_id, detail)


def _validate(orch: Orchestrator, session: Session, events: list[Event]) -> None:
    created: dict[str, str] = {}
    for event in events:
        if isinstance(event.data, ServiceCreated):
            _check_created(orch, event.data)
            created[event.service] = event.data.policy
            continue
        policy_name = created.get(event.service) or services.policy_of(session, event.service)
        if policy_name is None:
            raise EventError(f"event {event.id}: unknown service {event.service!r}")
        _check_names(event, orch.policies[policy_name])


def _check_created(orch: Orchestrator, data: ServiceCreated) -> None:
    if data.policy not in orch.policies:
        raise EventError(
            f"unknown policy {data.policy!r} (known: {', '.join(sorted(orch.policies))})"
        )
    if data.product not in orch.policies[data.policy].products:
        raise EventError(f"policy {data.policy} has no rules for {data.product.value}")
    if data.host not in orch.inventory.hosts():
        raise EventError(f"unknown host {data.host!r}: not in the inventory")


def _check_names(event: Event, policy: Policy) -> None:
    if isinstance(event.data, HoldPlaced) and event.data.kind not in policy.holds:
        raise EventError(
            f"event {event.id}: policy {policy.name} has no hold kind {event.data.kind!r}"
        )
    if isinstance(event.data, AbuseReported) and event.data.category not in policy.abuse:
        raise EventError(
            f"event {event.id}: policy {policy.name} has no abuse category "
            f"{event.data.category!r}"
        )


def refresh(orch: Orchestrator, session: Session, service_id: str, now: datetime) -> None:
    """Facts anew from every event of the service, with what the journal and the
    review list add: when its data was purged, payments held for review."""
    bodies = services.event_bodies(session, service_id)
    facts = derive_facts(service_id, (Event.model_validate_json(body) for body in bodies))
    row = session.get(ServiceRow, service_id)
    fresh = row is None
    if row is None:
        row = ServiceRow(id=service_id, applied_phase=services.NEW, attention="[]")
    row.customer, row.policy, row.product, row.host = (
        facts.customer,
        facts.policy,
        facts.product,
        facts.host,
    )
    record(orch, session, row, facts, now)
    row.next_at = now  # new facts: reconcile this service at the next tick
    if fresh:
        session.add(row)


def record(
    orch: Orchestrator,
    session: Session,
    row: ServiceRow,
    facts: Facts,
    now: datetime,
    verdict_of: VerdictOf | None = None,
) -> Verdict:
    """Store facts with the journal's and the review list's part, and the phase they
    give; billing hears once when a service comes to need a person. A tick passes
    its own ``verdict_of``, so facts it already judged are not judged again."""
    facts = replace(
        facts,
        holds=(
            *(h for h in facts.holds if h.kind != REVIEW_HOLD),
            *ingest.review_holds(session, row.id),
        ),
        purged_at=journal.purged_at(session, row.id),
    )
    verdict = verdict_of(facts) if verdict_of else orch.verdict(facts, now)
    before = set(json.loads(row.attention or "[]"))
    for item in verdict.attention:
        if item not in before:
            notify.queue(
                session,
                f"orchestrator-{row.id}-attention-{uuid.uuid4().hex}",
                row.id,
                "service.needs_attention",
                now,
                {"attention": item, "phase": verdict.phase.value},
            )
    row.phase, row.facts, row.updated_at = verdict.phase.value, facts.to_json(), now
    row.attention = json.dumps(list(verdict.attention))
    return verdict


def facts_of(orch: Orchestrator, service_id: str, session: Session | None = None) -> Facts:
    if session is None:
        with orch.sessions() as own:
            return facts_of(orch, service_id, own)
    row = session.get(ServiceRow, service_id)
    if row is None:
        raise KeyError(service_id)
    try:
        return Facts.from_json(row.facts)
    except (KeyError, TypeError, ValueError):  # stored by an older release: derive anew
        refresh(orch, session, service_id, row.updated_at)
        return Facts.from_json(row.facts)


def _event_row(event: Event, now: datetime) -> EventRow:
    """Kept as billing sent it: the body is what facts are derived from, again and again."""
    at, received = event.at, event.received
    return EventRow(event_id=event.id, service_id=event.service, type=event.type,
                    occurred_at=at, received_at=now, body=received)
