"""The ASGI application: PVE's request pipeline, and the lab's control API under ``/_lab``.

The pipeline is pve-http-server's and pve-manager's: authenticate (401), find the handler
(501 "Method 'GET /x' not implemented"), API-token allowed?, permission check (403),
parameter verification (400 "Parameter verification failed." with per-parameter
``errors``), then the handler; a handler's ``die`` is a 500 with the message as the
reason. PVE puts the message in the HTTP reason phrase (proxmoxer reports it from there),
so responses carry it there; uvicorn always writes the standard phrase, hence
``reason.py``. JSON bodies are ``{"data": ...}``, errors add ``message`` (and ``errors``)
as ``PVE::APIServer::Formatter::Standard`` does; a 401 has an empty body, like PVE.

PVE delays every 401 by three seconds; the lab does not unless ``auth_delay`` is set.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, unquote

from lab.pve import backup, cluster_api, firewall, qemu  # noqa: F401  (registers handlers)
from lab.pve.auth import Principal, Realm, authenticate, check_permissions, perm_error
from lab.pve.reason import set_reason
from lab.pve.registry import HANDLERS, Call
from lab.pve.schema import Schema, check_parameters
from lab.pve.state import ApiError, Cluster, param_error
from lab.pve.tasks import Fault, Tasks

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
BASE = "/api2/json"


class Emulator:
    """The whole emulated cluster behind one ASGI callable."""

    def __init__(self, cluster: Cluster, realm: Realm, control_secret: str,
                 task_seconds: float = 0.3) -> None:
        self.schema = Schema.load()
        self.cluster, self.realm, self.control_secret = cluster, realm, control_secret
        self.tasks = Tasks(cluster, task_seconds)
        self.auth_delay = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _body(receive)
        path = unquote(scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode()
        if path.startswith("/_lab/"):
            status, data = self.control(scope["method"], path[6:], headers, body)
            return await _reply(send, status, "OK" if status == 200 else "Error", {"data": data})
        try:
            data = self.api(scope["method"], path, headers, query, body)
        except ApiError as exc:
            if exc.status == 401 and self.auth_delay:
                await asyncio.sleep(self.auth_delay)
            return await _error(send, exc)
        await _reply(send, 200, "OK", {"data": data})

    # --- the PVE pipeline -----------------------------------------------------------

    def api(self, method: str, path: str, headers: dict[str, str], query: str,
            body: bytes) -> Any:
        if not path.startswith(BASE + "/") and path != BASE:
            raise ApiError(501, "no such uri")
        rel = "/" + "/".join(p for p in path[len(BASE):].split("/") if p)
        public = rel == "/access/ticket" and method in ("GET", "POST")
        caller = None if public else self._caller(headers, method)
        if body and method not in ("POST", "PUT"):
            raise ApiError(501, f"Unexpected content for method '{method}'")
        endpoint, uri_params, _ = self.schema.match(method, rel)
        if endpoint is None:
            raise ApiError(501, f"Method '{method} {rel}' not implemented")
        params = _params(query, body, headers.get("content-type", ""), endpoint.properties)
        for key, value in uri_params.items():
            if key in params and params[key] != value:
                raise param_error({key: "duplicate parameter (already defined in URI) with "
                                   "conflicting values!"})
            params[key] = value
        token = headers.get("authorization", "").startswith("PVEAPIToken=")
        if public and token and not endpoint.allowtoken:
            raise perm_error(f"URI '{rel}' not available with API token, need proper "
                                 "ticket.")
        check_permissions(endpoint.permissions, caller, params)
        errors = check_parameters(endpoint.parameters, params)
        if errors:
            raise param_error(errors)
        if public:
            return self.realm.login(str(params["username"]), str(params["password"]),
                                    self.cluster.now())
        assert caller is not None
        with self.cluster.lock:
            call = Call(self.cluster, self.tasks, caller, params)
            return HANDLERS[(method, endpoint.path)](call)

    def _caller(self, headers: dict[str, str], method: str) -> Principal:
        cookies = SimpleCookie()
        cookies.load(headers.get("cookie", ""))
        jar = {k: v.value for k, v in cookies.items()}
        return authenticate(self.realm, headers, jar, method)

    # --- the lab's control API ------------------------------------------------------

    def control(self, method: str, what: str, headers: dict[str, str],
                body: bytes) -> tuple[int, Any]:
        """Fault injection and clock control; needs the control secret, never PVE auth."""
        secret = headers.get("x-lab-secret", "")
        if not hmac.compare_digest(secret, self.control_secret):
            return 401, "bad lab secret"
        args = json.loads(body or b"{}")
        action = CONTROLS.get((method, what))
        if action is None:
            return 404, f"no lab control {method} {what}"
        with self.cluster.lock:
            try:
                return 200, action(self, args)
            except (KeyError, ValueError, ApiError) as exc:
                return 400, str(exc)


def _hold_lock(emu: Emulator, args: dict[str, Any]) -> None:
    """Set a guest lock for ``seconds``, as a long backup from elsewhere would."""
    guest = emu.cluster.guest(args["node"], int(args["vmid"]))
    lock = str(args["lock"])
    guest.config["lock"] = lock

    def release() -> None:
        with emu.cluster.lock:
            if guest.config.get("lock") == lock:
                del guest.config["lock"]

    timer = threading.Timer(float(args["seconds"]), release)
    timer.daemon = True
    timer.start()


def _fail_next(emu: Emulator, args: dict[str, Any]) -> None:
    emu.tasks.faults[str(args["type"])] = Fault(str(args["exitstatus"]),
                                                [str(x) for x in args.get("log", [])])


def _nextid_races(emu: Emulator, args: dict[str, Any]) -> None:
    """The next ``count`` ids /cluster/nextid proposes are taken by someone else at once."""
    emu.cluster.nextid_races = int(args["count"])


def _task_seconds(emu: Emulator, args: dict[str, Any]) -> None:
    emu.tasks.seconds = float(args["seconds"])


def _clock(emu: Emulator, args: dict[str, Any]) -> int:
    if "set" in args:
        emu.cluster.clock.set(datetime.fromisoformat(str(args["set"])))
    if "advance" in args:
        emu.cluster.clock.advance(float(args["advance"]))
    return emu.cluster.now()


def _state(emu: Emulator, args: dict[str, Any]) -> dict[str, Any]:
    cluster = emu.cluster
    return {
        "now": cluster.now(),
        "guests": {str(g.vmid): {"node": g.node, "status": g.status, "qmpstatus": g.qmpstatus,
                                 "config": g.config, "snapshots": sorted(g.snapshots)}
                   for g in cluster.guests.values()},
        "volumes": [{"node": v.node, "volid": v.volid, "ctime": v.ctime,
                     "protected": v.protected, "notes": v.notes}
                    for v in cluster.volumes.values()],
        "tasks": [t.as_status() for t in emu.tasks.by_upid.values()],
    }


def _auth_delay(emu: Emulator, args: dict[str, Any]) -> None:
    emu.auth_delay = float(args["seconds"])


CONTROLS: dict[tuple[str, str], Callable[[Emulator, dict[str, Any]], Any]] = {
    ("POST", "hold-lock"): _hold_lock,
    ("POST", "fail-next"): _fail_next,
    ("POST", "task-seconds"): _task_seconds,
    ("POST", "nextid-races"): _nextid_races,
    ("POST", "clock"): _clock,
    ("POST", "auth-delay"): _auth_delay,
    ("GET", "state"): _state,
}


# --- HTTP plumbing ------------------------------------------------------------------


def _params(query: str, body: bytes, content_type: str,
            properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Query and body parameters; repeated keys become a list (array) or NUL-joined."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if body and content_type.startswith("application/json"):
        try:
            decoded = json.loads(body)
        except ValueError:
            raise ApiError(400, "Parameter verification failed.",
                           {"_root": "unable to parse JSON body"}) from None
        merged: dict[str, Any] = dict(pairs)
        merged.update(decoded if isinstance(decoded, dict) else {})
        return merged
    if body:
        pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    out: dict[str, Any] = {}
    for key, value in pairs:
        if properties.get(key, {}).get("type") == "array":
            out.setdefault(key, []).append(value)
        elif key in out:
            out[key] = f"{out[key]}\0{value}"
        else:
            out[key] = value
    return out


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _error(send: Send, exc: ApiError) -> None:
    if exc.status == 401:
        return await _reply(send, 401, exc.message, None)
    payload: dict[str, Any] = {"data": None, "message": exc.message + "\n"}
    if exc.errors:
        payload["errors"] = exc.errors
    await _reply(send, exc.status, exc.message, payload)


async def _reply(send: Send, status: int, reason: str, payload: Any) -> None:
    body = b"" if payload is None else json.dumps(payload).encode()
    set_reason(reason)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json;charset=UTF-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"max-age=0"),
        (b"pragma", b"no-cache"),
    ]})
    await send({"type": "http.response.body", "body": body})
