"""IP addresses on the wire, and colocation suspended at its port, on the lab's real router.

The network comes up through ``lab/net.sh up`` (idempotent): a router
namespace with a real sshd, customer namespaces behind its ports
cport1-3, an "internet" namespace. The orchestrator drives it through its
own plan/apply at simulated times with the klikserver policy (suspend on
day 5, reclaim on day 8, 30 days of quarantine); its router driver runs
the real playbooks through ansible-runner. Real traffic judges: ping from
olab-inet, and a responder in each customer namespace that answers with
the namespace's name, so that when two customers carry the same address
only routing decides who answers. Port states are read with ``ip -n
olab-rtr``, never through the driver under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from drivers.ansible import AnsibleRunner
from drivers.base import PermanentError, ServiceRef, Uplink
from drivers.colo import ColoCompute
from drivers.ssh import SshTarget
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator
from orchestrator.engine.wiring import network_driver
from orchestrator.secrets.credentials import resolve
from orchestrator.state import ipam
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import StepRow
from tests.conftest import REPO, created, events, invoice, paid, wib
from tests.lab.conftest import LAB_DIR
from tests.lab.test_dedicated_lab import _key_lines

ROUTER = "olab-rtr"
SHARED = "203.0.113.10"  # rack-a's only address
RESPONDER_PORT = 7007
RESPONDER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[2])))
server.listen(8)
while True:
    connection, _ = server.accept()
    connection.sendall(sys.argv[1].encode())
    connection.close()
"""
ASK = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        print(s.recv(100).decode())
except OSError:
    pass
"""


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def reset_router() -> None:
    """Every port up, undescribed, carrying nothing: as the lab makes them."""
    for n in (1, 2, 3):
        sh("ip", "-n", ROUTER, "link", "set", f"cport{n}", "up")
        sh("ip", "-n", ROUTER, "link", "set", f"cport{n}", "alias", "")
        sh("ip", "-n", ROUTER, "route", "flush", "dev", f"cport{n}")
    for name in ("routed4", "routed6"):
        sh("ip", "netns", "exec", ROUTER, "nft", "flush", "set", "inet", "orchestrator", name)


@pytest.fixture(scope="module")
def net() -> Iterator[Inventory]:
    """Up, or, when an earlier run left a half-made lab behind, swept and up again."""
    script = str(REPO / "lab" / "net.sh")
    up = subprocess.run(["bash", script, "up", "3"], capture_output=True, text=True)
    if up.returncode != 0:
        subprocess.run(["bash", script, "down"], capture_output=True, check=True)
        up = subprocess.run(["bash", script, "up", "3"], capture_output=True, text=True)
    assert up.returncode == 0, f"lab/net.sh up 3 failed:\n{up.stdout}{up.stderr}"
    reset_router()
    responders = [
        subprocess.Popen(
            ["ip", "netns", "exec", f"olab-cust{n}", sys.executable, "-c", RESPONDER,
             f"olab-cust{n}", str(RESPONDER_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for n in (1, 2, 3)
    ]
    yield load_inventory(REPO / "inventory" / "lab-net.yaml")
    for process in responders:
        process.kill()
        process.wait()
    for n in (1, 2, 3):
        sh("ip", "-n", f"olab-cust{n}", "addr", "flush", "dev", "eth0")
    reset_router()


@pytest.fixture(scope="module")
def stores() -> list[Orchestrator]:
    """Every orchestrator of the module, for the secrets search at its end."""
    return []


def orchestrator_on(
    net: Inventory,
    policies: dict[str, Policy],
    tmp_path_factory: pytest.TempPathFactory,
    stores: list[Orchestrator],
) -> Orchestrator:
    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('net') / 'net.db'}")
    migrate(engine)
    orchestrator = Orchestrator(engine, policies, net, sleep=lambda _: None)
    orchestrator.seed_pools()
    stores.append(orchestrator)
    return orchestrator


def give_address(customer: int, address: str) -> None:
    """The customer's box carries the address; whether it is reached is the router's doing."""
    sh("ip", "-n", f"olab-cust{customer}", "addr", "replace", f"{address}/32", "dev", "eth0")


def reachable(address: str) -> bool:
    return sh("ip", "netns", "exec", "olab-inet", "ping", "-c1", "-W1", address).returncode == 0


def who_answers(address: str) -> str:
    """The name of the customer namespace whose responder answered from the internet, or ''."""
    asked = sh(
        "ip", "netns", "exec", "olab-inet", sys.executable, "-c", ASK, address, str(RESPONDER_PORT)
    )
    return asked.stdout.strip()


def port_is_up(port: str) -> bool:
    [link] = json.loads(sh("ip", "-n", ROUTER, "-j", "link", "show", port).stdout)
    return "UP" in link["flags"]


def routes_on(port: str) -> list[str]:
    listed = json.loads(sh("ip", "-n", ROUTER, "-j", "route", "show", "dev", port).stdout)
    return [route["dst"] for route in listed]


def held(orch: Orchestrator, service: str) -> tuple[str, ...]:
    with orch.sessions() as session:
        return ipam.held_by(session, service)


def steps(orch: Orchestrator, service: str) -> list[tuple[str, str]]:
    with orch.sessions() as session:
        rows = session.scalars(
            select(StepRow).where(StepRow.service_id == service).order_by(StepRow.id)
        )
        return [(r.kind, r.state) for r in rows]


def test_a_reclaimed_address_leaves_the_wire_comes_back_on_payment_and_goes_to_the_next(
    net: Inventory,
    policies: dict[str, Policy],
    tmp_path_factory: pytest.TempPathFactory,
    stores: list[Orchestrator],
) -> None:
    orch = orchestrator_on(net, policies, tmp_path_factory, stores)
    give_address(1, SHARED)
    give_address(2, SHARED)
    first, second = f"w{uuid.uuid4().hex[:7]}", f"x{uuid.uuid4().hex[:7]}"
    orch.ingest(
        events(created(first, host="hv-net-1"), invoice(first, "2026-12-01")), wib(2026, 11, 20)
    )
    report = orch.apply(wib(2026, 11, 20, 0, 1))
    assert held(orch, first) == (SHARED,), report
    assert reachable(SHARED) and who_answers(SHARED) == "olab-cust1"

    orch.apply(wib(2026, 12, 8, 23, 59))  # suspended on day 5, the address still routed
    assert who_answers(SHARED) == "olab-cust1"

    orch.apply(wib(2026, 12, 9, 0, 1))  # day 8: reclaimed
    assert ("reclaim_ips", "done") in steps(orch, first)
    assert not reachable(SHARED) and who_answers(SHARED) == ""
    assert routes_on("cport1") == []

    orch.ingest(events(paid(first, "2026-12-10T10:00:00+07:00")), wib(2026, 12, 10, 10))
    orch.apply(wib(2026, 12, 10, 10, 1))  # paid within quarantine: the same address
    assert held(orch, first) == (SHARED,)
    assert reachable(SHARED) and who_answers(SHARED) == "olab-cust1"

    orch.ingest(
        events(invoice(first, "2027-01-01", "inv-2", at="2026-12-15T10:00:00+07:00")),
        wib(2026, 12, 15, 10),
    )
    orch.apply(wib(2027, 1, 9, 0, 1))  # unpaid again: reclaimed on day 8, until 8 February
    assert not reachable(SHARED)

    orch.ingest(events(created(second, host="hv-net-2")), wib(2027, 1, 10))
    orch.apply(wib(2027, 1, 10, 0, 1))  # the only address rests for the first customer
    assert held(orch, second) == () and not reachable(SHARED)
    assert ("assign_ips", "retry") in steps(orch, second)

    orch.apply(wib(2027, 2, 8, 1, 0), yes=True)  # the quarantine is over: the next customer's
    assert held(orch, second) == (SHARED,) and held(orch, first) == ()
    assert reachable(SHARED) and who_answers(SHARED) == "olab-cust2"
    assert routes_on("cport1") == [] and routes_on("cport2") == [SHARED]


def test_a_colocated_box_loses_its_port_on_the_suspend_day_and_gets_it_back_when_paid(
    net: Inventory,
    policies: dict[str, Policy],
    tmp_path_factory: pytest.TempPathFactory,
    stores: list[Orchestrator],
) -> None:
    orch = orchestrator_on(net, policies, tmp_path_factory, stores)
    sid = f"c{uuid.uuid4().hex[:7]}"
    orch.ingest(
        events(created(sid, product="colocation", host="colo-net-3"), invoice(sid, "2026-12-01")),
        wib(2026, 11, 20),
    )
    orch.apply(wib(2026, 11, 20, 0, 1))
    [address] = held(orch, sid)
    give_address(3, address)
    assert port_is_up("cport3") and who_answers(address) == "olab-cust3"

    orch.apply(wib(2026, 12, 5, 23, 59))  # day 4: nothing yet
    assert port_is_up("cport3") and reachable(address)

    orch.apply(wib(2026, 12, 6, 0, 1))  # day 5: the port goes down
    assert not port_is_up("cport3") and not reachable(address)
    assert ("suspend", "done") in steps(orch, sid)

    orch.ingest(events(paid(sid, "2026-12-07T09:00:00+07:00")), wib(2026, 12, 7, 9))
    orch.apply(wib(2026, 12, 7, 9, 1))
    assert port_is_up("cport3") and who_answers(address) == "olab-cust3"
    assert ("resume", "done") in steps(orch, sid)


def test_the_route_playbook_changes_only_what_differs(net: Inventory) -> None:
    """Run twice with the same addresses, ansible reports a change once; then it takes them off."""
    options = net.routers["rtr-lab-1"].options
    target = SshTarget(
        options["address"], "root", resolve(options["ssh_key"], what="ssh key"),
        known_hosts=Path(options["known_hosts"]),
    )
    runner = AnsibleRunner({"rtr-lab-1": target}, LAB_DIR / "runs")
    task = "Route exactly these addresses to the port"
    wanted = {"port": "cport2", "addresses": ["203.0.113.40", "203.0.113.41"]}
    first = runner.run("rtr-lab-1", "route-addresses", wanted)
    again = runner.run("rtr-lab-1", "route-addresses", wanted)
    assert first.evidence["results"][task]["changed"] is True
    assert again.evidence["results"][task]["changed"] is False
    assert sorted(routes_on("cport2")) == wanted["addresses"]
    emptied = runner.run("rtr-lab-1", "route-addresses", {"port": "cport2", "addresses": []})
    assert emptied.evidence["results"][task]["removed"] == wanted["addresses"]
    assert routes_on("cport2") == []
    with pytest.raises(PermanentError, match="no port cport9"):
        runner.run("rtr-lab-1", "route-addresses", {"port": "cport9", "addresses": []})


def test_colocated_hardware_is_never_purged(net: Inventory) -> None:
    router = network_driver("rtr-lab-1", net.routers["rtr-lab-1"])  # as the loader makes it
    box = ColoCompute(uplink=Uplink(router, "rtr-lab-1", "cport3"))
    with pytest.raises(PermanentError, match="never wiped"):
        box.purge(ServiceRef("c-purge", "colo-net-3"))
    assert port_is_up("cport3")


def test_no_secret_of_the_lab_is_in_the_journal_or_the_playbook_runs(
    stores: list[Orchestrator],
) -> None:
    """The SSH key reached the router through ssh-agent: no record or artifact holds it."""
    secrets = _key_lines(LAB_DIR / "secrets" / "orchestrator_ed25519")
    corpus: list[str] = []
    for orch in stores:
        with orch.sessions() as session:
            for table in ("steps", "audit", "notifications"):
                rows = session.execute(text(f"SELECT * FROM {table}"))
                corpus += [repr(tuple(row)) for row in rows]
    runs = [d for d in (LAB_DIR / "runs").glob("*-rtr-lab-1-*") if d.is_dir()]
    for path in (p for run in runs for p in run.rglob("*")):
        if path.is_file():
            corpus.append(path.read_text(errors="replace"))
    assert len(stores) == 2 and runs and len(corpus) > 20
    assert not [s[:4] for s in secrets if any(s in item for item in corpus)]
