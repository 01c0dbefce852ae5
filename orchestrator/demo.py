"""The demo: ten weeks of a few customers of each of the five policies.

For every policy and product it sells, four customers: one who pays on
time, one who pays after the suspension, one who pays after termination
(days 6 and 11 after the due date), and one who never pays.
A simulated clock ticks from late November 2026 into February 2027; billing
events arrive on their days, and ``apply`` runs the due steps on libvirt's
test hypervisor. The history printed at the end is read back from the
journal, and each never-paying customer's suspend, reclaim, terminate and
purge days are checked against the policy's own timeline: the demo exits
non-zero if any differs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from drivers.base import DriverError, ServiceRef, load_compute
from orchestrator.engine import Orchestrator, Settings
from orchestrator.events import parse_events
from orchestrator.guards import BreakerSettings
from orchestrator.inventory import Inventory, load_inventory
from orchestrator.lifecycle import Entry, lifecycle
from orchestrator.policy import Anchor, Policy, ProductKind, StepKind, load_policies
from orchestrator.store.db import migrate, open_engine
from orchestrator.store.models import EventRow, StepRow

# Ten weeks: December and January, and far enough into February for the
# latest purge of the five policies (Cloudmatika, 66 days after the due date).
START, END = date(2026, 11, 25), date(2027, 2, 7)
DUE = date(2026, 12, 1)
# Who pays when: before the due date, after the suspension, after termination.
PAYS_AFTER_DUE = {
    "on_time": timedelta(days=-2),
    "late": timedelta(days=6),
    "very_late": timedelta(days=11),
}
STORIES = (*PAYS_AFTER_DUE, "never")
CLOSED = date(2026, 12, 20)  # never-payers whose policy has a closure ladder close then
WIB = ZoneInfo("Asia/Jakarta")
INVENTORIES = Path(__file__).resolve().parents[1] / "inventory"
SHOWN_EVENTS = ("invoice.paid", "service.renewed", "deposit.changed", "service.cancelled")
CHECKED = (StepKind.SUSPEND, StepKind.RECLAIM_IPS, StepKind.TERMINATE, StepKind.PURGE)
HOSTS = {
    ProductKind.KVM_VPS: "kvm-jkt-1",
    ProductKind.PROXMOX_VPS: "kvm-jkt-2",
    ProductKind.DEDICATED: "metal-jkt-1",
    ProductKind.COLOCATION: "metal-jkt-1",
}
console = Console(width=160)
# A third of the demo's few customers never pay, by design; at the default
# threshold the breaker would (rightly) stop the mass suspension on 6 December.
DEMO_BREAKER = BreakerSettings(max_share=0.2, min_count=100)


@dataclass(frozen=True)
class Customer:
    service: str
    policy: Policy
    product: ProductKind
    story: str  # one of STORIES


def run_demo(
    workdir: Path, policies_dir: Path, as_json: bool = False, hypervisor: str = "auto"
) -> int:
    """``hypervisor``: "lab" (a real libvirtd), "test" (libvirt's test driver), or "auto"."""
    policies = load_policies(policies_dir)
    inventory, where = _inventory(hypervisor)
    orchestrator = _fresh_orchestrator(workdir, policies, inventory)
    customers = _customers(policies)
    zone = next(iter(policies.values())).zone
    events = _scenario(customers)
    console.print(
        f"demo: {len(customers)} services of {len(policies)} policies on {where}. The breaker "
        f"trips at {DEMO_BREAKER.min_count} destructive steps an hour here: a third of these "
        "few customers never pay, by design"
    )
    _live(orchestrator, events, zone)
    history = _history(orchestrator)
    mismatches = _check(orchestrator, customers, history)
    _print(history, mismatches, as_json)
    _remove_guests(orchestrator, customers)
    return 1 if mismatches else 0


def _remove_guests(orchestrator: Orchestrator, customers: list[Customer]) -> None:
    """The demo leaves no machines behind on a real hypervisor."""
    for customer in customers:
        host = HOSTS[customer.product]
        orchestrator.driver(host).purge(ServiceRef(customer.service, host))


def _inventory(hypervisor: str) -> tuple[Inventory, str]:
    """The real lab when it answers (or is asked for), else the test hypervisor; says which."""
    lab = load_inventory(INVENTORIES / "lab-libvirt.yaml")
    if hypervisor != "test":
        host = lab.hosts()["kvm-jkt-1"]
        try:
            load_compute(host.driver, uri=host.uri, **host.options).inspect(
                ServiceRef("probe", "lab")
            )
        except DriverError as exc:
            if hypervisor == "lab":
                raise
            reason = f"the lab is not up ({exc}; bash lab/libvirt.sh up starts it)"
        else:
            return lab, f"the real lab: libvirtd at {host.uri}, QEMU guests"
    else:
        reason = "asked for"
    test = load_inventory(INVENTORIES / "lab.yaml")
    return test, f"libvirt's test hypervisor (test:///default): {reason}"


def _fresh_orchestrator(
    workdir: Path, policies: dict[str, Policy], inventory: Inventory
) -> Orchestrator:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    engine = open_engine(f"sqlite:///{workdir / 'demo.db'}")
    migrate(engine)
    orchestrator = Orchestrator(engine, policies, inventory, Settings(breaker=DEMO_BREAKER))
    orchestrator.seed_pools()
    return orchestrator


def _customers(policies: dict[str, Policy]) -> list[Customer]:
    return [
        Customer(f"{policy.name}-{product.value}-{story}".replace("_", "-"), policy, product, story)
        for policy in policies.values()
        for product in policy.products
        for story in STORIES
    ]


def _scenario(customers: list[Customer]) -> dict[date, list[dict[str, Any]]]:
    by_day: dict[date, list[dict[str, Any]]] = {}
    for customer in customers:
        for day, data in _story(customer):
            event = {
                "id": f"{customer.service}-{len(by_day.get(day, []))}-{data['type']}-{day}",
                "service": customer.service,
                "data": data,
                "at": datetime.combine(day, time(10), tzinfo=customer.policy.zone).isoformat(),
            }
            by_day.setdefault(day, []).append(event)
    return by_day


def _story(customer: Customer) -> list[tuple[date, dict[str, Any]]]:
    """Events that start each of the product's ladders on DUE, and the payment if any."""
    anchors = {ladder.anchor for ladder in customer.policy.products[customer.product].ladders}
    created: dict[str, Any] = {
        "type": "service.created",
        "customer": customer.service,
        "policy": customer.policy.name,
        "product": customer.product.value,
        "host": HOSTS[customer.product],
        "spec": {"vcpus": 1, "memory_mib": 128, "disk_gib": 1},
    }
    if Anchor.SUBSCRIPTION_END in anchors:
        created["subscription_end"] = DUE.isoformat()
    story: list[tuple[date, dict[str, Any]]] = [(START, created)]
    story += _anchor_events(anchors, customer.story)
    return story


def _anchor_events(anchors: set[Anchor], story: str) -> list[tuple[date, dict[str, Any]]]:
    events: list[tuple[date, dict[str, Any]]] = []
    pay_day = DUE + PAYS_AFTER_DUE.get(story, timedelta(0))
    if Anchor.OLDEST_UNPAID_DUE in anchors:
        events.append(
            (START, {"type": "invoice.issued", "invoice": "inv-dec", "due": DUE.isoformat()})
        )
        if story != "never":
            events.append((pay_day, {"type": "invoice.paid", "invoice": "inv-dec"}))
    if Anchor.SUBSCRIPTION_END in anchors and story != "never":
        events.append((pay_day, {"type": "service.renewed", "until": "2027-12-01"}))
    if Anchor.DEPOSIT_EXHAUSTED in anchors and story != "on_time":
        events.append((DUE, {"type": "deposit.changed", "balance": "0"}))
        if story != "never":
            events.append((pay_day, {"type": "deposit.changed", "balance": "500000"}))
    if Anchor.ACCOUNT_CLOSURE in anchors and story == "never":
        events.append((CLOSED, {"type": "service.cancelled"}))
    return events


def _live(orchestrator: Orchestrator, events: dict[date, list[dict[str, Any]]], zone: Any) -> None:
    """As the daemon's minutely tick would, but jumping straight to the next moment due."""
    arrivals = {
        datetime.combine(day, time(10), tzinfo=zone): batch for day, batch in events.items()
    }
    now = datetime.combine(START, time(0), tzinfo=zone)
    end = datetime.combine(END, time(23, 59), tzinfo=zone)
    while now <= end:
        if now in arrivals:
            orchestrator.ingest(parse_events(json.dumps(arrivals.pop(now))), now, actor="billing")
        orchestrator.apply(now, yes=True, actor="demo")
        upcoming = [m for m in (orchestrator.next_due(), min(arrivals, default=None)) if m]
        if not upcoming:
            return
        now = max(min(upcoming), now + timedelta(minutes=1))


def _history(orchestrator: Orchestrator) -> list[dict[str, Any]]:
    """Billing events (except the set-up) and the steps done, in the order they happened."""
    with orchestrator.sessions() as session:
        steps = session.scalars(select(StepRow).where(StepRow.state == "done"))
        rows = [_step_line(row) for row in steps]
        billing = session.scalars(select(EventRow).where(EventRow.type.in_(SHOWN_EVENTS)))
        rows += [_event_line(row) for row in billing]
    return sorted(rows, key=lambda r: (r["at"], r["service"]))


def _step_line(row: StepRow) -> dict[str, Any]:
    params = json.loads(row.params)
    at = row.started_at or row.created_at
    return {
        "at": at.isoformat(),
        "day": _local_day(at),
        "service": row.service_id,
        "action": row.kind,
        "why": params.get("why", ""),
        "method": params.get("method"),
    }


def _event_line(row: EventRow) -> dict[str, Any]:
    return {
        "at": row.occurred_at.isoformat(),
        "day": _local_day(row.occurred_at),
        "service": row.service_id,
        "action": f"billing: {row.type}",
        "why": "",
        "method": None,
    }


def _local_day(moment: datetime) -> str:
    return moment.astimezone(WIB).date().isoformat()


def _check(
    orchestrator: Orchestrator, customers: list[Customer], history: list[dict[str, Any]]
) -> list[str]:
    """Each never-paying customer's steps happened on the days its policy's timeline gives."""
    problems = []
    for customer in (c for c in customers if c.story == "never"):
        end = datetime.combine(END, time(23), tzinfo=customer.policy.zone)
        verdict = lifecycle(orchestrator.facts(customer.service), customer.policy, end)
        first: dict[StepKind, Entry] = {}
        for entry in verdict.timeline:  # sorted: the first of a kind is when it must happen
            if entry.step in CHECKED and entry.at <= end:
                first.setdefault(entry.step, entry)
        for step, entry in first.items():
            done = _days_done(history, customer.service, step)
            if entry.at.date().isoformat() not in done:
                problems.append(
                    f"{customer.service}: {step} expected {entry.at.date()} "
                    f"({entry.clause}); journal has {done}"
                )
    return problems


def _days_done(history: list[dict[str, Any]], service: str, step: StepKind) -> list[str]:
    return [h["day"] for h in history if h["service"] == service and h["action"] == step.value]


def _print(history: list[dict[str, Any]], problems: list[str], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps({"history": history, "problems": problems}))
        return
    table = Table(title="what happened when (from the journal)")
    for column in ("day", "service", "step", "why"):
        table.add_column(column, overflow="fold")
    for h in history:
        step = f"{h['action']} ({h['method']})" if h["method"] else h["action"]
        table.add_row(h["day"], h["service"], step, h["why"])
    console.print(table)
    console.print(_summary(history))
    for problem in problems:
        console.print(f"[red]MISMATCH[/red] {problem}", highlight=False)
    if not problems:
        console.print(
            "every never-paying customer's suspend, reclaim, terminate and purge days "
            "match its policy's timeline and clause"
        )


def _summary(history: list[dict[str, Any]]) -> Table:
    """The never-paying customers' ladders side by side, one row each."""
    table = Table(title="never-paying customers: the day each step ran")
    table.add_column("service")
    for step in CHECKED:
        table.add_column(step.value)
    services = dict.fromkeys(h["service"] for h in history if h["service"].endswith("-never"))
    for service in sorted(services):
        blank = "never (colocation)" if "-colocation-" in service else "-"
        table.add_row(
            service, *(", ".join(_days_done(history, service, s)) or blank for s in CHECKED)
        )
    return table


__all__ = ["run_demo"]
