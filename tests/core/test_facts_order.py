"""Invariant 6: facts are a function of the set of billing events, not of their order.

Any permutation of the same events (billing nodes with skewed clocks, resends,
a queue that reorders) gives the same facts and the same timeline. The suite
runs 10,000 generated event sets; ``--hypothesis-profile=long`` runs more.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.events import parse_events
from orchestrator.core.facts import derive_facts
from orchestrator.core.lifecycle import lifecycle
from orchestrator.core.policy import load_policies
from tests.conftest import REPO, WIB

START = datetime(2026, 11, 1, tzinfo=WIB)
POLICIES = load_policies(REPO / "inventory" / "policies")
INVOICES = ["a", "b", "c"]


_INVOICE = st.sampled_from(INVOICES)
_HOLD = st.sampled_from(["h0", "h1"])
_DUE = st.dates(START.date(), START.date() + timedelta(days=40)).map(str)
# Built once: a strategy made anew for every draw costs more than the test itself.
DATA = st.one_of(
    st.builds(lambda i, d: {"type": "invoice.issued", "invoice": i, "due": d}, _INVOICE, _DUE),
    st.builds(lambda i: {"type": "invoice.paid", "invoice": i}, _INVOICE),
    st.builds(lambda i: {"type": "invoice.reversed", "invoice": i}, _INVOICE),
    st.builds(
        lambda b, m: {"type": "deposit.changed", "balance": str(b), "monthly": "100"}
        | ({"next_charge": str(m)} if m else {}),
        st.integers(-5, 120),
        st.integers(0, 10),
    ),
    st.builds(lambda h: {"type": "hold.placed", "hold": h, "kind": "legal"}, _HOLD),
    st.builds(lambda h: {"type": "hold.released", "hold": h}, _HOLD),
    st.just({"type": "admin.suspended"}),
    st.just({"type": "admin.unsuspended"}),
    st.builds(lambda d: {"type": "service.renewed", "until": d}, _DUE),
)


@st.composite
def event_sets(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int]]:
    """A service's events with times that may tie or run backwards, and an arrival order."""
    policy = draw(st.sampled_from(sorted(POLICIES)))
    product = draw(st.sampled_from(sorted(POLICIES[policy].products)))
    created = {
        "type": "service.created",
        "customer": "c",
        "policy": policy,
        "product": product,
        "host": "kvm-jkt-1",
    }
    count = draw(st.integers(1, 10))
    datas = [created, *draw(st.lists(DATA, min_size=count, max_size=count))]
    # Few distinct hours, so that ties in time are common.
    hours = [0, *draw(st.lists(st.integers(0, 24 * 40), min_size=count, max_size=count))]
    items = [
        {"id": f"e{n}", "service": "s1", "at": (START + timedelta(hours=h)).isoformat(), "data": d}
        for n, (h, d) in enumerate(zip(hours, datas, strict=True))
    ]
    order = draw(st.permutations(range(len(items))))
    return items, list(order)


@settings(max_examples=max(10_000, settings().max_examples), deadline=None)
@given(case=event_sets(), hours=st.integers(0, 24 * 120))
def test_any_arrival_order_gives_the_same_facts_and_timeline(
    case: tuple[list[dict[str, Any]], list[int]], hours: int
) -> None:
    items, order = case
    now = START + timedelta(hours=hours)
    parsed = parse_events(json.dumps(items))
    as_dated = derive_facts("s1", parsed)
    as_arrived = derive_facts("s1", [parsed[i] for i in order])
    assert as_dated == as_arrived
    policy = POLICIES[as_dated.policy]
    assert lifecycle(as_dated, policy, now).timeline == lifecycle(as_arrived, policy, now).timeline


def test_a_payment_dated_before_its_invoice_settles_it() -> None:
    items = [
        {
            "id": "c",
            "service": "s1",
            "at": "2026-11-01T10:00:00+07:00",
            "data": {
                "type": "service.created",
                "customer": "c",
                "policy": "klikserver",
                "product": "kvm_vps",
                "host": "kvm-jkt-1",
            },
        },
        {
            "id": "i",
            "service": "s1",
            "at": "2026-11-17T10:00:00+07:00",
            "data": {"type": "invoice.issued", "invoice": "inv-1", "due": "2026-12-01"},
        },
        {
            "id": "p",
            "service": "s1",
            "at": "2026-11-17T09:59:00+07:00",
            "data": {"type": "invoice.paid", "invoice": "inv-1"},
        },
    ]
    facts = derive_facts("s1", parse_events(json.dumps(items)))
    assert facts.unpaid == {}
    verdict = lifecycle(facts, POLICIES["klikserver"], datetime(2027, 2, 1, tzinfo=WIB))
    assert verdict.good_standing and verdict.timeline == ()
