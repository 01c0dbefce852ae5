"""Taking billing events in: ids that mean one thing, and payments that must match.

An event id means one event. The same id with the same body (whitespace and
key order aside) is a harmless resend; the same id with another body is a
conflict, refused whole with both bodies' digests, so that billing learns
of it instead of a payment being dropped as "already known".

A payment (or a reversal) must name an invoice the service has. One that
names none is not a fact: it is refused, kept in the review list, and holds
every destructive step of its service (a ``review`` hold) until it matches:
by itself when its invoice arrives, or when an operator matches it to an
invoice or discards it (``orchestrator events unmatched|match|discard``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.core.events import (
    Event,
    EventError,
    InvoiceIssued,
    InvoicePaid,
    InvoiceReversed,
    body_digest,
    parse_events,
)
from orchestrator.core.facts import Hold
from orchestrator.core.policy import REVIEW_HOLD
from orchestrator.state.models import EventRow, PaymentReviewRow

OPEN, MATCHED, DISCARDED = "open", "matched", "discarded"


class EventConflict(EventError):
    """An event id already stands for another body; nothing was stored."""


class UnmatchedPayment(EventError):
    """A payment names an invoice the service does not have; it is held for review."""


def split_known(session: Session, events: Sequence[Event]) -> tuple[list[Event], list[str]]:
    """The events not seen before, and the ids that are resends; a conflict raises."""
    ids = [e.id for e in events]
    stored: dict[str, str] = {
        i: b
        for i, b in session.execute(
            select(EventRow.event_id, EventRow.body).where(EventRow.event_id.in_(ids))
        )
    }
    reviewed: dict[str, str] = {
        i: b
        for i, b in session.execute(
            select(PaymentReviewRow.event_id, PaymentReviewRow.body).where(
                PaymentReviewRow.event_id.in_(ids), PaymentReviewRow.state != OPEN
            )
        )
    }
    known = {i: body_digest(b) for i, b in {**stored, **reviewed}.items()}
    new: dict[str, Event] = {}
    duplicates, conflicts = [], []
    for event in events:
        first = known.get(event.id) or (new[event.id].digest if event.id in new else None)
        if first is None:
            new[event.id] = event
        elif first == event.digest or event.id in reviewed:
            duplicates.append(event.id)
        else:
            conflicts.append(
                f"{event.id} (stands for {first[:16]}, this body is {event.digest[:16]})"
            )
    if conflicts:
        raise EventConflict(
            "an event id already stands for another event: "
            + "; ".join(conflicts)
        )
    return list(new.values()), duplicates


def unmatched(session: Session, events: Sequence[Event]) -> list[Event]:
    """Payments and reversals naming no invoice of their service, stored or in this batch."""
    issued = {(e.service, e.data.invoice) for e in events if isinstance(e.data, InvoiceIssued)}
    moves = [e for e in events if isinstance(e.data, InvoicePaid | InvoiceReversed)]
    services = {e.service for e in moves}
    if not moves:
        return []
    rows = session.scalars(
        select(EventRow.body).where(
            EventRow.service_id.in_(services), EventRow.type == "invoice.issued"
        )
    )
    for body in rows:
        raw = json.loads(body)
        issued.add((raw["service"], raw["data"]["invoice"]))
    return [e for e in moves if (e.service, e.data.invoice) not in issued]  # type: ignore[union-attr]


def hold_for_review(session: Session, events: Sequence[Event], now: datetime) -> list[str]:
    """Keep the unmatched payments in the review list (once each); their new ids."""
    fresh = []
    for event in events:
        if session.get(PaymentReviewRow, event.id) is None:
            session.add(
                PaymentReviewRow(
                    event_id=event.id,
                    service_id=event.service,
                    invoice=event.data.invoice,  # type: ignore[union-attr]
                    body=event.received,
                    received_at=now,
                    state=OPEN,
                )
            )
            fresh.append(event.id)
    return fresh


def refusal(events: Sequence[Event]) -> UnmatchedPayment:
    named = "; ".join(
        f"{e.id}: service {e.service} has no invoice {e.data.invoice!r}"  # type: ignore[union-attr]
        for e in events
    )
    return UnmatchedPayment(
        f"unmatched payment ({named}); it is held for review and holds the "
        "service's destructive steps until matched or discarded (orchestrator events unmatched)"
    )


def matched_by_invoices(session: Session, events: Sequence[Event], now: datetime) -> list[Event]:
    """Payments under review whose invoice has just arrived: they are facts now."""
    issued = {(e.service, e.data.invoice) for e in events if isinstance(e.data, InvoiceIssued)}
    if not issued:
        return []
    rows = session.scalars(
        select(PaymentReviewRow).where(
            PaymentReviewRow.state == OPEN,
            PaymentReviewRow.service_id.in_({service for service, _ in issued}),
        )
    )
    found = []
    for row in rows:
        if (row.service_id, row.invoice) in issued:
            _resolve(row, MATCHED, "orchestrator", f"invoice {row.invoice} arrived", now)
            found.extend(parse_events(row.body))
    return found


def review_holds(session: Session, service_id: str) -> tuple[Hold, ...]:
    """Open reviews as holds, from when they were received: they keep back what has not
    happened yet, and undo nothing."""
    rows = session.scalars(
        select(PaymentReviewRow).where(
            PaymentReviewRow.service_id == service_id, PaymentReviewRow.state == OPEN
        )
    )
    return tuple(Hold(f"review-{r.event_id}", REVIEW_HOLD, r.received_at) for r in rows)


def reviews(session: Session, include_resolved: bool = False) -> list[PaymentReviewRow]:
    query = select(PaymentReviewRow).order_by(PaymentReviewRow.received_at)
    if not include_resolved:
        query = query.where(PaymentReviewRow.state == OPEN)
    return list(session.scalars(query))


def open_review(session: Session, event_id: str) -> PaymentReviewRow:
    row = session.get(PaymentReviewRow, event_id)
    if row is None or row.state != OPEN:
        raise EventError(f"no payment {event_id!r} under review")
    return row


def match(
    session: Session, row: PaymentReviewRow, invoice: str, actor: str, now: datetime
) -> Event:
    """The operator's reading: this payment settles ``invoice`` of its service."""
    raw = json.loads(row.body)
    raw["data"]["invoice"] = invoice
    (event,) = parse_events(json.dumps(raw))
    if unmatched(session, [event]):
        raise EventError(f"service {row.service_id} has no invoice {invoice!r} either")
    _resolve(row, MATCHED, actor, f"matched to invoice {invoice}", now)
    return event


def discard(
    session: Session, row: PaymentReviewRow, reason: str, actor: str, now: datetime
) -> None:
    _resolve(row, DISCARDED, actor, reason or "discarded", now)


def _resolve(row: PaymentReviewRow, state: str, actor: str, words: str, now: datetime) -> None:
    row.state, row.resolved_by, row.resolution, row.resolved_at = state, actor, words, now
