"""IP address states, their history and the operator's moves, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.inventory import AllVars, Pool, load_inventory
from orchestrator.core.yamlerrors import PolicyError
from orchestrator.engine import Orchestrator
from orchestrator.state import ipam
from orchestrator.state.db import MIGRATIONS
from orchestrator.state.models import AddressRow
from tests.conftest import REPO, wib

T0 = wib(2026, 12, 1)
OP = ipam.Change(T0, "operator:ana", "abuse report 42")


@pytest.fixture
def sessions(store_engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(store_engine, expire_on_commit=False)


@pytest.fixture
def tiny(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Three free addresses and a reserved gateway."""
    with sessions.begin() as session:
        ipam.seed_pool(
            session, "tiny", ["192.0.2.10", "192.0.2.11", "192.0.2.12"], ["192.0.2.1"]
        )
    return sessions


def _in(sessions: sessionmaker[Session], work: Callable[[Session], Any]) -> Any:
    with sessions.begin() as session:
        return work(session)


def _states(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session:
        return {r.address: r.state for r in session.scalars(select(AddressRow))}


def _moves(sessions: sessionmaker[Session], address: str) -> list[tuple[str, str, str]]:
    with sessions() as session:
        view = ipam.show(session, address, T0)
    return [(h.from_state, h.to_state, h.actor) for h in view.history]


# -- seeding ---------------------------------------------------------------------


def test_the_gateway_is_seeded_reserved_and_never_handed_out(tiny: sessionmaker[Session]) -> None:
    assert _states(tiny)["192.0.2.1"] == ipam.RESERVED
    taken = {_in(tiny, lambda s, n=n: ipam.assign(s, "tiny", f"s{n}", T0)) for n in range(3)}
    assert taken == {"192.0.2.10", "192.0.2.11", "192.0.2.12"}
    with pytest.raises(ipam.PoolExhausted):
        _in(tiny, lambda s: ipam.assign(s, "tiny", "s9", T0))


def test_seeding_again_leaves_blocked_and_assigned_alone(tiny: sessionmaker[Session]) -> None:
    _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    _in(tiny, lambda s: ipam.block(s, "192.0.2.11", OP))
    before = _states(tiny)
    added = _in(tiny, lambda s: ipam.seed_pool(s, "tiny", ["192.0.2.10", "192.0.2.11"]))
    assert added == 0 and _states(tiny) == before


def test_the_shipped_inventory_seeds_reserved_rows(orchestrator: Orchestrator) -> None:
    with orchestrator.sessions() as session:
        reserved = ipam.listing(session, T0, state=ipam.RESERVED)
        free = ipam.listing(session, T0, pool="lab-v4", state=ipam.FREE)
    assert [v.address for v in reserved] == ["198.51.100.1", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert len(free) == 251


# -- allocation ------------------------------------------------------------------


def test_least_recently_used_first_and_never_used_before_all(tiny: sessionmaker[Session]) -> None:
    a = _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    b = _in(tiny, lambda s: ipam.assign(s, "tiny", "s2", T0 + timedelta(hours=1)))
    _in(tiny, lambda s: ipam.reclaim(s, "s2", T0 + timedelta(days=1), T0 + timedelta(hours=2)))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=1), T0 + timedelta(hours=3)))
    later = T0 + timedelta(days=2)
    order = [_in(tiny, lambda s, n=n: ipam.assign(s, "tiny", f"n{n}", later)) for n in range(3)]
    assert order == ["192.0.2.12", b, a]


def test_quarantine_blocked_and_reserved_are_never_handed_out(tiny: sessionmaker[Session]) -> None:
    _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=30), T0))
    _in(tiny, lambda s: ipam.block(s, "192.0.2.11", OP))
    assert _in(tiny, lambda s: ipam.assign(s, "tiny", "s2", T0)) == "192.0.2.12"
    with pytest.raises(ipam.PoolExhausted):
        _in(tiny, lambda s: ipam.assign(s, "tiny", "s3", T0 + timedelta(days=29)))
    assert _in(tiny, lambda s: ipam.assign(s, "tiny", "s3", T0 + timedelta(days=30))) == (
        "192.0.2.10"
    )


def test_the_owner_gets_its_address_back_even_after_the_quarantine_if_nobody_took_it(
    tiny: sessionmaker[Session],
) -> None:
    a = _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=1), T0))
    assert _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0 + timedelta(days=9))) == a


# -- history ---------------------------------------------------------------------


def test_every_move_writes_history_with_actor_and_reason(tiny: sessionmaker[Session]) -> None:
    a = _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=30), T0))
    _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0 + timedelta(days=1)))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=30), T0 + timedelta(days=2)))
    _in(tiny, lambda s: ipam.extend(s, a, T0 + timedelta(days=60), OP))
    _in(tiny, lambda s: ipam.block(s, a, OP))
    _in(tiny, lambda s: ipam.unblock(s, a, OP))
    _in(tiny, lambda s: ipam.release(s, a, OP))
    assert _moves(tiny, a) == [
        ("free", "assigned", "orchestrator"),
        ("assigned", "quarantine", "orchestrator"),
        ("quarantine", "assigned", "orchestrator"),
        ("assigned", "quarantine", "orchestrator"),
        ("quarantine", "quarantine", "operator:ana"),
        ("quarantine", "blocked", "operator:ana"),
        ("blocked", "quarantine", "operator:ana"),
        ("quarantine", "free", "operator:ana"),
    ]
    with tiny() as session:
        history = ipam.show(session, a, T0).history
    assert history[2].reason == "given back to its owner" and history[2].service_id == "s1"
    assert history[4].until == T0 + timedelta(days=60) and history[5].reason == "abuse report 42"
    assert {h.service_id for h in history[:7]} == {"s1"}


def test_the_moves_table_covers_every_state() -> None:
    assert {state for move in ipam.MOVES for state in move} == set(ipam.STATES) - {ipam.RESERVED}


# -- the operator's moves --------------------------------------------------------


def test_release_ends_a_quarantine_now(tiny: sessionmaker[Session]) -> None:
    a = _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=30), T0))
    view = _in(tiny, lambda s: ipam.release(s, a, OP))
    assert view.state == ipam.FREE and view.quarantine_until is None
    with pytest.raises(ipam.StateConflict, match="is free, not quarantine"):
        _in(tiny, lambda s: ipam.release(s, a, OP))


def test_extend_moves_the_end_and_refuses_a_past_one(tiny: sessionmaker[Session]) -> None:
    a = _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    with pytest.raises(ipam.StateConflict, match="is assigned, not quarantine"):
        _in(tiny, lambda s: ipam.extend(s, a, T0 + timedelta(days=9), OP))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=1), T0))
    with pytest.raises(ipam.StateConflict, match="has passed; release it instead"):
        _in(tiny, lambda s: ipam.extend(s, a, T0 - timedelta(days=1), OP))
    view = _in(tiny, lambda s: ipam.extend(s, a, T0 + timedelta(days=9), OP))
    assert view.quarantine_until == T0 + timedelta(days=9)
    with pytest.raises(ipam.PoolExhausted):
        for n in range(3):
            _in(tiny, lambda s, n=n: ipam.assign(s, "tiny", f"x{n}", T0 + timedelta(days=5)))


def test_blocking_an_assigned_address_needs_force_and_takes_it(tiny: sessionmaker[Session]) -> None:
    a = _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    with pytest.raises(ipam.StateConflict, match="assigned to s1"):
        _in(tiny, lambda s: ipam.block(s, a, OP))
    assert _states(tiny)[a] == ipam.ASSIGNED
    _in(tiny, lambda s: ipam.block(s, a, OP, force=True))
    with tiny() as session:
        assert ipam.held_by(session, "s1") == ()
        assert ipam.show(session, a, T0).history[-1].service_id == "s1"
    assert _in(tiny, lambda s: ipam.unblock(s, a, OP)).state == ipam.FREE


@pytest.mark.parametrize(
    ("address", "change", "message"),
    [
        ("192.0.2.1", OP, "is reserved"),
        ("192.0.2.10", ipam.Change(T0, "operator:ana", " "), "needs a reason"),
    ],
)
def test_blocks_that_make_no_sense_are_refused(
    tiny: sessionmaker[Session], address: str, change: ipam.Change, message: str
) -> None:
    with pytest.raises(ipam.IpamError, match=message):
        _in(tiny, lambda s: ipam.block(s, address, change))


def test_unblock_resumes_a_quarantine_that_lasts_else_frees(tiny: sessionmaker[Session]) -> None:
    for service, until in (("s1", T0 + timedelta(days=9)), ("s2", T0 + timedelta(hours=1))):
        address = _in(tiny, lambda s, v=service: ipam.assign(s, "tiny", v, T0))
        _in(tiny, lambda s, v=service, u=until: ipam.reclaim(s, v, u, T0))
        _in(tiny, lambda s, a=address: ipam.block(s, a, OP))
    later = ipam.Change(T0 + timedelta(days=1), "operator:ana")
    assert _in(tiny, lambda s: ipam.unblock(s, "192.0.2.10", later)).state == ipam.QUARANTINE
    assert _in(tiny, lambda s: ipam.unblock(s, "192.0.2.11", later)).state == ipam.FREE
    with pytest.raises(ipam.StateConflict, match="is free, not blocked"):
        _in(tiny, lambda s: ipam.unblock(s, "192.0.2.12", later))


@pytest.mark.parametrize(
    ("address", "message"), [("nope", "'nope' is not an IP address"), ("10.9.9.9", "in no pool")]
)
def test_unknown_addresses_are_named(
    tiny: sessionmaker[Session], address: str, message: str
) -> None:
    with pytest.raises(ipam.UnknownAddress, match=message):
        _in(tiny, lambda s: ipam.release(s, address, OP))


def test_listing_filters_by_pool_and_state_as_of_a_moment(tiny: sessionmaker[Session]) -> None:
    _in(tiny, lambda s: ipam.seed_pool(s, "other", ["198.51.100.5"]))
    _in(tiny, lambda s: ipam.assign(s, "tiny", "s1", T0))
    _in(tiny, lambda s: ipam.reclaim(s, "s1", T0 + timedelta(days=1), T0))
    with tiny() as session:
        assert [v.address for v in ipam.listing(session, T0, state="quarantine")] == ["192.0.2.10"]
        free_later = ipam.listing(session, T0 + timedelta(days=1), pool="tiny", state="free")
        assert [v.address for v in free_later] == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
        assert len(ipam.listing(session, T0)) == 5
        with pytest.raises(ipam.IpamError, match="unknown state 'gone'"):
            ipam.listing(session, T0, state="gone")


# -- pools in the inventory ------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"cidr": "192.0.2.1/24"}, "cidr 192.0.2.1/24: 192.0.2.1/24 has host bits set"),
        ({"cidr": "192.0.2.0/24", "gateway": "198.51.100.1"}, "gateway 198.51.100.1 is not in"),
        ({"cidr": "192.0.2.0/24", "reserved": ["192.0.3.1"]}, "reserved 192.0.3.1 is not in"),
        ({"cidr": "192.0.2.0/24", "reserved": ["192.0.2.20-192.0.2.10"]}, "is reversed"),
        ({"cidr": "192.0.2.0/24", "reserved": ["192.0.2.x"]}, "'192.0.2.x' is not an IP"),
        ({"cidr": "2001:db8::/64"}, "give range: \\[first, last\\] or size"),
        ({"cidr": "2001:db8::/64", "range": ["2001:db8::1ff", "2001:db8::100"]}, "reversed"),
        ({"cidr": "2001:db8::/64", "range": ["2001:db9::1", "2001:db9::2"]}, "range 2001:db9::1"),
        ({"cidr": "192.0.2.0/28", "size": 99}, "size 99 is more than the 14 hosts"),
        ({"cidr": "192.0.2.0/28", "size": 2, "range": ["192.0.2.1", "192.0.2.2"]}, "not both"),
        ({"cidr": "192.0.2.0/28", "gatewy": "192.0.2.1"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_pools_are_refused_with_what_is_wrong(pool: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pool.model_validate(pool)


def test_overlapping_pools_are_refused() -> None:
    pools = {"a": {"cidr": "192.0.2.0/24"}, "b": {"cidr": "192.0.2.128/25"}}
    with pytest.raises(ValueError, match=r"pools a \(192.0.2.0/24\) and b \(192.0.2.128/25\)"):
        AllVars.model_validate({"pools": pools})
    AllVars.model_validate({"pools": {**pools, "b": {"cidr": "2001:db8::/120"}}})


def test_an_inventory_error_names_file_line_and_field(tmp_path: Path) -> None:
    text = (REPO / "inventory" / "lab.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    reversed_range = "reserved: [192.0.2.9-192.0.2.3]"
    bad.write_text(text.replace("reserved: [192.0.2.2, 192.0.2.3]", reversed_range))
    with pytest.raises(PolicyError) as caught:
        load_inventory(bad)
    (problem,) = caught.value.problems
    assert problem.field == "all.vars.pools.lab-v4" and problem.line > 1
    assert "reserved range 192.0.2.9-192.0.2.3 is reversed" in problem.message


@pytest.mark.parametrize("name", ["lab.yaml", "lab-libvirt.yaml", "lab-metal.yaml"])
def test_the_shipped_inventories_stay_valid(name: str) -> None:
    assert load_inventory(REPO / "inventory" / name).pools


def test_reserved_ranges_and_a_site() -> None:
    pool = Pool.model_validate(
        {
            "site": "jkt",
            "cidr": "192.0.2.0/28",
            "gateway": "192.0.2.1",
            "reserved": ["192.0.2.2-192.0.2.4", "192.0.2.14"],
        }
    )
    assert pool.site == "jkt"
    assert pool.reserved_addresses() == [f"192.0.2.{n}" for n in (1, 2, 3, 4, 14)]
    assert pool.addresses() == [f"192.0.2.{n}" for n in range(5, 14)]


def test_an_ipv6_pool_seeds_only_its_range(sessions: sessionmaker[Session]) -> None:
    pool = Pool.model_validate(
        {
            "cidr": "2001:db8:0:1::/64",
            "gateway": "2001:db8:0:1::1",
            "range": ["2001:db8:0:1::100", "2001:db8:0:1::1ff"],
            "reserved": ["2001:db8:0:1::100-2001:db8:0:1::10f"],
        }
    )
    assert len(pool.addresses()) == 240 and len(pool.reserved_addresses()) == 16
    with sessions.begin() as session:
        assert ipam.seed_pool(session, "v6", pool.addresses(), pool.reserved_addresses()) == 256
    address = _in(sessions, lambda s: ipam.assign(s, "v6", "s1", T0))
    assert address == "2001:db8:0:1::110"
    view = _in(sessions, lambda s: ipam.show(s, "2001:DB8:0:1:0:0:0:110", T0))
    assert view.address == address and view.service_id == "s1"


def test_size_seeds_the_first_hosts() -> None:
    pool = Pool.model_validate({"cidr": "2001:db8::/64", "size": 4, "gateway": "2001:db8::1"})
    assert pool.addresses() == ["2001:db8::2", "2001:db8::3", "2001:db8::4"]


# -- the migration ---------------------------------------------------------------


def test_migration_0004_keeps_the_addresses_it_finds(store_engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
        connection.execute(
            text("INSERT INTO addresses (address, pool, state) VALUES ('192.0.2.77', 'p', 'free')")
        )
        command.upgrade(config, "head")
    sessions = sessionmaker(store_engine)
    assert _in(sessions, lambda s: ipam.assign(s, "p", "s1", T0)) == "192.0.2.77"
    assert _moves(sessions, "192.0.2.77") == [("free", "assigned", "orchestrator")]
