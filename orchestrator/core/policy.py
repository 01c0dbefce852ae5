"""Policies: the terms of service as data.

A policy says, per product kind, when each step of the lifecycle ladder
happens and why (the clause it comes from). Nothing else in the orchestrator
holds a number of days: if it is not in a policy file, it is not a rule.

A policy file is YAML validated by the models below; ``orchestrator policy
schema`` exports their JSON Schema for editors, and ``load_policy`` reports
every error with its file, field and line (see ``orchestrator.yamlerrors``).
"""

from __future__ import annotations

import re
from datetime import datetime, time
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.core.days import Offset, WorkCalendar, add_offset
from orchestrator.core.prune import KeepRules
from orchestrator.core.steps import LADDER_ORDER, StepKind
from orchestrator.core.yamlerrors import PolicyError, load_yaml_model


def _parse_offset(value: Any) -> Offset:
    if isinstance(value, Offset):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("an offset is written like '5d', '2bd', '24h' or '1mo'")
    return Offset.parse(str(value) if isinstance(value, str) else f"{value}d")


def _parse_duration(value: Any) -> Offset:
    offset = _parse_offset(value)
    if offset.negative:
        raise ValueError(f"{offset} is negative: a length cannot be")
    return offset


def _offset_schema(sign: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": rf"^\s*{sign}\d+\s*(h|d|bd|mo)\s*$",
            "description": "whole number and unit: h, d (calendar days), bd (business days), mo",
        }
    )


OffsetField = Annotated[
    Offset,
    BeforeValidator(_parse_duration),
    PlainSerializer(str, return_type=str),
    _offset_schema(""),
]
# A ladder step's offset; negative lies before its anchor (a reminder before the due date).
SignedOffsetField = Annotated[
    Offset,
    BeforeValidator(_parse_offset),
    PlainSerializer(str, return_type=str),
    _offset_schema("-?"),
]


class ProductKind(StrEnum):
    KVM_VPS = "kvm_vps"
    PROXMOX_VPS = "proxmox_vps"
    DEDICATED = "dedicated"
    COLOCATION = "colocation"


class Anchor(StrEnum):
    """Where a ladder's clock starts."""

    OLDEST_UNPAID_DUE = "oldest_unpaid_due"
    SUBSCRIPTION_END = "subscription_end"
    DEPOSIT_EXHAUSTED = "deposit_exhausted"
    ACCOUNT_CLOSURE = "account_closure"


class SuspendMethod(StrEnum):
    PAUSE = "pause"
    SHUTDOWN = "shutdown"
    CUT_NETWORK = "cut_network"
    POWER_OFF = "power_off"
    PORT_DOWN = "port_down"

    @property
    def cuts_network(self) -> bool:
        """The machine keeps running, cut off from the network (a switch port or a filter)."""
        return self in (SuspendMethod.CUT_NETWORK, SuspendMethod.PORT_DOWN)

    @property
    def stand_in(self) -> SuspendMethod:
        """What a hypervisor standing in for a dedicated box or colocation runs instead
        (the inventory's ``stands_in_for``): it cannot cut power or shut a switch port."""
        return {
            SuspendMethod.POWER_OFF: SuspendMethod.SHUTDOWN,
            SuspendMethod.PORT_DOWN: SuspendMethod.CUT_NETWORK,
        }.get(self, self)


class ReasonOwner(StrEnum):
    """Who may lift a suspension: a payment clears only ``billing``."""

    BILLING = "billing"
    ABUSE = "abuse"
    ADMIN = "admin"
    DISPUTE = "dispute"
    LEGAL = "legal"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LadderStep(Strict):
    step: StepKind
    after: SignedOffsetField = Field(
        description="how long after the ladder's anchor (or after ``relative_to``); "
        "negative for a notice before it"
    )
    relative_to: StepKind | None = Field(
        None, description="for a notice: count from this step of the ladder, not the anchor"
    )
    method: SuspendMethod | None = Field(None, description="for suspend: how")
    automatic: bool = Field(
        True, description="applied without an operator's --yes when destructive"
    )
    clause: str = Field(min_length=3, description="the clause of the terms it comes from")
    note: str | None = Field(None, description="how an ambiguous clause was read")

    @field_validator("after")
    @classmethod
    def _only_notices_before(cls, after: Offset, info: ValidationInfo) -> Offset:
        step = info.data.get("step")
        if after.negative and step != StepKind.NOTICE:
            raise ValueError(f"{after} is negative: only a notice may come before its anchor")
        return after

    @model_validator(mode="after")
    def _method_for_suspend(self) -> LadderStep:
        if self.step == StepKind.SUSPEND and self.method is None:
            raise ValueError("a suspend step needs a method (pause, shutdown, cut_network, ...)")
        if self.step != StepKind.SUSPEND and self.method is not None:
            raise ValueError(f"only suspend steps take a method, not {self.step}")
        if self.step != StepKind.NOTICE and self.relative_to:
            raise ValueError(f"only a notice may count from another step, not {self.step}")
        if self.relative_to == StepKind.NOTICE:
            raise ValueError("a notice counts from a destructive step, not another notice")
        return self


# Anchors on which a ladder's order is checked: a month of days, weekends,
# a public holiday and a month's end among them, so that business days and
# calendar months are compared where they differ most.
_ORDER_PROBES = tuple(datetime(2027, 1, day) for day in range(1, 32))


class Ladder(Strict):
    anchor: Anchor
    steps: list[LadderStep] = Field(min_length=1)
    clause: str | None = None

    @model_validator(mode="after")
    def _relative_steps_exist(self) -> Ladder:
        kinds = {s.step for s in self.steps}
        for step in self.steps:
            if step.relative_to is not None and step.relative_to not in kinds:
                raise ValueError(
                    f"a notice counts from {step.relative_to}, which this ladder does not have"
                )
        return self

    def out_of_order(self, work: WorkCalendar) -> str | None:
        """Why the destructive steps are out of order, if they are: a purge before its
        terminate would destroy the data the archive was meant to keep."""
        fixed = {s.step: s.after for s in self.steps if s.relative_to is None}
        ranked = [kind for kind in LADDER_ORDER if kind in fixed]
        if StepKind.HAND_OVER in fixed and StepKind.SUSPEND in fixed:
            ranked.append(StepKind.HAND_OVER)
        for before, later in pairwise(ranked):
            earlier = StepKind.SUSPEND if later == StepKind.HAND_OVER else before
            for anchor in _ORDER_PROBES:
                first, then = fixed[earlier], fixed[later]
                if add_offset(anchor, then, work) < add_offset(anchor, first, work):
                    return (
                        f"{later} ({fixed[later]}) comes before {earlier} ({fixed[earlier]}) "
                        f"from an anchor on {anchor.date().isoformat()}"
                    )
        return None


WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class Backups(Strict):
    """How often a product is backed up, when, and which copies are kept.

    The window is read on the policy's clock; an end before its start
    crosses midnight. ``retention`` takes Proxmox's prune options
    (``keep-last=1,keep-weekly=4``); without it ``keep`` copies are kept,
    newest first, so the terms' "each backup replaces the last" is ``keep: 1``.
    """

    frequency: Literal["weekly", "daily", "none"]
    keep: int = Field(ge=0, description="copies kept; 1 means each backup replaces the last")
    while_suspended: bool = Field(
        True,
        description="whether backups and restores run while suspended for nonpayment",
    )
    window: str = Field(
        "01:00-05:00", description="HH:MM-HH:MM on the policy's clock; may cross midnight"
    )
    retention: str | None = Field(
        None, description="Proxmox prune options, e.g. keep-last=1,keep-weekly=4"
    )
    daily_addon: bool = Field(
        False, description="a service with the daily_backups add-on is backed up nightly"
    )
    clause: str = Field(min_length=3)

    @field_validator("window")
    @classmethod
    def _valid_window(cls, window: str) -> str:
        if not WINDOW.match(window):
            raise ValueError(f"a backup window is written HH:MM-HH:MM, not {window!r}")
        return window

    @field_validator("retention")
    @classmethod
    def _valid_retention(cls, retention: str | None) -> str | None:
        if retention is not None:
            KeepRules.parse(retention)  # its ValueError names the bad part
        return retention

    @model_validator(mode="after")
    def _keeps_what_it_takes(self) -> Backups:
        if self.frequency != "none" and self.keep < 1 and self.retention is None:
            raise ValueError("backups are taken but none kept: give keep >= 1 or retention")
        return self

    def keep_rules(self) -> KeepRules:
        """The retention as Proxmox's prune rules."""
        if self.retention is not None:
            return KeepRules.parse(self.retention)
        return KeepRules(last=self.keep)

    def window_times(self) -> tuple[time, time]:
        start, end = self.window.split("-")
        return time.fromisoformat(start), time.fromisoformat(end)


class Undo(Strict):
    """What paying can still bring back, by how far the ladder went."""

    restore_from_archive: bool = Field(
        True, description="a terminated service is restored from its archive until purge"
    )
    same_ip_within_quarantine: bool = True
    reprovision_after_purge: Literal["manual", "automatic"] = Field(
        "manual",
        description="a payment dated before a purge that already ran: a fresh machine at "
        "once (automatic), or only when an operator asks (manual)",
    )
    clause: str | None = None


class Activation(Strict):
    """When a new service is first provisioned."""

    when: Literal["on_create", "after_first_payment"]
    clause: str = Field(min_length=3)


class Reversal(Strict):
    """A payment taken back reopens its invoice with its original due date; no step of
    the ladder runs before this grace has passed since the reversal."""

    grace: OffsetField
    clause: str = Field(min_length=3)


class DepositRules(Strict):
    """Reminders as the prepaid deposit runs down, in percent of the monthly bill.

    The ``deposit_exhausted`` ladder starts when the balance can no longer
    cover the next period's charge (or is empty); a top-up ends it.
    """

    reminders: list[int] = Field(min_length=1, description="percent of the monthly bill")
    clause: str = Field(min_length=3)

    @field_validator("reminders")
    @classmethod
    def _percentages(cls, reminders: list[int]) -> list[int]:
        if any(not 0 < r <= 100 for r in reminders) or len(set(reminders)) != len(reminders):
            raise ValueError("reminders are distinct percentages between 1 and 100")
        return sorted(reminders, reverse=True)


class Product(Strict):
    ladders: list[Ladder] = Field(min_length=1)
    backups: Backups
    ip_quarantine: OffsetField = Field(description="how long a reclaimed IP rests before reuse")
    undo: Undo = Undo()
    activation: Activation | None = Field(None, description="default: provisioned on create")
    reversal: Reversal | None = Field(None, description="default: no grace after a reversal")
    deposit: DepositRules | None = None

    @field_validator("ladders")
    @classmethod
    def _one_ladder_per_anchor(cls, ladders: list[Ladder]) -> list[Ladder]:
        anchors = [ladder.anchor for ladder in ladders]
        if len(anchors) != len(set(anchors)):
            raise ValueError("two ladders share an anchor; merge their steps")
        return ladders


class HoldKind(Strict):
    owner: ReasonOwner
    blocks: list[StepKind] = Field(description="steps that may not run while the hold lasts")
    suspends: bool = Field(False, description="the hold itself suspends the service")
    lasts: OffsetField | None = Field(None, description="how long, when the terms fix it")
    clause: str = Field(min_length=3)

    @model_validator(mode="after")
    def _legal_keeps_the_data(self) -> HoldKind:
        keeps_data = all(s in self.blocks for s in StepKind if s.takes_data)
        if self.owner == ReasonOwner.LEGAL and not keeps_data:
            raise ValueError("a legal hold must block terminate, purge and hand_over")
        return self


# Held by the orchestrator itself while a payment it could not match stands in
# review: nothing destructive runs for that service until an operator resolves it.
REVIEW_HOLD = "review"
BUILTIN_HOLDS = {
    REVIEW_HOLD: HoldKind(
        owner=ReasonOwner.BILLING,
        blocks=[s for s in StepKind if s.destructive],
        clause="an unmatched payment is under review (orchestrator)",
    )
}


class AbuseRung(Strict):
    strike: int = Field(ge=1, description="the n-th report of this kind")
    action: Literal["suspend", "terminate"]
    lasts: OffsetField | None = Field(None, description="for suspend: how long")
    clause: str = Field(min_length=3)

    @model_validator(mode="after")
    def _suspension_has_length(self) -> AbuseRung:
        if self.action == "suspend" and self.lasts is None:
            raise ValueError("an abuse suspension needs its length ('lasts')")
        return self


class CalendarSpec(Strict):
    holidays: str = Field("ID", description="country code of the public holidays")
    weekend: list[int] = Field([5, 6], description="weekday numbers, Monday is 0")

    def work_calendar(self) -> WorkCalendar:
        return WorkCalendar(self.holidays, tuple(self.weekend))


class Policy(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    provider: str
    terms: str = Field(description="the terms-of-service file this policy encodes")
    timezone: str = "Asia/Jakarta"
    calendar: CalendarSpec = CalendarSpec()
    products: dict[ProductKind, Product] = Field(min_length=1)
    holds: dict[str, HoldKind] = {}
    abuse: dict[str, list[AbuseRung]] = {}

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r}") from exc
        return zone

    @field_validator("holds")
    @classmethod
    def _no_builtin_names(cls, holds: dict[str, HoldKind]) -> dict[str, HoldKind]:
        if taken := set(holds) & set(BUILTIN_HOLDS):
            raise ValueError(f"hold kind {', '.join(sorted(taken))} is the orchestrator's own")
        return holds

    @model_validator(mode="after")
    def _ladders_in_order(self) -> Policy:
        work = self.calendar.work_calendar()
        for kind, product in self.products.items():
            for ladder in product.ladders:
                if (why := ladder.out_of_order(work)) is not None:
                    raise ValueError(f"products.{kind}: {ladder.anchor} ladder: {why}")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def hold_kind(self, name: str) -> HoldKind | None:
        return self.holds.get(name) or BUILTIN_HOLDS.get(name)

    def product(self, kind: ProductKind) -> Product:
        if kind not in self.products:
            raise PolicyError(f"policy {self.name} has no rules for {kind}")
        return self.products[kind]


def load_policy(path: Path) -> Policy:
    """Read and validate one policy file; raise PolicyError naming every problem."""
    return load_yaml_model(path, Policy)


def load_policies(directory: Path) -> dict[str, Policy]:
    policies: dict[str, Policy] = {}
    for path in sorted(directory.glob("*.yaml")):
        policy = load_policy(path)
        if policy.name in policies:
            raise PolicyError(f"{path}: policy name {policy.name!r} is used twice")
        policies[policy.name] = policy
    return policies


def policy_schema() -> dict[str, Any]:
    return Policy.model_json_schema()
