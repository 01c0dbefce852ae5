"""Facts: what billing has told us about one service, folded from its events.

``derive_facts`` is a pure fold over a service's events in the order they
happened. Facts keep only what the lifecycle needs: the anchors of the
ladders (oldest unpaid due date, subscription end, deposit exhaustion,
closure), holds, abuse strikes, operator suspensions, and the billing
episodes that a payment ended (so the lifecycle can say what to undo).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from typing import Any

from orchestrator.events import (
    AbuseReported,
    AdminSuspended,
    AdminUnsuspended,
    DepositChanged,
    Event,
    HoldPlaced,
    HoldReleased,
    InvoiceIssued,
    InvoicePaid,
    PackageChanged,
    ServiceCancelled,
    ServiceCreated,
    ServiceRenewed,
)


@dataclass(frozen=True)
class Hold:
    id: str
    kind: str
    placed_at: datetime
    until: datetime | None = None


@dataclass(frozen=True)
class Episode:
    """A run of nonpayment that a payment ended: the ladder ran from ``anchor_day``."""

    anchor_day: date
    cleared_at: datetime


@dataclass(frozen=True)
class Facts:
    service_id: str
    customer: str = ""
    policy: str = ""
    product: str = ""
    host: str = ""
    spec: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None
    unpaid: dict[str, date] = field(default_factory=dict)
    subscription_end: date | None = None
    deposit_exhausted_at: datetime | None = None
    closed_at: datetime | None = None
    holds: tuple[Hold, ...] = ()
    abuse: tuple[tuple[str, datetime], ...] = ()
    admin_suspensions: tuple[tuple[str, datetime], ...] = ()
    episodes: tuple[Episode, ...] = ()
    revision: int = 0

    @property
    def oldest_unpaid_due(self) -> date | None:
        return min(self.unpaid.values(), default=None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_encode, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Facts:
        return _decode_facts(json.loads(text))


def derive_facts(service_id: str, events: Iterable[Event]) -> Facts:
    facts = Facts(service_id)
    for event in events:
        facts = apply_event(facts, event)
    return facts


def apply_event(facts: Facts, event: Event) -> Facts:
    """One event's effect on the facts; ``revision`` counts the events taken."""
    return _fold(replace(facts, revision=facts.revision + 1), event)


def _fold(facts: Facts, event: Event) -> Facts:
    """Unknown invoices and holds are ignored, not errors: billing may resend or reorder."""
    data, at = event.data, event.at
    match data:
        case ServiceCreated():
            return replace(
                facts,
                customer=data.customer,
                policy=data.policy,
                product=data.product.value,
                host=data.host,
                spec=data.spec.model_dump(),
                created_at=at,
                subscription_end=data.subscription_end,
            )
        case InvoiceIssued():
            return replace(facts, unpaid={**facts.unpaid, data.invoice: data.due})
        case InvoicePaid():
            return _pay(facts, data.invoice, at)
        case ServiceRenewed():
            return replace(facts, subscription_end=data.until)
        case PackageChanged():
            return replace(facts, spec=data.spec.model_dump())
        case DepositChanged():
            return _deposit(facts, data.balance > 0, at)
        case ServiceCancelled():
            return replace(facts, closed_at=data.effective or at)
        case HoldPlaced():
            hold = Hold(data.hold, data.kind, at, data.until)
            kept = tuple(h for h in facts.holds if h.id != data.hold)
            return replace(facts, holds=(*kept, hold))
        case HoldReleased():
            return replace(facts, holds=tuple(h for h in facts.holds if h.id != data.hold))
        case AbuseReported():
            return replace(facts, abuse=(*facts.abuse, (data.category, at)))
        case AdminSuspended():
            others = _without_owner(facts, data.owner.value)
            return replace(facts, admin_suspensions=(*others, (data.owner.value, at)))
        case AdminUnsuspended():
            return replace(facts, admin_suspensions=_without_owner(facts, data.owner.value))
    return facts


def _pay(facts: Facts, invoice: str, at: datetime) -> Facts:
    """Paying clears one invoice; if the oldest due date moves, an episode ended."""
    if invoice not in facts.unpaid:
        return facts
    before = facts.oldest_unpaid_due
    unpaid = {k: v for k, v in facts.unpaid.items() if k != invoice}
    after = min(unpaid.values(), default=None)
    episodes = facts.episodes
    if before is not None and before != after and before <= at.date():
        episodes = (*episodes, Episode(before, at))
    return replace(facts, unpaid=unpaid, episodes=episodes)


def _without_owner(facts: Facts, owner: str) -> tuple[tuple[str, datetime], ...]:
    return tuple(s for s in facts.admin_suspensions if s[0] != owner)


def _deposit(facts: Facts, positive: bool, at: datetime) -> Facts:
    if positive:
        return replace(facts, deposit_exhausted_at=None)
    if facts.deposit_exhausted_at is not None:
        return facts
    return replace(facts, deposit_exhausted_at=at)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _decode_facts(raw: dict[str, Any]) -> Facts:
    moment = _moment
    return Facts(
        service_id=raw["service_id"],
        customer=raw["customer"],
        policy=raw["policy"],
        product=raw["product"],
        host=raw["host"],
        spec=raw["spec"],
        created_at=moment(raw["created_at"]),
        unpaid={k: date.fromisoformat(v) for k, v in raw["unpaid"].items()},
        subscription_end=_day(raw["subscription_end"]),
        deposit_exhausted_at=moment(raw["deposit_exhausted_at"]),
        closed_at=moment(raw["closed_at"]),
        holds=tuple(
            Hold(h["id"], h["kind"], datetime.fromisoformat(h["placed_at"]), moment(h["until"]))
            for h in raw["holds"]
        ),
        abuse=tuple((c, datetime.fromisoformat(t)) for c, t in raw["abuse"]),
        admin_suspensions=tuple(
            (o, datetime.fromisoformat(t)) for o, t in raw["admin_suspensions"]
        ),
        episodes=tuple(
            Episode(date.fromisoformat(e["anchor_day"]), datetime.fromisoformat(e["cleared_at"]))
            for e in raw["episodes"]
        ),
        revision=raw["revision"],
    )


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def _pairs(raw: list[list[str]]) -> tuple[tuple[str, datetime], ...]:
    return tuple((name, datetime.fromisoformat(at)) for name, at in raw)
