"""Billing events: what the billing system (or an operator) says happened.

Events are the only input to a service's facts. Each has an ``id`` chosen by
its sender; the store keeps the first event with an id exactly as received
and ignores any later one with the same id, so a billing system may resend
freely. ``at`` is when it happened in billing, which may be earlier than
when it reached us.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from orchestrator.core.jsondepth import depth_error
from orchestrator.core.policy import ProductKind, ReasonOwner


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Billing speaks of this century: a date outside it is a typo or an attack, and
# would put a service at once at the end of its ladder (or overflow a clock).
EARLIEST, LATEST = date(2000, 1, 1), date(2099, 12, 31)
# How far a due date or an end may lie from the event that names it.
MAX_REACH_DAYS = 3660


def _sane_day(day: date) -> date:
    if not EARLIEST <= day <= LATEST:
        window = f"{EARLIEST.isoformat()}..{LATEST.isoformat()}"
        raise ValueError(f"{day.isoformat()} is outside {window}")
    return day


def _sane_moment(moment: datetime) -> datetime:
    _sane_day(moment.date())
    return moment


Day = Annotated[date, AfterValidator(_sane_day)]
Moment = Annotated[AwareDatetime, AfterValidator(_sane_moment)]


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
    subscription_end: Day | None = None
    awaiting_payment: bool = Field(
        False,
        description="the order is not paid yet: where the policy activates after the first "
        "payment, nothing is provisioned until an invoice is paid",
    )


class ServiceCreated(NewService):
    type: Literal["service.created"]


class ServiceCancelled(Strict):
    """The account is closed: the account_closure ladder starts at ``effective``."""

    type: Literal["service.cancelled"]
    effective: Moment | None = None


class ServiceRenewed(Strict):
    type: Literal["service.renewed"]
    until: Day


class PackageChanged(Strict):
    type: Literal["service.package_changed"]
    spec: Spec


class InvoiceIssued(Strict):
    type: Literal["invoice.issued"]
    invoice: str = Field(min_length=1, max_length=200)
    due: Day
    amount: Decimal = Field(Decimal(0), ge=0)


class InvoicePaid(Strict):
    """Settles the invoice of that id, whenever either arrives; an unknown id is refused."""

    type: Literal["invoice.paid"]
    invoice: str = Field(min_length=1, max_length=200)


class InvoiceReversed(Strict):
    """A payment taken back (unconfirmed after 24 h, a chargeback): the invoice is unpaid
    again with its original due date, and the policy's ``reversal_grace`` before any step."""

    type: Literal["invoice.reversed"]
    invoice: str = Field(min_length=1, max_length=200)
    reason: str = ""


class DepositChanged(Strict):
    """A prepaid deposit's balance, with the monthly bill (reminders are a share of it)
    and the next period's charge (a balance that cannot cover it is insufficient)."""

    type: Literal["deposit.changed"]
    balance: Decimal = Field(allow_inf_nan=False, max_digits=20)
    monthly: Decimal | None = Field(None, gt=0, allow_inf_nan=False, max_digits=20)
    next_charge: Decimal = Field(Decimal(0), ge=0, allow_inf_nan=False, max_digits=20)


class HoldPlaced(Strict):
    type: Literal["hold.placed"]
    hold: str = Field(min_length=1, description="the hold's own id, to release it by")
    kind: str = Field(min_length=1, description="a hold kind named in the service's policy")
    until: Moment | None = None
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


class ServiceReprovision(Strict):
    """An operator (or billing) asks for a fresh machine for a service whose data was purged."""

    type: Literal["service.reprovision"]
    reason: str = ""


Payload = Annotated[
    ServiceCreated
    | ServiceCancelled
    | ServiceRenewed
    | PackageChanged
    | InvoiceIssued
    | InvoicePaid
    | InvoiceReversed
    | DepositChanged
    | HoldPlaced
    | HoldReleased
    | AbuseReported
    | AdminSuspended
    | AdminUnsuspended
    | ServiceReprovision,
    Field(discriminator="type"),
]


class Event(Strict):
    """One billing event; ``received`` keeps the sender's own JSON of it, to store as is."""

    id: str = Field(min_length=1, max_length=200)
    service: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    at: Moment
    data: Payload

    _received: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _dates_near_the_event(self) -> Event:
        named = getattr(self.data, "due", None) or getattr(self.data, "until", None)
        if isinstance(named, datetime):
            named = named.date()
        if isinstance(named, date) and abs((named - self.at.date()).days) > MAX_REACH_DAYS:
            raise ValueError(
                f"{named.isoformat()} is more than {MAX_REACH_DAYS} days from the event's "
                f"time {self.at.date().isoformat()}"
            )
        return self

    @property
    def type(self) -> str:
        return self.data.type

    @property
    def digest(self) -> str:
        """The body's fingerprint, whitespace and key order aside: a resend has the same."""
        return body_digest(self.received)

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


def body_digest(received: str) -> str:
    canonical = json.dumps(json.loads(received), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def event_json(event: Event) -> str:
    return event.model_dump_json()
