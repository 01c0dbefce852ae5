"""The demo: ten weeks of a few customers of each of the five policies.

For every policy and product it sells, four customers: one who pays on
time, one who pays after the suspension, one who pays after termination
(days 6 and 11 after the due date), and one who never pays.
A simulated clock ticks from late November 2026 into February 2027; billing
events arrive on their days, and ``apply`` runs the due steps.

It tells its story while it runs, because on the real lab it takes minutes:
first which product runs on which host, driver and peer (a hypervisor may
stand in for a Proxmox cluster, a dedicated box or a colocation port, and
the demo says so, with the suspend method that really ran), then a line per
simulated day with the steps applied (on a terminal also a live bar), and at
the end a story per policy, one line per customer, read back from the
journal. ``verbose`` adds the whole journal as a table; ``as_json`` prints
everything as one JSON document on stdout and the progress on stderr.
Each never-paying customer's suspend, reclaim, terminate and purge days are
checked against the policy's own timeline: the demo exits non-zero if any
differs.
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
from rich.markup import escape

from drivers.base import DriverError, ServiceRef
from orchestrator.core.events import parse_events
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.lifecycle import Entry, lifecycle
from orchestrator.core.policy import Anchor, Policy, ProductKind, load_policies
from orchestrator.core.steps import StepKind
from orchestrator.engine import Orchestrator, Settings, operations, wiring
from orchestrator.faces.demo_report import (
    SHOWN_EVENTS,
    DayProgress,
    Output,
    Peer,
    Report,
    print_json,
    print_peers,
    print_story,
    word,
)
from orchestrator.faces.demo_report import output as make_output
from orchestrator.run.actions import suspend_method
from orchestrator.run.guards import BreakerSettings

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
HYPERVISORS = ("lab", "test", "auto")
INVENTORIES = Path(__file__).resolve().parents[2] / "inventory"
CHECKED = (StepKind.SUSPEND, StepKind.RECLAIM_IPS, StepKind.TERMINATE, StepKind.PURGE)
HOSTS = {
    ProductKind.KVM_VPS: "kvm-jkt-1",
    ProductKind.PROXMOX_VPS: "kvm-jkt-2",
    ProductKind.DEDICATED: "metal-jkt-1",
    ProductKind.COLOCATION: "metal-jkt-1",
}
# The driver each product is sold on; any other driver on its host stands in.
NATIVE_DRIVERS = {
    ProductKind.KVM_VPS: "libvirt",
    ProductKind.PROXMOX_VPS: "proxmox",
    ProductKind.DEDICATED: "ipmi",
    ProductKind.COLOCATION: "colo",
}
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
    workdir: Path,
    policies_dir: Path,
    as_json: bool = False,
    hypervisor: str = "auto",
    verbose: bool = False,
    output: Output | None = None,
) -> int:
    """``hypervisor``: "lab" (a real libvirtd), "test" (libvirt's test driver), or "auto"."""
    out = output or make_output(as_json)
    policies = load_policies(policies_dir)
    customers = _customers(policies)
    out.progress.print(
        f"demo: ten weeks of {len(customers)} services of {len(policies)} policies, "
        f"{START} to {END}; finding a hypervisor",
        highlight=False,
    )
    zone = next(iter(policies.values())).zone
    # The display starts before anything slow (probing the lab, creating the store).
    with DayProgress(out.progress, START, (END - START).days + 1, zone) as progress:
        progress.note("finding a hypervisor")
        inventory, where = _inventory(hypervisor)
        progress.note("creating the demo's store")
        orchestrator = _fresh_orchestrator(workdir, policies, inventory)
        peers = _peers(orchestrator, policies)
        _announce(out.progress, where, peers)
        _live(orchestrator, _scenario(customers), zone, progress)
    history = _history(orchestrator)
    mismatches = _check(orchestrator, customers, history)
    report = Report(peers, history, _stories(history, customers), mismatches)
    if as_json:
        print_json(out.result, report)
    else:
        print_story(out.result, report, verbose)
    out.progress.print("removing the demo's machines", highlight=False)
    _remove_guests(orchestrator, customers)
    return 1 if mismatches else 0


def _announce(console: Console, where: str, peers: list[Peer]) -> None:
    console.print(f"running on {escape(where)}", highlight=False)
    console.print(
        f"the breaker trips at {DEMO_BREAKER.min_count} destructive steps an hour here: "
        "a third of these few customers never pay, by design",
        highlight=False,
    )
    print_peers(console, peers)


def _peers(orchestrator: Orchestrator, policies: dict[str, Policy]) -> list[Peer]:
    """Each product's host as the inventory has it, and the suspend methods its driver runs."""
    return [_peer(orchestrator, policies, product, host) for product, host in HOSTS.items()]


def _peer(
    orchestrator: Orchestrator, policies: dict[str, Policy], product: ProductKind, name: str
) -> Peer:
    host = orchestrator.inventory.hosts()[name]
    driver = orchestrator.driver(name)
    native = NATIVE_DRIVERS[product]
    return Peer(
        product.value,
        name,
        host.driver,
        host.uri,
        None if host.driver == native else native,
        {m: suspend_method(driver, m) for m in sorted(_suspend_methods(policies, product))},
    )


def _suspend_methods(policies: dict[str, Policy], product: ProductKind) -> set[str]:
    return {
        str(step.method)
        for policy in policies.values()
        if product in policy.products
        for ladder in policy.products[product].ladders
        for step in ladder.steps
        if step.method is not None
    }


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
            wiring.compute_driver("kvm-jkt-1", host).inspect(ServiceRef("probe", "lab"))
        except DriverError as exc:
            if hypervisor == "lab":
                raise
            reason = f"the lab is not up ({exc}; bash lab/libvirt.sh up starts it)"
        else:
            return lab, f"the real lab: libvirtd at {host.uri}, QEMU guests"
    else:
        reason = "asked for"
    test = load_inventory(INVENTORIES / "lab.yaml")
    return test, f"libvirt's test hypervisor (test:///default, in memory): {reason}"


def _fresh_orchestrator(
    workdir: Path, policies: dict[str, Policy], inventory: Inventory
) -> Orchestrator:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    orchestrator = operations.open_orchestrator(
        f"sqlite:///{workdir / 'demo.db'}",
        policies,
        inventory,
        Settings(breaker=DEMO_BREAKER),
        migrate_store=True,
        check=False,
    )
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


def _live(
    orchestrator: Orchestrator,
    events: dict[date, list[dict[str, Any]]],
    zone: Any,
    progress: DayProgress,
) -> None:
    """As the daemon's minutely tick would, but jumping straight to the next moment due."""
    arrivals = {
        datetime.combine(day, time(10), tzinfo=zone): batch for day, batch in events.items()
    }
    now = datetime.combine(START, time(0), tzinfo=zone)
    end = datetime.combine(END, time(23, 59), tzinfo=zone)
    while now <= end:
        if now in arrivals:
            batch = arrivals.pop(now)
            orchestrator.ingest(parse_events(json.dumps(batch)), now, actor="billing")
            progress.arrived(now, len(batch))
        progress.applying(now)
        progress.applied(now, orchestrator.apply(now, yes=True, actor="demo"))
        upcoming = [m for m in (orchestrator.next_due(), min(arrivals, default=None)) if m]
        if not upcoming:
            return
        now = max(min(upcoming), now + timedelta(minutes=1))


def _history(orchestrator: Orchestrator) -> list[dict[str, Any]]:
    """Billing events (except the set-up) and the steps done, in the order they happened.

    A payment and the steps it caused share a moment; the payment comes first.
    """
    rows = [_line(found) for found in operations.history(orchestrator, list(SHOWN_EVENTS))]
    return sorted(rows, key=lambda r: (r["at"], r["service"]))


def _line(found: dict[str, Any]) -> dict[str, Any]:
    """``method`` is what the policy asked for, ``ran`` what the driver did (a stand-in differs)."""
    at: datetime = found["at"]
    line = {"at": at.isoformat(), "day": _local_day(at), "service": found["service"]}
    if "event" in found:
        billing = f"billing: {found['event']}"
        return line | {"action": billing, "why": "", "method": None, "ran": None}
    method = found["params"].get("method")
    return line | {
        "action": found["step"],
        "why": found["params"].get("why", ""),
        "method": method,
        "ran": found["result"].get("method") if method else None,
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


def _stories(
    history: list[dict[str, Any]], customers: list[Customer]
) -> dict[str, list[dict[str, Any]]]:
    """Per policy, one entry per customer: each day something happened after set-up, and what."""
    days: dict[str, dict[str, dict[str, None]]] = {}
    for h in history:
        if h["day"] != START.isoformat():
            days.setdefault(h["service"], {}).setdefault(h["day"], {})[word(h)] = None
    stories: dict[str, list[dict[str, Any]]] = {}
    for c in customers:
        happened = days.get(c.service, {})
        stories.setdefault(c.policy.name, []).append(
            {
                "service": c.service,
                "product": c.product.value,
                "story": c.story,
                "days": [{"day": day, "what": list(what)} for day, what in happened.items()],
            }
        )
    return stories


__all__ = ["HYPERVISORS", "Output", "run_demo"]
