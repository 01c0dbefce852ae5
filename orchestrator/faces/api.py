"""The billing system's hooks: signed events, module commands, reads, health, metrics.

Served by ``orchestrator serve`` (uvicorn). Every write is signed (see
``orchestrator.signing``: method, path, time, request id and body) and a
request id is taken once; module commands take an ``Idempotency-Key``
whose first response is stored and replayed, and the same key with a
different request is refused with 422. Writes only record facts: the
scheduler's next tick (or ``orchestrator apply``) acts on them.

Nothing is read before it is bounded: ``BodyLimit`` refuses a body over
``MAX_BODY_BYTES`` by its Content-Length before reading a byte, and stops
a chunked one at the limit; JSON nested deeper than ``jsondepth.MAX_DEPTH``
is refused before it is parsed. Every refusal is a 4xx with a reason.
"""

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.core.events import EventError, NewService, Spec, parse_events
from orchestrator.core.jsondepth import MAX_DEPTH, depth_error
from orchestrator.engine import Orchestrator, operations
from orchestrator.engine.operations import EventConflict
from orchestrator.faces.views import verdict_json
from orchestrator.secrets.redact import redact
from orchestrator.secrets.signing import (
    MAX_AGE_SECONDS,
    MAX_AHEAD_SECONDS,
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify,
)

Clock = Callable[[], datetime]
MAX_BODY_BYTES = 1 << 20
# A refused body is read on and thrown away up to this much, so the client
# hears the 413 instead of a reset connection; past it the connection drops.
DRAIN_BYTES = 256 << 20
DESCRIPTION = f"""Every write is signed (scheme v2) with three headers:

- `{TIMESTAMP_HEADER}`: Unix time in seconds, at most {MAX_AGE_SECONDS} s old and
  {MAX_AHEAD_SECONDS} s ahead;
- `{REQUEST_ID_HEADER}`: an id new for every request (1-80 of `A-Z a-z 0-9 _ . : -`);
  a request id is accepted once (409 after);
- `{SIGNATURE_HEADER}`: `sha256=` and the hex HMAC-SHA256, under a shared secret, of
  `"v2\\nMETHOD\\nPATH\\nTIMESTAMP\\nREQUEST_ID\\n"` followed by the raw body, where
  PATH is the path as sent (with `?query` if any).

A body over {MAX_BODY_BYTES} bytes is refused with 413 before it is read; JSON nested
deeper than {MAX_DEPTH} levels is refused with 422.
"""
Command = Literal["create", "suspend", "unsuspend", "terminate", "change-package"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuspendBody(Strict):
    reason: str = ""


class TerminateBody(Strict):
    effective: AwareDatetime | None = None


class ChangePackageBody(Strict):
    spec: Spec


BODIES: dict[str, type[BaseModel]] = {
    "create": NewService,
    "suspend": SuspendBody,
    "unsuspend": Strict,
    "terminate": TerminateBody,
    "change-package": ChangePackageBody,
}
EVENT_TYPES = {
    "create": "service.created",
    "suspend": "admin.suspended",
    "unsuspend": "admin.unsuspended",
    "terminate": "service.cancelled",
    "change-package": "service.package_changed",
}


class Accepted(BaseModel):
    accepted: list[str]
    duplicates: list[str]


class CommandTaken(BaseModel):
    service: str
    command: str
    event: str
    accepted: bool


class Problem(BaseModel):
    """Why a request was refused; FastAPI's own validation errors give a list."""

    detail: str | list[dict[str, Any]]


SIGNED_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "unsigned, badly signed, stale or future-dated"},
    409: {"model": Problem, "description": "a replayed request (its request id was used)"},
    413: {"model": Problem, "description": f"a body over {MAX_BODY_BYTES} bytes"},
    422: {"model": Problem, "description": "nothing stored: the request is not valid"},
}


def create_app(
    orchestrator: Orchestrator,
    secrets: Sequence[bytes],
    clock: Clock = lambda: datetime.now(UTC),
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    if not secrets:
        raise ValueError("the hooks API needs at least one signing secret")
    app = FastAPI(title="Provisioning orchestrator hooks", version="2", description=DESCRIPTION)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.add_exception_handler(HTTPException, _redacted)

    async def signed(
        request: Request,
        timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
        request_id: Annotated[str | None, Header(alias=REQUEST_ID_HEADER)] = None,
        signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
    ) -> bytes:
        body = await request.body()
        now = clock()
        sent = {TIMESTAMP_HEADER: timestamp, REQUEST_ID_HEADER: request_id}
        headers = {k: v for k, v in {**sent, SIGNATURE_HEADER: signature}.items() if v}
        try:
            taken = verify(secrets, headers, request.method, _signed_path(request), body, now)
        except SignatureError as exc:
            raise HTTPException(401, f"unsigned or badly signed request: {exc}") from None
        if not _first_sight(orchestrator, taken, now):
            raise HTTPException(409, f"replayed request: request id {taken} was already used")
        return body

    @app.post("/v1/events", status_code=202, response_model=Accepted, responses=SIGNED_ERRORS)
    def post_events(body: Annotated[bytes, Depends(signed)]) -> Accepted:
        """Billing events, one object or an array; an id seen before is ignored."""
        report = _ingest(orchestrator, body, clock(), "billing")
        return Accepted(accepted=report.accepted, duplicates=report.duplicates)

    @app.post(
        "/v1/services/{service_id}/{command}",
        status_code=202,
        response_model=CommandTaken,
        responses=SIGNED_ERRORS,
    )
    def post_command(
        service_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")],
        command: Command,
        body: Annotated[bytes, Depends(signed)],
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", max_length=200)
        ] = None,
    ) -> Response:
        """WHMCS-style module commands: CreateAccount, SuspendAccount, ... as facts."""
        return _command(orchestrator, clock, service_id, command, body, idempotency_key)

    @app.get(
        "/v1/services/{service_id}",
        responses={
            404: {"model": Problem, "description": "unknown service"},
            422: {"model": Problem, "description": "not a service id"},
        },
    )
    def get_service(service_id: str) -> dict[str, Any]:
        """Phase, reasons and dated timeline, as ``orchestrator explain --json``."""
        try:
            facts = orchestrator.facts(service_id)
        except KeyError:
            raise HTTPException(404, f"unknown service {service_id!r}") from None
        return verdict_json(service_id, orchestrator.verdict(facts, clock()), facts.policy)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        operations.ping(orchestrator)
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return prometheus_text(orchestrator)

    return app


def openapi_document() -> dict[str, Any]:
    """The document as served; needs no store or secret to describe the routes."""
    app = create_app(None, [b"-"])  # type: ignore[arg-type]
    return app.openapi()


async def _redacted(_request: Request, exc: Exception) -> JSONResponse:
    """Refusals quote what they refused: through the one redactor, like every face."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    return JSONResponse({"detail": redact(exc.detail)}, exc.status_code, exc.headers)


def _signed_path(request: Request) -> str:
    """The path as sent, with its query: what the sender signed."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = bytes(raw).partition(b"?")[0].decode("latin-1")
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _first_sight(orchestrator: Orchestrator, request_id: str, now: datetime) -> bool:
    """A request id is good once; it is forgotten when its timestamp could no longer pass.

    The ids live in ``hook_signatures.signature`` (80 characters, as ids are).
    """
    horizon = now - timedelta(seconds=MAX_AGE_SECONDS + MAX_AHEAD_SECONDS)
    return operations.first_sight(orchestrator, request_id, now, horizon)


def _ingest(orchestrator: Orchestrator, body: bytes, now: datetime, actor: str) -> Any:
    try:
        return orchestrator.ingest(parse_events(body), now, actor=actor)
    except EventConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except (EventError, UnicodeDecodeError, OverflowError) as exc:
        raise HTTPException(422, f"nothing was stored: {exc}") from None


def _command(
    orchestrator: Orchestrator,
    clock: Clock,
    service_id: str,
    command: str,
    body: bytes,
    key: str | None,
) -> Response:
    digest = hashlib.sha256(f"{service_id}/{command}\n".encode() + body).hexdigest()
    if key is not None and (stored := operations.stored_response(orchestrator, key)) is not None:
        if stored.request_hash != digest:
            raise HTTPException(422, "this Idempotency-Key was used for a different request")
        return JSONResponse(stored.body, status_code=stored.status)
    now = clock()
    event = _command_event(service_id, command, body, key, now)
    report = _ingest(orchestrator, json.dumps(event).encode(), now, "billing:command")
    content = {
        "service": service_id,
        "command": command,
        "event": event["id"],
        "accepted": bool(report.accepted),
    }
    if key is not None:
        content = operations.remember_response(orchestrator, key, digest, 202, content, now)
    return JSONResponse(content, status_code=202)


def _command_event(
    service_id: str, command: str, body: bytes, key: str | None, now: datetime
) -> dict[str, Any]:
    if (too_deep := depth_error(body)) is not None:
        raise HTTPException(422, f"bad {command} request: {too_deep}")
    try:
        raw = json.loads(body or b"{}")
        data = BODIES[command].model_validate(raw).model_dump(mode="json", exclude_none=True)
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, f"bad {command} request: {exc}") from None
    event_id = f"cmd-{key}" if key else f"cmd-{uuid.uuid4().hex}"
    return {
        "id": event_id,
        "service": service_id,
        "at": now.isoformat(),
        "data": {"type": EVENT_TYPES[command], **data},
    }


class BodyLimit:
    """Refuses a body over ``max_bytes`` before it is read (413), whatever its framing.

    A declared Content-Length over the limit is refused before the app runs;
    a chunked body is counted as it arrives and refused at the limit. Either
    way the rest is read on and discarded (up to ``DRAIN_BYTES``), never kept.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drain(receive)
            await JSONResponse({"detail": self._reason()}, 413)(scope, receive, send)
            return
        await self.app(scope, self._capped(receive), send)

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body"):
                        await _drain(receive)
                    raise HTTPException(413, self._reason())
            return message

        return capped

    def _reason(self) -> str:
        return f"request body too large: at most {self.max_bytes} bytes"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length" and value.isdigit():
            return int(value)
    return None


async def _drain(receive: Receive) -> None:
    drained = 0
    while drained <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def prometheus_text(orchestrator: Orchestrator) -> str:
    """Steps by kind and state, open steps, breaker, last tick, services by phase."""
    found = operations.metrics(orchestrator)
    steps, phases = found.steps, found.phases
    last_tick = found.last_tick.timestamp() if found.last_tick else 0.0
    open_states = ("pending", "running", "retry", "held", "awaiting", "paused")
    lines = [
        "# HELP orchestrator_steps Journaled steps by kind and state.",
        "# TYPE orchestrator_steps gauge",
        *(f'orchestrator_steps{{kind="{k}",state="{s}"}} {n}' for k, s, n in steps),
        "# HELP orchestrator_queue_depth Steps journaled and not finished.",
        "# TYPE orchestrator_queue_depth gauge",
        f"orchestrator_queue_depth {sum(n for _, s, n in steps if s in open_states)}",
        "# HELP orchestrator_breaker_open 1 while the breaker holds destructive steps back.",
        "# TYPE orchestrator_breaker_open gauge",
        f"orchestrator_breaker_open {int(found.breaker_open)}",
        "# HELP orchestrator_last_tick_timestamp_seconds When apply last ran.",
        "# TYPE orchestrator_last_tick_timestamp_seconds gauge",
        f"orchestrator_last_tick_timestamp_seconds {last_tick}",
        "# HELP orchestrator_services Services by phase.",
        "# TYPE orchestrator_services gauge",
        *(f'orchestrator_services{{phase="{p}"}} {n}' for p, n in phases),
    ]
    return "\n".join(lines) + "\n"
