"""Telling the billing system what was done: queued, signed, retried, never lost.

A notification is written in the same transaction as the step outcome it
reports, so none is lost and none is invented. Delivery takes them oldest
first and stops at the first failure, so the billing system sees them in
order; each carries its own ``event_id`` for the receiver to de-duplicate
by, and is signed as the hooks are (``orchestrator.signing``, scheme v2: a
POST to the billing URL's path, a fresh request id per attempt). A
notification that keeps failing (``MAX_ATTEMPTS``) moves to the dead letters,
where an operator finds it (``notifications list``) and replays it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.secrets.redact import redact, redact_text
from orchestrator.secrets.signing import signed_headers
from orchestrator.state.models import NotificationRow, StepRow

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
MAX_ATTEMPTS = 10
# What the billing system hears of, by the step that did it.
KINDS = {
    # Billing sends the customer's e-mail: an invoice reminder, a low deposit, a notice
    # before termination; the detail says which clause and, for a threshold, which one.
    "notice": "service.notice",
    "suspend": "service.suspended",
    "resume": "service.unsuspended",
    "reclaim_ips": "ip.reclaimed",
    "assign_ips": "ip.assigned",
    "terminate": "service.terminated",
    "restore": "service.restored",
    "purge": "service.purged",
    "hand_over": "hardware.handed_over",
    # Restores are billable in some terms (cybernet: Rp 100,000/GB past one a month).
    "restore_backup": "service.restored_from_backup",
}
Post = Callable[[bytes, dict[str, str]], int]


def record(
    session: Session, step: StepRow, state: str, now: datetime, detail: dict[str, Any]
) -> None:
    """Queue what a finished step means for billing, with the step's own outcome."""
    kind = "step.failed" if state == "failed" else KINDS.get(step.kind) if state == "done" else None
    if kind is None or (kind == "ip.assigned" and not detail.get("changed")):
        return
    extra = {"step": {"id": step.id, "kind": step.kind, "state": state}}
    extra |= _address_change(kind, detail)
    queue(session, f"orchestrator-{step.id}-{state}", step.service_id, kind, now, detail, extra)


def queue(
    session: Session,
    event_id: str,
    service_id: str,
    kind: str,
    now: datetime,
    detail: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Queue one signed notification for billing (a step's outcome, a service that needs
    a person: a payment that came after the purge)."""
    body = {
        "id": event_id,
        "type": kind,
        "service": service_id,
        "at": now.isoformat(),
        **(extra or {}),
        "detail": redact(detail),
    }
    session.add(
        NotificationRow(
            event_id=event_id,
            service_id=service_id,
            kind=kind,
            body=json.dumps(body, default=str),
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


def _address_change(kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    """A paying customer whose old address went elsewhere: billing hears both, side by side."""
    if kind != "ip.assigned" or not detail.get("previous_addresses"):
        return {}
    return {
        "address_change": {
            "old": list(detail["previous_addresses"]),
            "new": list(detail.get("addresses", [])),
        }
    }


@dataclass(frozen=True)
class Delivery:
    delivered: int
    failed: int
    dead: int


def deliver(
    sessions: sessionmaker[Session], post: Post, secret: bytes, now: datetime, path: str
) -> Delivery:
    """Send what is due, oldest first, signed for ``path`` (the billing URL's);
    the first failure stops the round, to keep order."""
    delivered = dead = 0
    with sessions() as session:
        due = list(
            session.scalars(
                select(NotificationRow.id)
                .where(NotificationRow.state == PENDING)
                .order_by(NotificationRow.id)
            )
        )
    for notification_id in due:
        outcome = _send(sessions, notification_id, post, (secret, path), now)
        if outcome == DELIVERED:
            delivered += 1
            continue
        dead += outcome == DEAD
        return Delivery(delivered, 1, dead)
    return Delivery(delivered, 0, dead)


def _send(
    sessions: sessionmaker[Session],
    notification_id: int,
    post: Post,
    signer: tuple[bytes, str],
    now: datetime,
) -> str:
    with sessions.begin() as session:
        row = session.get(NotificationRow, notification_id)
        if row is None or row.state != PENDING:
            return DELIVERED
        if row.next_attempt_at > now:
            return PENDING
        body = row.body.encode()
        try:
            secret, path = signer
            status = post(body, signed_headers(secret, "POST", path, int(now.timestamp()), body))
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except OSError as exc:
            error = redact_text(str(exc))
        return _settle(row, error, now)


def _settle(row: NotificationRow, error: str | None, now: datetime) -> str:
    row.attempts += 1
    if error is None:
        row.state, row.delivered_at, row.last_error = DELIVERED, now, None
        return DELIVERED
    row.last_error = error
    if row.attempts >= MAX_ATTEMPTS:
        row.state = DEAD
        return DEAD
    row.next_attempt_at = now + min(
        timedelta(seconds=30 * 2 ** (row.attempts - 1)), timedelta(hours=1)
    )
    return PENDING


def replay(session: Session, notification_id: int, now: datetime) -> bool:
    """A dead letter back in the queue, to be sent at the next delivery round."""
    row = session.get(NotificationRow, notification_id)
    if row is None or row.state != DEAD:
        return False
    row.state, row.attempts, row.next_attempt_at = PENDING, 0, now
    return True
