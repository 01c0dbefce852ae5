"""A ladder's destructive steps run in its order whatever an operator approves and when.

The property behind "an automatic purge never overtakes a terminate that awaits
approval": random approval settings for each rung of Klikserver's VPS ladder,
random ticks (some with ``--yes``), sometimes a payment, all through the
engine on libvirt's test hypervisor. Whatever happens, a destructive step is
never done before a rung that comes earlier in its ladder (a late tick may
skip a rung a later one makes moot, never the archive before a purge), and a rung the
policy does not make automatic is done only by a tick that said ``--yes``.
Once the customer has paid, no destructive step runs at all, even where the
payment came after a step's date (this found a purge of a customer who paid
after the purge's date, before it ran, with its approval skipped).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from orchestrator.core.events import parse_events
from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.core.steps import LADDER_ORDER, StepKind
from orchestrator.engine import Orchestrator, Settings
from orchestrator.run.guards import BreakerSettings
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import StepRow
from tests.conftest import created, invoice, paid, wib

RUNGS = [k for k in LADDER_ORDER]
DUE = wib(2026, 12, 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    keep = libvirt.open("test:///default")  # the test hypervisor forgets when the last closes
    engine = open_engine(f"sqlite:///{Path(tmp_path_factory.mktemp('ladder')) / 'store.db'}")
    migrate(engine)
    yield engine
    keep.close()


def _with_approvals(policy: Policy, manual: frozenset[StepKind]) -> Policy:
    vps = policy.products["kvm_vps"]
    (ladder,) = vps.ladders
    steps = [
        s.model_copy(update={"automatic": False}) if s.step in manual else s for s in ladder.steps
    ]
    vps = vps.model_copy(update={"ladders": [ladder.model_copy(update={"steps": steps})]})
    return policy.model_copy(update={"products": {**policy.products, "kvm_vps": vps}})


ticks = st.lists(
    st.tuples(st.integers(0, 24 * 30), st.booleans()), min_size=1, max_size=8
).map(sorted)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    manual=st.frozensets(st.sampled_from(RUNGS)),
    moments=ticks,
    payment_hour=st.none() | st.integers(0, 24 * 30),
)
def test_destructive_steps_keep_their_ladder_order(
    store: Engine,
    policies: dict[str, Policy],
    inventory: Inventory,
    manual: frozenset[StepKind],
    moments: list[tuple[int, bool]],
    payment_hour: int | None,
) -> None:
    klik = _with_approvals(policies["klikserver"], manual)
    # Every example shares one store and one December: the blast-radius breaker, which
    # counts destructive steps across services, is not what this property is about.
    settings_ = Settings(breaker=BreakerSettings(min_count=10**9))
    orch = Orchestrator(
        store, {**policies, "klikserver": klik}, inventory, settings_, sleep=lambda _: None
    )
    orch.seed_pools()
    sid = f"o{uuid.uuid4().hex[:10]}"
    history: list[dict[str, Any]] = [created(sid), invoice(sid, "2026-12-01")]
    orch.ingest(parse_events(json.dumps(history)), wib(2026, 11, 20))
    orch.apply(wib(2026, 11, 20, 0, 1))
    done: list[tuple[int, int, str]] = []  # (tick, step id, kind), in the order they ran
    paid_up = False
    for tick, (hours, yes) in enumerate(moments):
        now = DUE + timedelta(hours=hours, minutes=1)
        if payment_hour is not None and payment_hour <= hours:
            at = (DUE + timedelta(hours=payment_hour)).isoformat()
            orch.ingest(parse_events(json.dumps([paid(sid, at)])), now)
            payment_hour, paid_up = None, True
        before = {i for _, i, _ in done}
        orch.apply(now, yes=yes)
        for step_id, kind in _done(orch, sid):
            if step_id not in before:
                done.append((tick, step_id, kind))
                assert yes or kind not in manual, f"{kind} ran without --yes"
                # A customer who has paid loses nothing more, whatever date the ladder
                # had reached: the steps not yet run are no longer warranted.
                assert not (paid_up and kind in RUNGS), f"{kind} ran after the payment"
    ran = [kind for _, _, kind in sorted(done) if kind in RUNGS]
    positions = [RUNGS.index(StepKind(kind)) for kind in ran]
    assert positions == sorted(positions), ran
    # A tick that comes late may skip a rung a later one makes moot (no suspend before a
    # terminate), but the archive is never skipped: the machine existed, so it was
    # archived before its data was purged.
    if StepKind.PURGE in ran:
        assert StepKind.TERMINATE in ran[: ran.index(StepKind.PURGE)], ran


def _done(orch: Orchestrator, sid: str) -> list[tuple[int, str]]:
    with orch.sessions() as session:
        rows = session.execute(
            select(StepRow.id, StepRow.kind)
            .where(StepRow.service_id == sid, StepRow.state == "done")
            .order_by(StepRow.id)
        )
        return [(int(i), str(k)) for i, k in rows]
