"""Facts: what billing has told us about one service, derived from its events.

``derive_facts`` is a pure function of the *set* of a service's events: the
order they arrived in does not matter, and neither does an accident of their
timestamps. A payment dated a minute before its invoice (clock skew between
billing nodes, a prepayment) settles that invoice all the same: invoices and
payments are matched by id, never by which came first. Events are sorted by
(time, type, id) before anything is folded, so every fold below sees one
order for one set.

Facts keep only what the lifecycle needs: the anchors of the ladders (oldest
unpaid due date, subscription end, the deposit running short, closure),
holds with their release, abuse strikes, operator suspensions, the billing
episodes that a payment ended (so the lifecycle can say what to undo), and
two things the engine adds from the journal and the review list (when the
data was purged; unmatched payments, as ``review`` holds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from orchestrator.core.events import (
    AbuseReported,
    AdminSuspended,
    AdminUnsuspended,
    DepositChanged,
    Event,
    HoldPlaced,
    HoldReleased,
    InvoiceIssued,
    InvoicePaid,
    InvoiceReversed,
    PackageChanged,
    ServiceCancelled,
    ServiceCreated,
    ServiceRenewed,
    ServiceReprovision,
)

# Ties in time are folded in this order: what exists before what acts on it.
_PRECEDENCE = {
    "service.created": 0,
    "invoice.issued": 1,
    "hold.placed": 2,
    "invoice.paid": 3,
    "invoice.reversed": 4,
    "hold.released": 5,
}


@dataclass(frozen=True)
class Hold:
    """A hold as billing placed it; a release is kept with its time, not forgotten,
    because the steps it delayed keep their distances from its end."""

    id: str
    kind: str
    placed_at: datetime
    until: datetime | None = None
    released_at: datetime | None = None


@dataclass(frozen=True)
class Episode:
    """A run of nonpayment that a payment ended: the ladder ran from ``anchor_day``."""

    anchor_day: date
    cleared_at: datetime


@dataclass(frozen=True)
class DepositReading:
    """A balance billing reported, with the charges it has to cover."""

    at: datetime
    balance: Decimal
    monthly: Decimal | None = None
    next_charge: Decimal = Decimal(0)

    @property
    def insufficient(self) -> bool:
        return self.balance <= 0 or self.balance < self.next_charge


@dataclass(frozen=True)
class Facts:
    service_id: str
    customer: str = ""
    policy: str = ""
    product: str = ""
    host: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    invoices: dict[str, date] = field(default_factory=dict)
    settled: dict[str, datetime] = field(default_factory=dict)
    reopened: dict[str, datetime] = field(default_factory=dict)
    first_paid_at: datetime | None = None
    awaiting_payment: bool = False
    subscription_end: date | None = None
    deposit: tuple[DepositReading, ...] = ()
    closed_at: datetime | None = None
    holds: tuple[Hold, ...] = ()
    abuse: tuple[tuple[str, datetime], ...] = ()
    admin_suspensions: tuple[tuple[str, datetime], ...] = ()
    episodes: tuple[Episode, ...] = ()
    reprovision_at: datetime | None = None
    purged_at: datetime | None = None
    revision: int = 0

    @property
    def unpaid(self) -> dict[str, date]:
        return {k: due for k, due in self.invoices.items() if k not in self.settled}

    @property
    def oldest_unpaid_due(self) -> date | None:
        return min(self.unpaid.values(), default=None)

    @property
    def deposit_short_at(self) -> datetime | None:
        """When the balance last became too small for the next charge, if it still is."""
        start = None
        for reading in self.deposit:
            if not reading.insufficient:
                start = None
            elif start is None:
                start = reading.at
        return start

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_encode, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Facts:
        return _decode_facts(json.loads(text))


def derive_facts(service_id: str, events: Iterable[Event]) -> Facts:
    """The facts of a set of events: any arrival order gives the same facts."""
    ordered = sorted(events, key=_order)
    facts = Facts(service_id, revision=len(ordered))
    for event in ordered:
        facts = _fold(facts, event)
    return _with_payments(facts, ordered)


def _order(event: Event) -> tuple[datetime, int, str]:
    return event.at, _PRECEDENCE.get(event.type, 9), event.id


def _fold(facts: Facts, event: Event) -> Facts:
    """One event's effect; payments are matched after all events are in (see below)."""
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
                awaiting_payment=data.awaiting_payment,
            )
        case InvoiceIssued():
            return replace(facts, invoices={**facts.invoices, data.invoice: data.due})
        case ServiceRenewed():
            return replace(facts, subscription_end=data.until)
        case PackageChanged():
            return replace(facts, spec=data.spec.model_dump())
        case DepositChanged():
            reading = DepositReading(at, data.balance, data.monthly, data.next_charge)
            return replace(facts, deposit=(*facts.deposit, reading))
        case ServiceCancelled():
            return replace(facts, closed_at=data.effective or at)
        case HoldPlaced():
            hold = Hold(data.hold, data.kind, at, data.until)
            kept = tuple(h for h in facts.holds if h.id != data.hold)
            return replace(facts, holds=(*kept, hold))
        case HoldReleased():
            return replace(facts, holds=tuple(_release(h, data.hold, at) for h in facts.holds))
        case AbuseReported():
            return replace(facts, abuse=(*facts.abuse, (data.category, at)))
        case AdminSuspended():
            others = _without_owner(facts, data.owner.value)
            return replace(facts, admin_suspensions=(*others, (data.owner.value, at)))
        case AdminUnsuspended():
            return replace(facts, admin_suspensions=_without_owner(facts, data.owner.value))
        case ServiceReprovision():
            return replace(facts, reprovision_at=at)
    return facts


def _release(hold: Hold, hold_id: str, at: datetime) -> Hold:
    """A released hold is kept with its end: the steps it delayed stay delayed."""
    if hold.id != hold_id or hold.released_at is not None:
        return hold
    return replace(hold, released_at=max(at, hold.placed_at))


def _with_payments(facts: Facts, ordered: list[Event]) -> Facts:
    """Settle invoices by id, in the order billing dated the payments and reversals.

    An invoice is paid by the last payment not followed by a reversal. The
    episodes a payment ended are found by replaying the payments against
    every known invoice, whatever order the invoices themselves came in.
    """
    moves = [e for e in ordered if isinstance(e.data, InvoicePaid | InvoiceReversed)]
    settled: dict[str, datetime] = {}
    reopened: dict[str, datetime] = {}
    episodes: list[Episode] = []
    for event in moves:
        invoice = event.data.invoice  # type: ignore[union-attr]
        if invoice not in facts.invoices:
            continue  # refused at ingest as unmatched; a stored one waits for its invoice
        before = _oldest(facts.invoices, settled)
        if isinstance(event.data, InvoicePaid):
            settled[invoice] = event.at
            reopened.pop(invoice, None)
        elif invoice in settled:
            del settled[invoice]
            reopened[invoice] = event.at
        after = _oldest(facts.invoices, settled)
        if before is not None and before != after and before <= event.at.date():
            episodes.append(Episode(before, event.at))
    payments = [e.at for e in moves if isinstance(e.data, InvoicePaid)]
    return replace(
        facts,
        settled=settled,
        reopened=reopened,
        episodes=tuple(episodes),
        first_paid_at=min(payments, default=None),
    )


def _oldest(invoices: dict[str, date], settled: dict[str, datetime]) -> date | None:
    return min((due for k, due in invoices.items() if k not in settled), default=None)


def _without_owner(facts: Facts, owner: str) -> tuple[tuple[str, datetime], ...]:
    return tuple(s for s in facts.admin_suspensions if s[0] != owner)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
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
        invoices={k: date.fromisoformat(v) for k, v in raw["invoices"].items()},
        settled={k: datetime.fromisoformat(v) for k, v in raw["settled"].items()},
        reopened={k: datetime.fromisoformat(v) for k, v in raw["reopened"].items()},
        first_paid_at=moment(raw["first_paid_at"]),
        awaiting_payment=raw["awaiting_payment"],
        subscription_end=_day(raw["subscription_end"]),
        deposit=tuple(
            DepositReading(
                datetime.fromisoformat(d["at"]),
                Decimal(d["balance"]),
                Decimal(d["monthly"]) if d["monthly"] is not None else None,
                Decimal(d["next_charge"]),
            )
            for d in raw["deposit"]
        ),
        closed_at=moment(raw["closed_at"]),
        holds=tuple(
            Hold(
                h["id"],
                h["kind"],
                datetime.fromisoformat(h["placed_at"]),
                moment(h["until"]),
                moment(h["released_at"]),
            )
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
        reprovision_at=moment(raw["reprovision_at"]),
        purged_at=moment(raw["purged_at"]),
        revision=raw["revision"],
    )


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None
