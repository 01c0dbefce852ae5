"""Acceptance test of the Proxmox VE emulator (lab/pve) against the official API schema.

Bad-parameter cases are generated from ``schema-subset.json``: every endpoint is called
with required parameters missing, an unknown parameter, wrong types, out-of-range numbers
and values outside an enumeration, and must answer 400 with exactly the per-parameter
errors PVE's JSONSchema.pm gives. Every happy-path answer is checked against the
endpoint's ``returns``. The rest covers the protocol (401/403/501, tickets and CSRF) and
the behaviours drivers depend on (locks, failed tasks, prune marks).
"""

from __future__ import annotations

import ast
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from lab.pve.harness import PveLab
from lab.pve.schema import (
    MISSING,
    SUBSET,
    UNKNOWN,
    Endpoint,
    Schema,
    check_returns,
    perl_number,
)
from tests.conftest import REPO

SCHEMA = Schema.load()
RAW = json.loads(SUBSET.read_text())["endpoints"]
# Valid values for parameters a generic sample cannot guess (patterns, existing things).
SAMPLES = {"node": "pve1", "vmid": "9000", "newid": "150", "storage": "local",
           "disk": "scsi0", "size": "+1G", "snapname": "s1", "name": "ipfilter-net0",
           "cidr": "192.0.2.10", "username": "root@pam", "password": "x",
           "volume": "local:backup/vzdump-qemu-100-2026_01_01-00_00_00.vma.zst",
           "upid": "UPID:pve1:00000001:00000001:00000001:qmstart:100:root@pam:"}


def endpoint_id(raw: dict[str, Any]) -> str:
    return f"{raw['method']} {raw['path']}"


def properties(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The schema's own parameter names; ``net[n]`` stands for ``net0``."""
    props = raw["parameters"].get("properties") or {}
    return {(k[:-3] + "0" if k.endswith("[n]") else k): v for k, v in props.items()}


def sample(name: str, prop: dict[str, Any]) -> str:
    if name in SAMPLES:
        return SAMPLES[name]
    if prop.get("enum"):
        return str(prop["enum"][0])
    kind = prop.get("type")
    if kind == "boolean":
        return "1"
    if kind in ("integer", "number"):
        return perl_number(max(float(prop.get("minimum", 100)), 100))
    return "abc"


def path_params(raw: dict[str, Any]) -> list[str]:
    return [p[1:-1] for p in raw["path"].split("/") if p.startswith("{")]


def url_for(raw: dict[str, Any], overrides: dict[str, str] | None = None) -> str:
    path = raw["path"]
    for name in path_params(raw):
        value = (overrides or {}).get(name) or sample(name, properties(raw)[name])
        path = path.replace("{" + name + "}", value)
    return path


def required_body(raw: dict[str, Any]) -> dict[str, str]:
    in_path = set(path_params(raw))
    return {n: sample(n, p) for n, p in properties(raw).items()
            if not p.get("optional") and n not in in_path}


def send(pve: PveLab, method: str, path: str, params: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> requests.Response:
    """A raw request with the full token, parameters where proxmoxer puts them."""
    auth = {"Authorization": f"PVEAPIToken={pve.user}!{pve.token_name}={pve.token_secret}"}
    if path == "/access/ticket":  # the login refuses API tokens (allowtoken 0)
        auth = {}
    where = "params" if method in ("GET", "DELETE") else "data"
    return requests.request(method, f"{pve.url}/api2/json{path}", verify=str(pve.verify),
                            headers={**auth, **(headers or {})}, timeout=10,
                            **{where: params or {}})


def refused(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 400, (response.status_code, response.reason, response.text)
    assert response.reason == "Parameter verification failed."
    body = response.json()
    assert body["data"] is None
    return dict(body["errors"])


# --- generated bad-parameter cases ----------------------------------------------------


def wrong_values(name: str, prop: dict[str, Any]) -> list[tuple[str, str]]:
    """(value, PVE's message) pairs this parameter must refuse, by its schema."""
    if prop.get("requires") or prop.get("format") == "pve-vmid-list":
        return []
    kind, cases = prop.get("type"), []
    if kind in ("integer", "number", "boolean"):
        bad = "maybe" if kind == "boolean" else "abc"
        cases.append((bad, f"type check ('{kind}') failed - got '{bad}'"))
    plain = "format" not in prop and "pattern" not in prop
    if kind == "integer" and plain and "minimum" in prop:
        low = int(float(prop["minimum"])) - 1
        cases.append((str(low), f"value must have a minimum value of "
                                f"{perl_number(prop['minimum'])}"))
    if kind == "integer" and plain and "maximum" in prop:
        high = int(float(prop["maximum"])) + 1
        cases.append((str(high), f"value must have a maximum value of "
                                 f"{perl_number(prop['maximum'])}"))
    if prop.get("enum") and plain:
        cases.append(("bogus-value", f"value 'bogus-value' does not have a value in the "
                                     f"enumeration '{', '.join(prop['enum'])}'"))
    return cases


def closed(raw: dict[str, Any]) -> bool:
    """Whether the endpoint refuses parameters its schema does not name."""
    return raw["parameters"].get("additionalProperties", 1) == 0


def wrong_rounds(raw: dict[str, Any]) -> list[dict[str, tuple[str, str]]]:
    """Rounds of wrong values, at most one per parameter in each round."""
    in_path = set(path_params(raw))
    rounds: list[dict[str, tuple[str, str]]] = []
    for name, prop in properties(raw).items():
        if name in in_path:
            continue
        for i, case in enumerate(wrong_values(name, prop)):
            if len(rounds) <= i:
                rounds.append({})
            rounds[i][name] = case
    return rounds


# Endpoints with nothing required that take any parameter cannot refuse a missing or
# unknown one; endpoints with no typed parameter cannot refuse a mistyped one.
REFUSING = [r for r in RAW if required_body(r) or closed(r)]
TYPED = [r for r in RAW if wrong_rounds(r)]


@pytest.mark.parametrize("raw", REFUSING, ids=endpoint_id)
def test_missing_and_unknown_parameters_are_refused(pve: PveLab, raw: dict[str, Any]) -> None:
    expected = {n: MISSING for n in required_body(raw)}
    params: dict[str, Any] = {}
    if closed(raw):
        params = {"no-such-parameter": "1"}
        expected["no-such-parameter"] = UNKNOWN
    assert refused(send(pve, raw["method"], url_for(raw), params)) == expected


@pytest.mark.parametrize("raw", TYPED, ids=endpoint_id)
def test_wrong_types_ranges_and_enums_are_refused(pve: PveLab, raw: dict[str, Any]) -> None:
    for cases in wrong_rounds(raw):
        params = {**required_body(raw), **{n: v for n, (v, _) in cases.items()}}
        assert refused(send(pve, raw["method"], url_for(raw), params)) == {
            n: message for n, (_, message) in cases.items()}


@pytest.mark.parametrize(
    "raw", [r for r in RAW if {"node", "vmid"} & set(path_params(r))], ids=endpoint_id
)
def test_path_parameters_are_verified(pve: PveLab, raw: dict[str, Any]) -> None:
    names = path_params(raw)
    overrides, expected = {}, {}
    if "node" in names:
        overrides["node"] = "bad_node"
        expected["node"] = "invalid format - value does not look like a valid node name\n"
    if "vmid" in names:
        overrides["vmid"] = "abc"
        expected["vmid"] = "type check ('integer') failed - got 'abc'"
    assert refused(send(pve, raw["method"], url_for(raw, overrides),
                        required_body(raw))) == expected


def test_format_and_boolean_strictness_as_pve(pve: PveLab) -> None:
    """PVE refuses 'true' for a boolean form value, and VM IDs below 100 by their format."""
    errors = refused(send(pve, "PUT", "/nodes/pve1/qemu/9000/config",
                          {"onboot": "true", "name": "not_a_dns_name", "delete": "ok,Bad!"}))
    assert errors == {
        "onboot": "type check ('boolean') failed - got 'true'",
        "name": "invalid format - value does not look like a valid DNS name\n",
        "delete": "invalid format - invalid configuration ID 'Bad!'\n",
    }
    errors = refused(send(pve, "GET", "/cluster/nextid", {"vmid": "99"}))
    assert errors == {"vmid": "invalid format - value does not look like a valid VM ID\n"}


# --- protocol -----------------------------------------------------------------------


def test_unknown_path_and_method_are_501(pve: PveLab) -> None:
    for method, path in (("GET", "/nodes/pve1/foo"), ("PATCH", "/nodes/pve1/qemu/9000/config"),
                         ("POST", "/version"), ("DELETE", "/nodes")):
        response = send(pve, method, path)
        assert response.status_code == 501
        assert response.reason == f"Method '{method} {path}' not implemented"
        assert response.json()["data"] is None


def test_no_or_bad_credentials_are_401(pve: PveLab) -> None:
    response = requests.get(f"{pve.url}/api2/json/nodes", verify=str(pve.verify), timeout=10)
    assert (response.status_code, response.reason) == (401, "No ticket")
    bad = f"PVEAPIToken={pve.user}!{pve.token_name}=wrong"
    response = requests.get(f"{pve.url}/api2/json/nodes", verify=str(pve.verify),
                            headers={"Authorization": bad}, timeout=10)
    assert (response.status_code, response.reason) == (401, "Authentication failed!")
    colon = f"PVEAPIToken={pve.user}!{pve.token_name}:{pve.token_secret}"
    response = requests.get(f"{pve.url}/api2/json/nodes", verify=str(pve.verify),
                            headers={"Authorization": colon}, timeout=10)
    assert response.status_code == 401


def test_restricted_token_reads_but_may_not_power(pve: PveLab) -> None:
    weak = pve.restricted_client()
    assert weak.nodes("pve1").qemu(9000).status.current.get()["status"] == "stopped"
    response = requests.post(
        f"{pve.url}/api2/json/nodes/pve1/qemu/9000/status/start", verify=str(pve.verify),
        headers={"Authorization": f"PVEAPIToken={pve.user}!{pve.restricted_token_name}="
                                  f"{pve.restricted_token_secret}"}, timeout=10)
    assert (response.status_code, response.reason) == (
        403, "Permission check failed (/vms/9000, VM.PowerMgmt)")


def test_ticket_writes_need_the_csrf_token(pve: PveLab) -> None:
    login = requests.post(f"{pve.url}/api2/json/access/ticket", verify=str(pve.verify),
                          data={"username": pve.user, "password": pve.password}, timeout=10)
    assert login.status_code == 200
    data = login.json()["data"]
    assert check_returns(endpoint("POST", "/access/ticket").returns, data) == []
    cookies = {"PVEAuthCookie": data["ticket"]}
    url = f"{pve.url}/api2/json/nodes/pve1/qemu/9000/firewall/options"
    assert requests.get(url, cookies=cookies, verify=str(pve.verify), timeout=10).ok
    without = requests.put(url, cookies=cookies, data={"enable": "1"},
                           verify=str(pve.verify), timeout=10)
    assert (without.status_code, without.reason) == (401, "Permission denied - invalid csrf token")
    with_csrf = requests.put(url, cookies=cookies, data={"enable": "1"}, verify=str(pve.verify),
                             headers={"CSRFPreventionToken": data["CSRFPreventionToken"]},
                             timeout=10)
    assert with_csrf.status_code == 200
    wrong = requests.post(f"{pve.url}/api2/json/access/ticket", verify=str(pve.verify),
                          data={"username": pve.user, "password": "nope"}, timeout=10)
    assert wrong.status_code == 401


# --- happy paths, every answer checked against the schema's ``returns`` ---------------


def endpoint(method: str, path: str) -> Endpoint:
    return next(e for e in SCHEMA.endpoints if e.method == method and e.path == path)


class Api:
    """Calls through the full token; each answer must match its ``returns`` schema."""

    def __init__(self, pve: PveLab) -> None:
        self.pve, self.seen = pve, set()

    def __call__(self, method: str, path: str, **params: Any) -> Any:
        response = send(self.pve, method, path, params)
        assert response.status_code == 200, (method, path, response.reason, response.text)
        found, _, _ = SCHEMA.match(method, path)
        assert found is not None
        data = response.json()["data"]
        assert check_returns(found.returns, data) == [], (method, path, data)
        self.seen.add((method, found.path))
        return data

    def task(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        upid = self(method, path, **params)
        node = upid.split(":")[1]
        for _ in range(200):
            status = self("GET", f"/nodes/{node}/tasks/{upid}/status")
            if status["status"] == "stopped":
                status["log"] = [x["t"] for x in self("GET", f"/nodes/{node}/tasks/{upid}/log")]
                return dict(status)
            time.sleep(0.05)
        raise AssertionError(f"task {upid} never stopped")

    def ok(self, method: str, path: str, **params: Any) -> None:
        status = self.task(method, path, **params)
        assert status["exitstatus"] == "OK", status


def test_every_endpoint_answers_in_its_documented_shape(pve: PveLab) -> None:
    api = Api(pve)
    api("GET", "/version")
    assert api("GET", "/cluster/firewall/options")["enable"] == 1
    api("PUT", "/cluster/firewall/options", enable=1, policy_in="DROP")
    assert [n["node"] for n in api("GET", "/nodes")] == ["pve1", "pve2", "pve3"]
    api("GET", "/nodes/pve2/status")
    for kind in ("vm", "node", "storage"):
        assert {r["type"] for r in api("GET", "/cluster/resources", type=kind)} == {
            "qemu" if kind == "vm" else kind}
    vmid = api("GET", "/cluster/nextid")
    vm = f"/nodes/pve1/qemu/{vmid}"
    api.ok("POST", "/nodes/pve1/qemu/9000/clone", newid=vmid, name="web-1", full=0)
    api("GET", "/nodes/pve1/qemu")
    assert api("GET", f"{vm}/config")["scsi0"].startswith("local-lvm:base-9000-disk-0/")
    api("PUT", f"{vm}/config", cores=2, memory=2048, onboot=1, tags="lab",
        net0="virtio,bridge=vmbr0,link_down=1")
    api.ok("POST", f"{vm}/config", description="async", delete="tags")
    api.ok("PUT", f"{vm}/resize", disk="scsi0", size="4G")
    api.ok("POST", f"{vm}/status/start")
    assert api("GET", f"{vm}/status/current")["status"] == "running"
    api.ok("POST", f"{vm}/status/suspend")
    assert api("GET", f"{vm}/status/current")["qmpstatus"] == "paused"
    api.ok("POST", f"{vm}/status/resume")
    api.ok("POST", f"{vm}/status/reboot")
    api.ok("POST", f"{vm}/status/shutdown", timeout=30, forceStop=1)
    api.ok("POST", f"{vm}/status/stop")
    api.ok("POST", f"{vm}/snapshot", snapname="before", description="x")
    assert [s["name"] for s in api("GET", f"{vm}/snapshot")] == ["before", "current"]
    api.ok("POST", f"{vm}/snapshot/before/rollback")
    api.ok("DELETE", f"{vm}/snapshot/before")
    fw = f"{vm}/firewall"
    api("POST", f"{fw}/ipset", name="ipfilter-net0", comment="bound")
    api("POST", f"{fw}/ipset/ipfilter-net0", cidr="192.0.2.10")
    assert [e["cidr"] for e in api("GET", f"{fw}/ipset/ipfilter-net0")] == ["192.0.2.10"]
    assert [s["name"] for s in api("GET", f"{fw}/ipset")] == ["ipfilter-net0"]
    api("DELETE", f"{fw}/ipset/ipfilter-net0/192.0.2.10")
    api("DELETE", f"{fw}/ipset/ipfilter-net0")
    api("PUT", f"{fw}/options", enable=1, ipfilter=1, policy_in="DROP", policy_out="ACCEPT")
    assert api("GET", f"{fw}/options")["ipfilter"] == 1
    api.ok("POST", "/nodes/pve1/vzdump", vmid=str(vmid), storage="local", mode="stop",
           compress="zstd", **{"notes-template": "{{guestname}} kept"})
    api("GET", "/nodes/pve1/storage")
    (backup,) = api("GET", "/nodes/pve1/storage/local/content", content="backup", vmid=vmid)
    assert backup["notes"] == "web-1 kept" and backup["subtype"] == "qemu"
    content = f"/nodes/pve1/storage/local/content/{backup['volid']}"
    api("PUT", content, protected=1, notes="pinned")
    api("GET", "/nodes/pve1/storage/local/prunebackups", vmid=vmid, type="qemu",
        **{"prune-backups": "keep-last=1"})
    api.ok("DELETE", "/nodes/pve1/storage/local/prunebackups", vmid=vmid,
           **{"prune-backups": "keep-last=1"})
    api("PUT", content, protected=0)
    api.ok("DELETE", vm, purge=1)
    api.ok("POST", "/nodes/pve1/qemu", vmid=vmid, archive=backup["volid"], storage="local-lvm",
           unique=1)
    api.ok("DELETE", content)
    api("GET", "/nodes/pve1/tasks", vmid=vmid, limit=100)
    api.ok("DELETE", vm)
    missing = {(e.method, e.path) for e in SCHEMA.endpoints} - api.seen
    assert missing == {("POST", "/access/ticket")}  # covered by the ticket test


# --- behaviours drivers depend on ---------------------------------------------------


@pytest.fixture
def guest(pve: PveLab) -> int:
    api = Api(pve)
    vmid = int(api("GET", "/cluster/nextid"))
    api.ok("POST", "/nodes/pve1/qemu/9000/clone", newid=vmid, name=f"g{vmid}", full=0)
    return vmid


def test_a_held_lock_fails_a_backup_and_refuses_a_config_change(pve: PveLab, guest: int) -> None:
    api = Api(pve)
    pve.hold_lock("pve1", guest, "backup", 1.5)
    status = api.task("POST", "/nodes/pve1/vzdump", vmid=str(guest), storage="local")
    assert status["exitstatus"] == "job errors"
    assert f"ERROR: Backup of VM {guest} failed - VM is locked (backup)" in status["log"]
    response = send(pve, "PUT", f"/nodes/pve1/qemu/{guest}/config", {"cores": "2"})
    assert (response.status_code, response.reason) == (500, "VM is locked (backup)")
    start = api.task("POST", f"/nodes/pve1/qemu/{guest}/status/start")
    assert start["exitstatus"] == "VM is locked (backup)"
    time.sleep(1.6)
    api.ok("POST", "/nodes/pve1/vzdump", vmid=str(guest), storage="local")


def test_a_running_task_holds_its_lock(pve: PveLab, guest: int) -> None:
    api = Api(pve)
    pve.task_seconds(1.0)
    try:
        upid = api("POST", "/nodes/pve1/vzdump", vmid=str(guest), storage="local")
        current = api("GET", f"/nodes/pve1/qemu/{guest}/status/current")
        assert current["lock"] == "backup"
        response = send(pve, "DELETE", f"/nodes/pve1/qemu/{guest}")
        assert response.status_code == 200  # destroy's lock check is inside its task
        destroy = response.json()["data"]
    finally:
        pve.task_seconds(0.3)
    assert wait(api, upid)["exitstatus"] == "OK"
    assert wait(api, destroy)["exitstatus"] == "VM is locked (backup)"


def wait(api: Api, upid: str) -> dict[str, Any]:
    for _ in range(100):
        status = api("GET", f"/nodes/pve1/tasks/{upid}/status")
        if status["status"] == "stopped":
            return dict(status)
        time.sleep(0.05)
    raise AssertionError(upid)


def test_a_task_made_to_fail_reports_its_exitstatus_and_log(pve: PveLab, guest: int) -> None:
    pve.fail_next("vzdump", "job errors", ["INFO: starting new backup job",
                                           "ERROR: no space left on device"])
    status = Api(pve).task("POST", "/nodes/pve1/vzdump", vmid=str(guest), storage="local")
    assert status["exitstatus"] == "job errors"
    assert status["log"] == ["INFO: starting new backup job", "ERROR: no space left on device",
                             "TASK ERROR: job errors"]
    assert Api(pve)("GET", "/nodes/pve1/storage/local/content", vmid=guest) == []


def test_pve_refusals_match_pve(pve: PveLab, guest: int) -> None:
    api = Api(pve)
    taken = refused(send(pve, "GET", "/cluster/nextid", {"vmid": str(guest)}))
    assert taken == {"vmid": f"VM {guest} already exists"}
    linked = send(pve, "POST", f"/nodes/pve1/qemu/{guest}/clone", {"newid": "990", "full": "0"})
    assert (linked.status_code, linked.reason) == (
        500, "Linked clone feature is not supported for drive 'scsi0'")
    elsewhere = send(pve, "POST", "/nodes/pve1/qemu/9000/clone",
                     {"newid": "991", "target": "pve2", "full": "1", "storage": "local-lvm"})
    assert elsewhere.reason == "can't clone to non-shared storage 'local-lvm'"
    shrink = api.task("PUT", f"/nodes/pve1/qemu/{guest}/resize", disk="scsi0", size="1G")
    assert shrink["exitstatus"] == "shrinking disks is not supported"
    api.ok("POST", f"/nodes/pve1/qemu/{guest}/status/start")
    again = api.task("POST", f"/nodes/pve1/qemu/{guest}/status/start")
    assert again["exitstatus"] == f"VM {guest} already running"
    running = send(pve, "DELETE", f"/nodes/pve1/qemu/{guest}")
    assert (running.status_code, running.reason) == (500, f"VM {guest} is running - destroy "
                                                          "failed")
    api.ok("POST", f"/nodes/pve1/qemu/{guest}/status/stop")
    stopped = send(pve, "POST", f"/nodes/pve1/qemu/{guest}/status/reboot")
    assert (stopped.status_code, stopped.reason) == (500, f"VM {guest} not running")


def test_clones_across_nodes_need_shared_storage_on_both_ends(pve: PveLab) -> None:
    """``clone_vm``: the source's disks and the target storage must both be shared."""
    api = Api(pve)
    onto_local = send(pve, "POST", "/nodes/pve3/qemu/9001/clone",
                      {"newid": "992", "target": "pve1", "full": "1", "storage": "local-lvm"})
    assert (onto_local.status_code, onto_local.reason) == (
        500, "can't clone to non-shared storage 'local-lvm'")
    from_local = send(pve, "POST", "/nodes/pve1/qemu/9000/clone",
                      {"newid": "993", "target": "pve2", "full": "1", "storage": "ceph-vm"})
    assert (from_local.status_code, from_local.reason) == (
        500, "can't clone VM to node 'pve2' (VM uses local storage)")
    api.ok("POST", "/nodes/pve3/qemu/9001/clone", newid=994, target="pve1", full=1,
           storage="ceph-vm", name="shared-clone")
    (disk,) = [c for c in api("GET", "/nodes/pve2/storage/ceph-vm/content", vmid=994)]
    assert disk["volid"] == "ceph-vm:vm-994-disk-0"  # a shared storage: every node sees it
    assert api("GET", "/nodes/pve2/storage/local-lvm/content", vmid=994) == []
    api.ok("DELETE", "/nodes/pve1/qemu/994", purge=1)


# Worked by hand from PVE::Storage::prune_mark_backup_group (pve-storage 9.1.7): newest
# first, keep-last 2, then two new days, then two new ISO weeks (a second backup of a
# week just kept is marked remove at once), monthly and yearly find nothing left;
# a protected backup is marked before and counts for no rule.
PVE_MARKS = {0: "remove", 5: "remove", 24: "remove", 30: "protected", 49: "keep",
             24 * 8: "remove", 24 * 9: "keep", 24 * 15: "keep", 24 * 40: "keep",
             24 * 70: "keep", 24 * 400: "keep"}


def test_prune_marks_follow_pves_own_rules(pve: PveLab, guest: int) -> None:
    api = Api(pve)
    start = datetime(2026, 10, 1, 1, 0, tzinfo=UTC)  # a Thursday, ISO week 40
    by_name = {}
    for offset, mark in PVE_MARKS.items():
        when = start + timedelta(hours=offset)
        pve.set_clock(when)
        api.ok("POST", "/nodes/pve1/vzdump", vmid=str(guest), storage="local",
               protected=1 if mark == "protected" else 0)
        by_name[when.strftime("%Y_%m_%d-%H_%M_%S")] = mark
    backups = api("GET", "/nodes/pve1/storage/local/content", content="backup", vmid=guest)
    expected = {b["volid"]: by_name[b["volid"].split("-", 3)[3].split(".")[0]] for b in backups}
    assert len(expected) == len(PVE_MARKS)
    rules = "keep-last=2,keep-daily=2,keep-weekly=2,keep-monthly=1,keep-yearly=1"
    marks = api("GET", "/nodes/pve1/storage/local/prunebackups", vmid=guest,
                **{"prune-backups": rules})
    assert {m["volid"]: m["mark"] for m in marks} == expected
    api.ok("DELETE", "/nodes/pve1/storage/local/prunebackups", vmid=guest,
           **{"prune-backups": rules})
    left = api("GET", "/nodes/pve1/storage/local/content", content="backup", vmid=guest)
    assert {b["volid"] for b in left} == {k for k, m in expected.items() if m != "remove"}


def test_the_emulator_imports_nothing_of_the_code_it_judges() -> None:
    for path in sorted((REPO / "lab").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("orchestrator", "drivers")], path


def test_a_forced_restore_over_a_vm_refuses_a_running_one_and_replaces_the_disks(
    pve: PveLab, guest: int
) -> None:
    """``create_vm`` with ``archive`` and ``force``: refused while the VM runs, as PVE does."""
    api = Api(pve)
    api.ok("POST", "/nodes/pve1/vzdump", vmid=str(guest), storage="local", mode="stop")
    (backup,) = api("GET", "/nodes/pve1/storage/local/content", content="backup", vmid=guest)
    api.ok("POST", f"/nodes/pve1/qemu/{guest}/status/start")
    over = {"vmid": str(guest), "archive": backup["volid"], "force": "1"}
    running = send(pve, "POST", "/nodes/pve1/qemu", over)
    assert (running.status_code, running.reason) == (
        500, f"unable to restore VM {guest} - vm is running")
    api.ok("POST", f"/nodes/pve1/qemu/{guest}/status/stop")
    cores = api("GET", f"/nodes/pve1/qemu/{guest}/config")["cores"]
    api("PUT", f"/nodes/pve1/qemu/{guest}/config", cores=cores + 2)
    disks = api("GET", "/nodes/pve1/storage/local-lvm/content", vmid=guest)
    restore = api.task("POST", "/nodes/pve1/qemu", vmid=guest, archive=backup["volid"], force=1,
                       storage="local-lvm")
    assert restore["exitstatus"] == "OK"
    assert f"destroy existing data of VM {guest}" in restore["log"]
    assert api("GET", f"/nodes/pve1/qemu/{guest}/config")["cores"] == cores
    after = api("GET", "/nodes/pve1/storage/local-lvm/content", vmid=guest)
    assert len(after) == len(disks)  # the old disks went; no orphan is left beside the new ones
