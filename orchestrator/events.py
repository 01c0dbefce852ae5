"""Billing events: what the billing system (or an operator) says happened.

Events are the only input to a service's facts. Each has an ``id`` chosen by
its sender; the store keeps the first event with an id exactly as received
and ignores any later one with the same id, so a billing system may resend
freely. ``at`` is when it happened in billing, which may be earlier than
when it reached us.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
)

from orchestrator.jsondepth import depth_error
from orchestrator.policy import ProductKind, ReasonOwner


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spec(Strict):
    vcpus: int = Field(1, ge=1, le=512)
    memory_mib: int = Field(512, ge=64)
    disk_gib: int = Field(1, ge=1)
    daily_backups: bool = Field(False, description="the daily backup add-on, where sold")


class NewService(Strict):
    """What a service is sold as; also the body of the hooks' create command."""

    customer: str = Field(min_length=1)
    policy: str = Field(min_length=1)
    product: ProductKind
    host: str = Field(min_length=1)
    spec: Spec = Spec()
    subscription_end: date | None = None


class ServiceCreated(NewService):
    type: Literal["service.created"]


class ServiceCancelled(Strict):
    """The account is closed: the account_closure ladder starts at ``effective``."""

    type: Literal["service.cancelled"]
    effective: AwareDatetime | None = None


class ServiceRenewed(Strict):
    type: Literal["service.renewed"]
    until: date


class PackageChanged(Strict):
    type: Literal["service.package_changed"]
    spec: Spec


class InvoiceIssued(Strict):
    type: Literal["invoice.issued"]
    invoice: str = Field(min_length=1)
    due: date
    amount: Decimal = Field(Decimal(0), ge=0)


class InvoicePaid(Strict):
    type: Literal["invoice.paid"]
    invoice: str = Field(min_length=1)


class DepositChanged(Strict):
    type: Literal["deposit.changed"]
    balance: Decimal


class HoldPlaced(Strict):
    type: Literal["hold.placed"]
    hold: str = Field(min_length=1, description="the hold's own id, to release it by")
    kind: str = Field(min_length=1, description="a hold kind named in the service's policy")
    until: AwareDatetime | None = None
    reason: str = ""


class HoldReleased(Strict):
    type: Literal["hold.released"]
    hold: str = Field(min_length=1)


class AbuseReported(Strict):
    type: Literal["abuse.reported"]
    category: str = Field(min_length=1)


class AdminSuspended(Strict):
    type: Literal["admin.suspended"]
    owner: ReasonOwner = ReasonOwner.ADMIN
    reason: str = ""


class AdminUnsuspended(Strict):
    type: Literal["admin.unsuspended"]
    owner: ReasonOwner = ReasonOwner.ADMIN


Payload = Annotated[
    ServiceCreated
    | ServiceCancelled
    | ServiceRenewed
    | PackageChanged
    | InvoiceIssued
    | InvoicePaid
    | DepositChanged
    | HoldPlaced
    | HoldReleased
    | AbuseReported
    | AdminSuspended
    | AdminUnsuspended,
    Field(discriminator="type"),
]


class Event(Strict):
    """One billing event; ``received`` keeps the sender's own JSON of it, to store as is."""

    id: str = Field(min_length=1, max_length=200)
    service: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    at: AwareDatetime
    data: Payload

    _received: str | None = PrivateAttr(None)

    @property
    def type(self) -> str:
        return self.data.type

    @property
    def received(self) -> str:
        return self._received or self.model_dump_json()


class EventError(ValueError):
    """An event that cannot be taken in; nothing was stored."""


_EVENTS = TypeAdapter(list[Event])


def parse_events(raw: str | bytes) -> list[Event]:
    """One event (a JSON object) or many (an array, or one object per line)."""
    if (too_deep := depth_error(raw)) is not None:
        raise EventError(too_deep)
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = _json_lines(raw)
    items: list[Any] = parsed if isinstance(parsed, list) else [parsed]
    try:
        events = _EVENTS.validate_python(items)
    except ValidationError as exc:
        raise EventError(_describe(exc)) from None
    for event, item in zip(events, items, strict=True):
        event._received = json.dumps(item, ensure_ascii=False)
    return events


def _json_lines(raw: str | bytes) -> list[Any]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EventError(f"line {number}: not JSON: {exc.msg}") from None
    return items


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        lines.append(f"event {loc}: {error['msg']}")
    return "\n".join(lines)


def event_json(event: Event) -> str:
    return event.model_dump_json()
