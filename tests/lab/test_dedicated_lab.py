"""Dedicated servers in the lab: real IPMI over UDP, real sshd, a real block device.

The boxes come up through ``lab/boxes.sh up`` (idempotent): ipmi_sim BMCs on
127.0.0.1:9101-9102, each box an sshd in its own network namespace with a
loop device for a disk. The orchestrator drives them through its own
plan/apply with the cybernet policy (suspend on day 2, terminate and purge
on day 9); ipmitool and OpenSSH's client, not the driver, judge the result.
The module shares one store so that its last test can search every record
the others produced for the lab's secrets.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner, Result

from drivers.base import PermanentError
from drivers.ssh import SshRunner, SshTarget
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator, Settings
from orchestrator.faces.cli import app
from orchestrator.secrets import evidence
from orchestrator.secrets.credentials import resolve
from orchestrator.state.db import migrate, open_engine
from orchestrator.state.models import StepRow
from tests.conftest import REPO, created, events, invoice, paid, wib
from tests.lab.conftest import LAB_DIR

SECRETS = LAB_DIR / "secrets"
BOXES = LAB_DIR / "boxes"
RUNS = LAB_DIR / "runs"


@pytest.fixture(scope="module")
def boxes() -> Inventory:
    """Up, or, when an earlier run left a half-made lab behind, swept and up again."""
    script = str(REPO / "lab" / "boxes.sh")
    up = subprocess.run(["bash", script, "up", "2"], capture_output=True, text=True)
    if up.returncode != 0:
        subprocess.run(["bash", script, "down"], capture_output=True, check=True)
        up = subprocess.run(["bash", script, "up", "2"], capture_output=True, text=True)
    assert up.returncode == 0, f"lab/boxes.sh up 2 failed:\n{up.stdout}{up.stderr}"
    return load_inventory(REPO / "inventory" / "lab-metal.yaml")


@pytest.fixture(scope="module")
def log_records() -> Iterator[list[logging.LogRecord]]:
    """Every log record of the module, at every level, for the secrets search."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture(scope="module")
def orch(
    boxes: Inventory,
    policies: dict[str, Policy],
    tmp_path_factory: pytest.TempPathFactory,
    log_records: list[logging.LogRecord],
) -> Orchestrator:
    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('metal') / 'metal.db'}")
    migrate(engine)
    settings = Settings(erase_signing_key=f"file:{SECRETS / 'erase-signing.pem'}")
    orchestrator = Orchestrator(engine, policies, boxes, settings)
    orchestrator.seed_pools()
    return orchestrator


@pytest.fixture(scope="module")
def failures() -> list[str]:
    """Error texts the tests saw (driver errors included), for the secrets search."""
    return []


def ipmitool(box: int, *args: str) -> str:
    env = {**os.environ, "IPMI_PASSWORD": (SECRETS / "bmc-password").read_text().strip()}
    result = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(9100 + box),
         "-U", "admin", "-E", *args],
        capture_output=True, text=True, env=env, timeout=30,
    )
    return result.stdout + result.stderr


def ssh_answers(box: int) -> bool:
    """OpenSSH's own client, keys pinned, as an operator would check."""
    result = subprocess.run(
        ["ssh", "-i", str(SECRETS / "orchestrator_ed25519"), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={BOXES / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
         "-o", "ConnectTimeout=3", f"root@10.77.0.{10 + box}", "true"],
        capture_output=True, timeout=30,
    )
    return result.returncode == 0


def on_box(box: int, command: str) -> str:
    result = subprocess.run(
        ["ssh", "-i", str(SECRETS / "orchestrator_ed25519"), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={BOXES / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
         f"root@10.77.0.{10 + box}", command],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return result.stdout


def steps(orch: Orchestrator, service: str) -> list[StepRow]:
    with orch.sessions() as session:
        return list(session.scalars(select(StepRow).where(StepRow.service_id == service)))


def power_off_box(box: int) -> None:
    ipmitool(box, "chassis", "power", "off")
    ipmitool(box, "chassis", "bootdev", "disk", "options=persistent")


def test_an_unpaid_box_is_powered_off_on_its_day_and_back_on_when_paid(
    orch: Orchestrator,
) -> None:
    power_off_box(1)
    sid = f"d{uuid.uuid4().hex[:7]}"
    orch.ingest(
        events(created(sid, "cybernet", "dedicated", host="metal-box-1"),
               invoice(sid, "2026-12-01")),
        wib(2026, 11, 20),
    )
    report = orch.apply(wib(2026, 11, 20, 0, 1))
    assert "Chassis Power is on" in ipmitool(1, "chassis", "power", "status"), report.skipped
    assert ssh_answers(1)

    orch.apply(wib(2026, 12, 2, 23, 59))  # the day before: nothing happens
    assert "Chassis Power is on" in ipmitool(1, "chassis", "power", "status")

    orch.apply(wib(2026, 12, 3, 0, 1))  # day 2 of nonpayment: suspended by power off
    assert "Chassis Power is off" in ipmitool(1, "chassis", "power", "status")
    assert not ssh_answers(1)

    ipmitool(1, "chassis", "power", "on")  # someone powers it on by hand: the sync sees it
    report = operator(orch, "drift", "--at", "2026-12-03T00:30:00+07:00", "--mark", "--json")
    assert report.exit_code == 1
    [drifted] = [d for d in json.loads(report.stdout) if d["service_id"] == sid]
    assert (drifted["observed"], drifted["corrections"]) == ("running", "suspend")
    orch.apply(wib(2026, 12, 3, 0, 31))
    assert "Chassis Power is off" in ipmitool(1, "chassis", "power", "status")

    orch.ingest(events(paid(sid, "2026-12-03T09:00:00+07:00")), wib(2026, 12, 3, 9))
    orch.apply(wib(2026, 12, 3, 9, 1))
    assert "Chassis Power is on" in ipmitool(1, "chassis", "power", "status")
    assert ssh_answers(1)
    kinds = [(s.kind, s.state) for s in steps(orch, sid)]
    assert ("suspend", "done") in kinds and ("resume", "done") in kinds
    power_off_box(1)


def test_a_purge_leaves_nothing_and_yields_a_signed_erase_record(orch: Orchestrator) -> None:
    power_off_box(2)
    sid = f"e{uuid.uuid4().hex[:7]}"
    orch.ingest(
        events(created(sid, "cybernet", "dedicated", host="metal-box-2"),
               invoice(sid, "2026-12-01")),
        wib(2026, 11, 20),
    )
    orch.apply(wib(2026, 11, 20, 0, 1))
    marker = f"CUSTOMER-DATA-{sid}"
    disk = (BOXES / "box2" / "disk").resolve()
    for offset in (0, 1_000_000, 40_000_000, 67_000_000):
        on_box(2, f"printf '{marker}' | dd of={disk} bs=1 seek={offset} conv=notrunc,fsync "
                  "status=none")
    image = BOXES / "box2" / "disk.img"
    assert image.read_bytes().count(marker.encode()) == 4

    orch.apply(wib(2026, 12, 10, 0, 1), yes=True)  # day 9: terminate, then purge

    assert marker.encode() not in image.read_bytes()
    assert "Chassis Power is off" in ipmitool(2, "chassis", "power", "status")
    assert "Force PXE" in ipmitool(2, "chassis", "bootparam", "get", "5")
    purge = next(s for s in steps(orch, sid) if s.kind == "purge")
    assert purge.state == "done", purge.error
    result = json.loads(purge.result or "{}")
    [signed] = result["erase_records"]
    record = signed["record"]
    assert record["method"] == "overwrite" and record["nist_category"] == "clear"
    assert record["result"] == "verified" and record["bytes_written"] == record["bytes"]
    assert record["samples_checked"] >= 64 and record["serial"].endswith("box2/disk.img")
    public_key = evidence.load_public_key(LAB_DIR / "erase-signing.pub")
    assert evidence.verify(signed, public_key)
    forged = {**signed, "record": {**record, "result": "verified", "bytes": record["bytes"] * 2}}
    assert not evidence.verify(forged, public_key)
    assert Path(result["playbook_run"]).is_dir()
    verify = ["erase", "verify", str(purge.id), "--public-key", str(LAB_DIR / "erase-signing.pub")]
    assert operator(orch, *verify).exit_code == 0
    with orch.sessions.begin() as session:  # someone edits the record in the store
        session.get(StepRow, purge.id).result = json.dumps({**result, "erase_records": [forged]})
    refused = operator(orch, *verify, "--json")
    assert refused.exit_code == 1 and json.loads(refused.stdout)[0]["signature"] is False


def operator(orch: Orchestrator, *args: str) -> Result:
    """The operator's CLI on the module's store."""
    url = orch.sessions.kw["bind"].url.render_as_string(hide_password=False)
    return CliRunner().invoke(app, [
        "--db", url, "--policies", str(REPO / "inventory" / "policies"),
        "--inventory", str(REPO / "inventory" / "lab-metal.yaml"), *args,
    ])


def test_a_box_answering_with_another_key_is_refused(
    boxes: Inventory, failures: list[str]
) -> None:
    ipmitool(2, "chassis", "power", "on")
    key = resolve(f"file:{SECRETS / 'orchestrator_ed25519'}", what="ssh key")
    box1_key = (BOXES / "box1" / "ssh_host_ed25519_key.pub").read_text()
    impostor = SshRunner(SshTarget("10.77.0.12", "root", key, host_keys=(box1_key,)))
    with pytest.raises(PermanentError, match="differs from the pinned one") as changed:
        impostor.run("true")
    unknown = SshRunner(SshTarget("10.77.0.12", "root", key, known_hosts=Path("/dev/null")))
    with pytest.raises(PermanentError, match="unknown host key") as never_seen:
        unknown.run("true")
    pinned = SshRunner(SshTarget("10.77.0.12", "root", key, known_hosts=BOXES / "known_hosts"))
    completed = pinned.run("echo out; echo err >&2; exit 3", timeout=30)
    assert (completed.exit_status, completed.stdout, completed.stderr) == (3, "out\n", "err\n")
    failures += [str(changed.value), str(never_seen.value)]
    power_off_box(2)


def test_no_secret_of_the_lab_is_in_any_record(
    orch: Orchestrator, log_records: list[logging.LogRecord], failures: list[str]
) -> None:
    """Journal, audit trail, logs, playbook artifacts, BMC and sshd logs, errors: none has one."""
    secrets = [
        (SECRETS / "bmc-password").read_text().strip(),
        *_key_lines(SECRETS / "orchestrator_ed25519"),
        *_key_lines(SECRETS / "erase-signing.pem"),
    ]
    corpus = [*failures, *(record.getMessage() for record in log_records)]
    with orch.sessions() as session:
        for table in ("steps", "audit", "events", "services", "notifications", "meta"):
            corpus += [repr(tuple(row)) for row in session.execute(text(f"SELECT * FROM {table}"))]
    for path in [*RUNS.rglob("*"), *BOXES.rglob("*.log")]:
        if path.is_file():
            corpus.append(path.read_text(errors="replace"))
    assert len(corpus) > 20  # the other tests left records to search
    found = [s[:4] for s in secrets if any(s in item for item in corpus)]
    assert not found, f"secrets starting {found} leaked"


def _key_lines(path: Path) -> list[str]:
    """The key's base64 lines that hold key material.

    The first body line of an OpenSSH key is the same for every Ed25519 key
    ("openssh-key-v1", no cipher), so it would match any host key too.
    """
    body = [line for line in path.read_text().splitlines() if line and "-----" not in line]
    return body[1:] if "OPENSSH" in path.read_text() else body
