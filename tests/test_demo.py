"""The README's demo: two months of the five policies, checked against their timelines."""

from pathlib import Path

from sqlalchemy import select

from orchestrator.demo import run_demo
from orchestrator.store.db import open_engine
from orchestrator.store.models import StepRow
from tests.conftest import REPO


def test_demo_lives_through_two_months_and_matches_the_policies(tmp_path: Path) -> None:
    assert run_demo(tmp_path / "demo", REPO / "inventory" / "policies", hypervisor="test") == 0
    engine = open_engine(f"sqlite:///{tmp_path / 'demo' / 'demo.db'}")
    with engine.connect() as connection:
        done = connection.execute(
            select(StepRow.service_id, StepRow.kind).where(StepRow.state == "done")
        ).all()
    kinds = {kind for _, kind in done}
    assert {"create", "suspend", "resume", "reclaim_ips", "terminate", "restore", "purge"} <= kinds
    # Klikserver keeps an archive: paying after termination restores it.
    assert ("klikserver-kvm-vps-very-late", "restore") in done
    # cybernet purges at termination: paying afterwards brings nothing back.
    cybernet = [kind for service, kind in done if service == "cybernet-kvm-vps-very-late"]
    assert cybernet[-1] == "purge" and "restore" not in cybernet
