"""The operator's command line: ``orchestrator --help``.

This is the outermost layer: the only place that reads the wall clock
(when ``--at`` is not given), the environment and files, and prints. Every
read command takes ``--json``. A bare ``--at`` date means the end of that
day on the operator's clock (``ORCHESTRATOR_TZ``, WIB by default), so that
"what happens on 6 December" includes everything dated that day.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from drivers.base import DriverError
from orchestrator.core.events import Event, EventError, parse_events
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.policy import load_policies, load_policy, policy_schema
from orchestrator.core.yamlerrors import PolicyError, read_text
from orchestrator.engine import Orchestrator, Settings
from orchestrator.faces.views import verdict_json
from orchestrator.run import notify
from orchestrator.secrets import evidence
from orchestrator.secrets.redact import redact_text
from orchestrator.state import audit, ingest, ipam, journal
from orchestrator.state.db import StoreError, database_url, migrate, open_engine, reachable
from orchestrator.state.models import NotificationRow, ServiceRow, StepRow

REPO = Path(__file__).resolve().parents[2]
app = typer.Typer(no_args_is_help=True, help="Applies billing state to hosting infrastructure.")
policy_app = typer.Typer(no_args_is_help=True, help="Check and describe policy files.")
services_app = typer.Typer(no_args_is_help=True, help="The services the orchestrator knows.")
hold_app = typer.Typer(no_args_is_help=True, help="Place and release holds.")
audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit trail.")
breaker_app = typer.Typer(no_args_is_help=True, help="The blast-radius breaker.")
steps_app = typer.Typer(no_args_is_help=True, help="The journal of steps.")
notifications_app = typer.Typer(no_args_is_help=True, help="What the billing system is told.")
erase_app = typer.Typer(no_args_is_help=True, help="Signed erase records of purged disks.")
colo_app = typer.Typer(no_args_is_help=True, help="Colocated hardware, the customers' own.")
ReasonOption = Annotated[str, typer.Option("--reason", help="why, for the history and audit")]
events_app = typer.Typer(no_args_is_help=True, help="Payments held for review, and resolving them.")
for sub, name in [
    (policy_app, "policy"),
    (services_app, "services"),
    (hold_app, "hold"),
    (audit_app, "audit"),
    (breaker_app, "breaker"),
    (steps_app, "steps"),
    (notifications_app, "notifications"),
    (erase_app, "erase"),
    (colo_app, "colo"),
    (events_app, "events"),
]:
    app.add_typer(sub, name=name)


class Plain(Console):
    """Operator output: every string shown as written, redacted, never read as Rich markup.

    Error texts and ids come from drivers, billing and operators: ``disk [sda]
    failed`` must show its brackets and ``[/var/log/x]`` must not raise
    MarkupError, and a driver error quoting a token must not show it. Rich turns
    every string it meets (printed, table cell, title) into Text here, so this
    one override covers them all; styled output is built as ``Text`` instead.
    """

    def render_str(self, text: str, **options: Any) -> Text:
        options.update(markup=False, emoji=False)
        return super().render_str(redact_text(text), **options)


out = Plain()
err = Plain(stderr=True, soft_wrap=True)

# sysexits.h: a temporary failure, try again later (another run holds the leadership lock).
EX_TEMPFAIL = 75
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON")]
AtOption = Annotated[str | None, typer.Option("--at", help="a date or ISO time; default now")]


@dataclass
class Config:
    db: str
    policies: Path
    inventory: Path


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option(help="store URL (env ORCHESTRATOR_DB)")] = None,
    policies: Annotated[Path | None, typer.Option(help="policy directory")] = None,
    inventory: Annotated[Path | None, typer.Option(help="inventory file")] = None,
) -> None:
    ctx.obj = Config(
        database_url(db),
        policies or Path(os.environ.get("ORCHESTRATOR_POLICIES", REPO / "inventory" / "policies")),
        inventory
        or Path(os.environ.get("ORCHESTRATOR_INVENTORY", REPO / "inventory" / "lab.yaml")),
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(Text.assemble(("error:", "red"), " ", redact_text(message)), highlight=False)
    return typer.Exit(code)


def _orchestrator(ctx: typer.Context, migrate_store: bool = False) -> Orchestrator:
    config: Config = ctx.obj
    if not config.policies.is_dir():
        raise _fail(f"--policies {config.policies}: no such directory")
    try:
        policies = load_policies(config.policies)
        inventory: Inventory = load_inventory(config.inventory)
        audit.settings()
        engine = reachable(open_engine(config.db))
    except (PolicyError, audit.AuditKeyError, StoreError) as exc:
        raise _fail(str(exc)) from None
    if migrate_store:
        migrate(engine)
    return Orchestrator(engine, policies, inventory, Settings.from_environment())


@contextmanager
def _exclusive(ctx: typer.Context, orchestrator: Orchestrator, role: str) -> Iterator[None]:
    """A run that writes takes the daemon's leadership lock (one writer at a time); when
    another holds it, exit at once with EX_TEMPFAIL and who holds it, for cron's mail."""
    from orchestrator.faces.daemon import holder_of, leadership_for

    db = ctx.obj.db
    leadership = leadership_for(db, role)
    if not leadership.acquire():
        raise _fail(f"{role} not run: the store is led by {holder_of(db)}", EX_TEMPFAIL)
    orchestrator.fence = leadership.fence()
    try:
        yield
    finally:
        leadership.release()


def operator_zone() -> ZoneInfo:
    return ZoneInfo(os.environ.get("ORCHESTRATOR_TZ", "Asia/Jakarta"))


def parse_at(text: str | None) -> datetime:
    """Now, an ISO time, or the end of a named day on the operator's clock."""
    if text is None:
        return datetime.now(UTC)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day, time(23, 59, 59), tzinfo=operator_zone())
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"--at {text!r} is neither a date (2026-12-06) nor an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=operator_zone())


def _emit(data: Any, as_json: bool, render: Any = None) -> None:
    if as_json or render is None:
        sys.stdout.write(redact_text(json.dumps(data, indent=2, default=str)) + "\n")
    else:
        render(data)


# -- set-up ------------------------------------------------------------------


@app.command()
def init(ctx: typer.Context) -> None:
    """Create or upgrade the store and load the inventory's IP pools."""
    orchestrator = _orchestrator(ctx, migrate_store=True)
    added = orchestrator.seed_pools()
    out.print(
        f"store ready at {ctx.obj.db}; {added} new addresses in "
        f"{len(orchestrator.inventory.pools)} pools; {len(orchestrator.policies)} policies"
    )


@policy_app.command("check")
def policy_check(files: list[Path]) -> None:
    """Validate policy files; names file, field and line of every error."""
    failed = False
    for path in files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            failed = True
            err.print(str(exc), highlight=False, markup=False)
            continue
        out.print(f"{path}: ok ({policy.name}: {', '.join(policy.products)})", highlight=False)
    if failed:
        raise typer.Exit(1)


@policy_app.command("schema")
def policy_schema_command() -> None:
    """The JSON Schema of policy files, for editors."""
    _emit(policy_schema(), True)


# -- facts -------------------------------------------------------------------


@app.command()
def event(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="a JSON file of events, or - for stdin")] = "-",
    at: AtOption = None,
) -> None:
    """Take in billing events (one object, an array, or one per line); replays are ignored."""
    raw = _stdin() if source == "-" else _read(Path(source))
    try:
        events = parse_events(raw)
        report = _orchestrator(ctx).ingest(events, parse_at(at), actor="cli")
    except EventError as exc:
        raise _fail(f"nothing was stored: {exc}") from None
    out.print(f"{len(report.accepted)} accepted, {len(report.duplicates)} already known")


def _read(path: Path) -> str:
    try:
        return read_text(path)
    except PolicyError as exc:
        raise _fail(str(exc)) from None


def _stdin() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"stdin: not UTF-8 text (byte {exc.start})") from None


# -- reading -----------------------------------------------------------------


@app.command()
def plan(ctx: typer.Context, at: AtOption = None, as_json: JsonFlag = False) -> None:
    """What would happen at a moment, to whom, and why."""
    moment = parse_at(at)
    rows = [
        {
            "service": p.service_id,
            "policy": p.policy,
            "product": p.product,
            "phase": p.phase.value,
            "applied": p.applied_phase,
            "steps": [
                {
                    "action": s.action.value,
                    "destructive": s.destructive,
                    "automatic": s.automatic,
                    "why": s.why,
                }
                for s in p.steps
            ],
        }
        for p in _orchestrator(ctx).plan(moment)
    ]
    _emit({"at": moment.isoformat(), "services": rows}, as_json, _plan_table)


def _plan_table(data: dict[str, Any]) -> None:
    table = Table(title=f"plan at {data['at']}")
    for column in ("service", "policy", "phase", "steps", "why"):
        table.add_column(column)
    for row in data["services"]:
        steps = ", ".join(s["action"] for s in row["steps"])
        whys = "; ".join(dict.fromkeys(s["why"] for s in row["steps"]))
        table.add_row(row["service"], row["policy"], row["phase"], steps, whys)
    out.print(table)


@app.command()
def explain(
    ctx: typer.Context, service: str, at: AtOption = None, as_json: JsonFlag = False
) -> None:
    """A service's phase, reasons and dated timeline, with the clause behind each step."""
    orchestrator = _orchestrator(ctx)
    try:
        facts = orchestrator.facts(service)
    except KeyError:
        raise _fail(f"unknown service {service!r}") from None
    moment = parse_at(at)
    data = verdict_json(service, orchestrator.verdict(facts, moment), facts.policy)
    _emit(data, as_json, _explain_render)


def _explain_render(data: dict[str, Any]) -> None:
    out.print(
        Text.assemble(
            (redact_text(data["service"]), "bold"),
            f" ({data['policy']}) at {data['at']}: ",
            (data["phase"], "bold"),
            f"; next change {data['next_transition'] or 'none'}",
        )
    )
    for reason in data["reasons"]:
        out.print(f"  reason [{reason['owner']}] {reason['detail']}", highlight=False, markup=False)
    if data["undo"]:
        out.print(f"  paid: undo {'; '.join(data['undo'])}", highlight=False)
    table = Table()
    for column in ("day", "step", "phase", "clause", "if paid after"):
        table.add_column(column)
    for e in data["timeline"]:
        mark = (
            ""
            if e["reached"]
            else " (ahead)"
            if not e["blocked_by"]
            else f" (held: {e['blocked_by']})"
        )
        if e["delayed_by"]:
            mark += f" (delayed by {e['delayed_by']})"
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    e["day"] + mark,
                    e["step"],
                    e["phase"],
                    e["clause"],
                    "; ".join(e["if_paid_after"]),
                )
            )
        )
    out.print(table)
    for item in data["attention"]:
        out.print(f"  needs attention: {item}", highlight=False, markup=False)


@services_app.command("list")
def services_list(
    ctx: typer.Context,
    needs_attention: Annotated[
        bool,
        typer.Option(
            "--needs-attention",
            help="only services a person must look at (paid after purge, payment under review)",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Every service with its phase and next transition."""
    orchestrator = _orchestrator(ctx)
    with orchestrator.sessions() as session:
        query = session.query(ServiceRow).order_by(ServiceRow.id)
        if needs_attention:
            query = query.filter(ServiceRow.attention != "[]")
        rows = [
            {
                "service": r.id,
                "customer": r.customer,
                "policy": r.policy,
                "product": r.product,
                "host": r.host,
                "phase": r.phase,
                "applied": r.applied_phase,
                "next_at": r.next_at.astimezone(operator_zone()).isoformat() if r.next_at else None,
                "attention": json.loads(r.attention or "[]"),
            }
            for r in query
        ]
    _emit(rows, as_json, _services_table)


def _services_table(rows: list[dict[str, Any]]) -> None:
    table = Table()
    for column in ("service", "customer", "policy", "product", "phase", "applied", "next_at"):
        table.add_column(column)
    table.add_column("attention")
    for row in rows:
        table.add_row(
            *(
                Text(str(row[c] or ""))
                for c in ("service", "customer", "policy", "product", "phase", "applied", "next_at")
            ),
            Text("; ".join(row["attention"])),
        )
    out.print(table)


@services_app.command("reprovision")
def services_reprovision(
    ctx: typer.Context, service: str, reason: ReasonOption = "", at: AtOption = None
) -> None:
    """Give a service whose data was purged a fresh machine (its data cannot come back)."""
    _operator_event(ctx, service, {"type": "service.reprovision", "reason": reason}, at)
    out.print(f"{service}: a fresh machine at the next apply", highlight=False, markup=False)


@events_app.command("unmatched")
def events_unmatched(
    ctx: typer.Context,
    include_resolved: Annotated[bool, typer.Option("--all", help="resolved ones too")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Payments naming an invoice the service does not have: each holds its service's
    destructive steps until matched (``events match``) or discarded (``events discard``)."""
    orchestrator = _orchestrator(ctx)
    with orchestrator.sessions() as session:
        rows = [
            {
                "event": r.event_id,
                "service": r.service_id,
                "invoice": r.invoice,
                "received": r.received_at.astimezone(operator_zone()).isoformat(),
                "state": r.state,
                "resolution": r.resolution,
                "by": r.resolved_by,
            }
            for r in ingest.reviews(session, include_resolved)
        ]
    _emit(rows, as_json, _unmatched_table)


def _unmatched_table(rows: list[dict[str, Any]]) -> None:
    columns = ("event", "service", "invoice", "received", "state", "resolution")
    table = Table(title=f"{len(rows)} payments held for review")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(str(row[c] or "")) for c in columns))
    out.print(table)


@events_app.command("match")
def events_match(ctx: typer.Context, event_id: str, invoice: str, at: AtOption = None) -> None:
    """Settle an invoice of the service with a payment under review."""
    _resolve_payment(ctx, event_id, invoice, "", at)
    out.print(f"{event_id} matched to invoice {invoice}", highlight=False, markup=False)


@events_app.command("discard")
def events_discard(
    ctx: typer.Context, event_id: str, reason: ReasonOption = "", at: AtOption = None
) -> None:
    """Drop a payment under review (a mistake of billing's); its hold ends."""
    _resolve_payment(ctx, event_id, None, reason, at)
    out.print(f"{event_id} discarded", highlight=False, markup=False)


def _resolve_payment(
    ctx: typer.Context, event_id: str, invoice: str | None, reason: str, at: str | None
) -> None:
    try:
        _orchestrator(ctx).resolve_payment(event_id, parse_at(at), _actor(), invoice, reason)
    except EventError as exc:
        raise _fail(str(exc)) from None


# -- acting ------------------------------------------------------------------


@app.command()
def apply(
    ctx: typer.Context,
    at: AtOption = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="also run destructive steps the policy does not make automatic"),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the steps that are due: reconcile against real state, journal, execute.

    Takes the daemon's leadership lock for the run: from cron, a run that
    finds it held exits 75 (EX_TEMPFAIL) at once, naming the holder.
    """
    orchestrator = _orchestrator(ctx, migrate_store=True)
    with _exclusive(ctx, orchestrator, "orchestrator apply"):
        report = orchestrator.apply(parse_at(at), yes=yes, actor="cli")
    data = {
        "planned": report.planned,
        "skipped": report.skipped,
        "steps": [asdict(step) for step in report.steps],
    }
    _emit(data, as_json, _apply_render)
    if any(step.state == "failed" for step in report.steps):
        raise typer.Exit(1)


def _apply_render(data: dict[str, Any]) -> None:
    table = Table(title=f"{data['planned']} steps journaled")
    for column in ("step", "service", "action", "state", "detail"):
        table.add_column(column)
    for step in data["steps"]:
        table.add_row(
            str(step["step_id"]), step["service_id"], step["kind"], step["state"], step["detail"]
        )
    out.print(table)
    for line in data["skipped"]:
        err.print(f"skipped: {line}", highlight=False, markup=False)


@hold_app.command("add")
def hold_add(
    ctx: typer.Context,
    service: str,
    kind: str,
    until: Annotated[str | None, typer.Option(help="when the hold ends")] = None,
    reason: Annotated[str, typer.Option(help="why, for the audit trail")] = "",
    at: AtOption = None,
) -> None:
    """Place a hold of a kind the service's policy names (legal, dispute, ...)."""
    hold_id = f"hold-{uuid.uuid4().hex[:10]}"
    data: dict[str, Any] = {"type": "hold.placed", "hold": hold_id, "kind": kind, "reason": reason}
    if until:
        data["until"] = parse_at(until).isoformat()
    _operator_event(ctx, service, data, at)
    out.print(f"placed {kind} hold {hold_id} on {service}")


@hold_app.command("remove")
def hold_remove(ctx: typer.Context, service: str, hold_id: str, at: AtOption = None) -> None:
    """Release a hold by its id (see ``explain``); an id the service does not hold is refused."""
    try:
        holds = [hold.id for hold in _orchestrator(ctx).facts(service).holds]
    except KeyError:
        raise _fail(f"unknown service {service!r}") from None
    if hold_id not in holds:
        known = ", ".join(holds) or "none"
        raise _fail(f"{service} has no hold {hold_id!r} (its holds: {known})")
    _operator_event(ctx, service, {"type": "hold.released", "hold": hold_id}, at)
    out.print(f"released hold {hold_id} on {service}")


def _actor() -> str:
    return f"operator:{os.environ.get('USER', 'unknown')}"


def _operator_event(ctx: typer.Context, service: str, data: dict[str, Any], at: str | None) -> None:
    moment = parse_at(at)
    raw = {
        "id": f"op-{uuid.uuid4().hex}",
        "service": service,
        "at": moment.isoformat(),
        "data": data,
    }
    try:
        events: list[Event] = parse_events(json.dumps(raw))
        _orchestrator(ctx).ingest(events, moment, actor=_actor())
    except EventError as exc:
        raise _fail(str(exc)) from None


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Check the keyed chain and the exported checkpoints; exits 1 if anything was changed
    or removed, or when no audit key is configured (then nothing can be vouched for)."""
    with _orchestrator(ctx).sessions() as session:
        result = audit.verify(session)
    data = {
        "entries": result.entries,
        "checkpoints": result.checkpoints,
        "ok": result.ok,
        "problems": list(result.problems),
    }
    _emit(data, as_json, _audit_render)
    if not result.ok:
        raise typer.Exit(1)


def _audit_render(data: dict[str, Any]) -> None:
    summary = f"{data['entries']} entries, {data['checkpoints']} checkpoints: "
    out.print(summary + ("intact" if data["ok"] else "NOT intact"), highlight=False)
    for problem in data["problems"]:
        out.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)


@breaker_app.command("status")
def breaker_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    with _orchestrator(ctx).sessions() as session:
        status = _orchestrator(ctx).breaker.status(session)
    _emit(
        {"open": status is not None, "detail": status},
        as_json,
        lambda d: out.print(d["detail"] or "closed"),
    )


@breaker_app.command("reset")
def breaker_reset(ctx: typer.Context, at: AtOption = None) -> None:
    orchestrator = _orchestrator(ctx)
    with orchestrator.sessions.begin() as session:
        was_open = orchestrator.breaker.reset(
            session, f"operator:{os.environ.get('USER', 'unknown')}", parse_at(at)
        )
    out.print("breaker reset" if was_open else "breaker was closed")


@steps_app.command("list")
def steps_list(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """The journal: every step with its state and outcome."""
    with _orchestrator(ctx).sessions() as session:
        query = session.query(StepRow).order_by(StepRow.id)
        if service:
            query = query.filter(StepRow.service_id == service)
        rows = [
            {
                "id": r.id,
                "service": r.service_id,
                "kind": r.kind,
                "state": r.state,
                "created_at": r.created_at,
                "finished_at": r.finished_at,
                "error": r.error,
            }
            for r in query
        ]
    _emit(rows, as_json, _steps_table)


@steps_app.command("show")
def steps_show(ctx: typer.Context, step_id: int, as_json: JsonFlag = False) -> None:
    """One step whole: parameters, outcome, evidence, error."""
    with _orchestrator(ctx).sessions() as session:
        row = session.get(StepRow, step_id)
        if row is None:
            raise _fail(f"no step {step_id}")
        data = {column.name: getattr(row, column.name) for column in StepRow.__table__.columns}
    for field in ("params", "result"):
        data[field] = json.loads(data[field]) if data[field] else None
    _emit(data, True)


@steps_app.command("retry")
def steps_retry(ctx: typer.Context, step_id: int, at: AtOption = None) -> None:
    """Run a failed, held, paused or waiting step again at the next apply (guards still apply)."""
    _operator_step_change(ctx, step_id, journal.retry, "retried", at)


@steps_app.command("cancel")
def steps_cancel(ctx: typer.Context, step_id: int, at: AtOption = None) -> None:
    """Cancel a step that has not run; reconcile may plan it again if it is still needed."""
    _operator_step_change(ctx, step_id, journal.cancel, "cancelled", at)


def _operator_step_change(
    ctx: typer.Context, step_id: int, change: Any, verb: str, at: str | None
) -> None:
    orchestrator = _orchestrator(ctx)
    actor = f"operator:{os.environ.get('USER', 'unknown')}"
    with orchestrator.sessions.begin() as session:
        row = session.get(StepRow, step_id)
        if row is None:
            raise _fail(f"no step {step_id}")
        if not change(session, row):
            raise _fail(f"step {step_id} is {row.state}: it cannot be {verb}")
        audit.append(
            session, parse_at(at), actor, f"step.{verb}", row.service_id, {"step": step_id}
        )
    out.print(f"step {step_id} {verb}")


@notifications_app.command("list")
def notifications_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="pending, delivered or dead")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Queued, delivered and dead-lettered notifications, oldest first."""
    with _orchestrator(ctx).sessions() as session:
        query = session.query(NotificationRow).order_by(NotificationRow.id)
        if state:
            query = query.filter(NotificationRow.state == state)
        rows = [
            {
                "id": n.id,
                "event_id": n.event_id,
                "service": n.service_id,
                "kind": n.kind,
                "state": n.state,
                "attempts": n.attempts,
                "last_error": n.last_error,
            }
            for n in query
        ]
    _emit(
        rows,
        as_json,
        lambda r: _table(r, ("id", "service", "kind", "state", "attempts", "last_error")),
    )


@notifications_app.command("replay")
def notifications_replay(ctx: typer.Context, notification_id: int, at: AtOption = None) -> None:
    """Put a dead letter back in the queue."""
    orchestrator = _orchestrator(ctx)
    moment = parse_at(at)
    with orchestrator.sessions.begin() as session:
        if not notify.replay(session, notification_id, moment):
            raise _fail(f"notification {notification_id} is not a dead letter")
        actor = f"operator:{os.environ.get('USER', 'unknown')}"
        audit.append(session, moment, actor, "notification.replayed", "*", {"id": notification_id})
    out.print(f"notification {notification_id} queued again")


@app.command()
def drift(
    ctx: typer.Context,
    at: AtOption = None,
    mark: Annotated[bool, typer.Option(help="make drifted services due now")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Compare every machine's real state (a box's power above all) with what its phase wants.

    Exits 1 when anything drifted or could not be observed, so a cron job or
    a monitoring check can alert on it.
    """
    orchestrator = _orchestrator(ctx, migrate_store=mark)
    now = parse_at(at)
    if mark:
        with _exclusive(ctx, orchestrator, "orchestrator drift --mark"):
            found = orchestrator.drift(now)
            orchestrator.sync(now)
    else:
        found = orchestrator.drift(now)
    rows = [{**asdict(d), "corrections": " ".join(d.corrections)} for d in found]
    columns = ("service_id", "host", "phase", "observed", "corrections")
    _emit(rows, as_json, lambda data: _table(data, columns) if data else out.print("no drift"))
    if found:
        raise typer.Exit(1)


@erase_app.command("verify")
def erase_verify(
    ctx: typer.Context,
    step_id: int,
    public_key: Annotated[Path, typer.Option(help="the orchestrator's Ed25519 public key (PEM)")],
    as_json: JsonFlag = False,
) -> None:
    """Check a purge step's erase records against the signing key; exits 1 if any fails."""
    try:
        key = evidence.load_public_key(public_key)
    except (OSError, ValueError, evidence.EvidenceError) as exc:
        raise _fail(f"cannot use {public_key} as the public key: {exc}") from None
    with _orchestrator(ctx).sessions() as session:
        row = session.get(StepRow, step_id)
        result = json.loads(row.result) if row is not None and row.result else {}
    records = result.get("erase_records") or []
    if not records:
        raise _fail(f"step {step_id} holds no erase records")
    checked = [
        {
            **{k: signed["record"].get(k) for k in ("device", "serial", "method", "result")},
            "signer": signed.get("signer"),
            "signature": evidence.verify(signed, key),
        }
        for signed in records
    ]
    _emit(
        checked,
        as_json,
        lambda data: _table(data, ("device", "serial", "method", "result", "signer", "signature")),
    )
    if not all(item["signature"] for item in checked):
        raise typer.Exit(1)


@colo_app.command("due")
def colo_due(ctx: typer.Context, at: AtOption = None, as_json: JsonFlag = False) -> None:
    """Colocated boxes whose hand-over deadline has come: to collect, never to wipe.

    Each with its deadline, the hand_over step's state in the journal (not
    journaled yet, awaiting ``apply --yes``, done) and any hold keeping it back.
    """
    found = _orchestrator(ctx).hand_overs(parse_at(at))
    rows = [{**asdict(h), "deadline": _local(h.deadline)} for h in found]
    columns = ("service_id", "customer", "host", "uplink", "deadline", "step", "blocked_by")
    _emit(
        rows,
        as_json,
        lambda data: _table(data, columns) if data else out.print("no hand-over due"),
    )


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c] if row[c] is not None else "") for c in columns))
    out.print(table)


def _steps_table(rows: list[dict[str, Any]]) -> None:
    table = Table()
    for column in ("id", "service", "kind", "state", "created_at", "error"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(str(row[c] or "") for c in ("id", "service", "kind", "state", "created_at", "error"))
        )
    out.print(table)


@app.command()
def run(
    ctx: typer.Context,
    tick: Annotated[float, typer.Option(help="seconds between reconcile ticks")] = 60.0,
    sync_every: Annotated[float, typer.Option(help="seconds between state syncs")] = 300.0,
    takeover: Annotated[float, typer.Option(help="how often a standby tries to lead")] = 5.0,
    orphan_grace: Annotated[
        float,
        typer.Option(
            help="seconds a step claimed by a leader that lost its lock is left to it before "
            "it is inspected and taken up (longer than any driver call)"
        ),
    ] = 300.0,
) -> None:
    """The daemon: the active one schedules the ticks, the others stand by."""
    from orchestrator.faces.daemon import DaemonConfig, configure_logging, stop_on_signals
    from orchestrator.faces.daemon import run as run_daemon

    config: Config = ctx.obj
    _orchestrator(ctx)  # a broken policy or inventory stops the daemon before it starts
    configure_logging()
    daemon = DaemonConfig(
        config.db,
        str(config.policies),
        str(config.inventory),
        tick,
        sync_every,
        takeover,
        os.environ.get("ORCHESTRATOR_BILLING_URL"),
        orphan_grace_seconds=orphan_grace,
    )
    raise typer.Exit(run_daemon(daemon, stop_on_signals()))


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8080,
    secrets_file: Annotated[
        Path | None,
        typer.Option(help="signing secrets, one a line (else ORCHESTRATOR_HOOK_SECRETS)"),
    ] = None,
) -> None:
    """Serve the billing system's signed hooks (FastAPI under uvicorn)."""
    import uvicorn

    from orchestrator.faces.api import create_app

    secrets = _hook_secrets(secrets_file)
    if not secrets:
        raise _fail("no signing secret: set ORCHESTRATOR_HOOK_SECRETS or give --secrets-file")
    orchestrator = _orchestrator(ctx, migrate_store=True)
    uvicorn.run(create_app(orchestrator, secrets), host=host, port=port, log_level="info")


@app.command()
def openapi() -> None:
    """The hooks API's OpenAPI document (kept in the repo as orchestrator/faces/openapi.json)."""
    from orchestrator.faces.api import openapi_document

    _emit(openapi_document(), True)


def _hook_secrets(path: Path | None) -> list[bytes]:
    """Secrets come from a file or the environment, never the command line."""
    text = (
        _read(path) if path else os.environ.get("ORCHESTRATOR_HOOK_SECRETS", "").replace(",", "\n")
    )
    return [line.strip().encode() for line in text.splitlines() if line.strip()]


@app.command()
def demo(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its store")] = Path(
        "demo-run"
    ),
    hypervisor: Annotated[
        str, typer.Option(help="lab (real libvirtd), test (libvirt's test driver) or auto")
    ] = "auto",
    as_json: JsonFlag = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="also the whole journal, one row per step")
    ] = False,
) -> None:
    """Live through ten weeks of a few customers of each of the five policies."""
    from orchestrator.faces.demo import HYPERVISORS, run_demo

    if hypervisor not in HYPERVISORS:
        raise _fail(f"unknown hypervisor {hypervisor!r} (choose {', '.join(HYPERVISORS)})")
    code = run_demo(
        workdir, ctx.obj.policies, as_json=as_json, hypervisor=hypervisor, verbose=verbose
    )
    raise typer.Exit(code)


# -- IP addresses ------------------------------------------------------------

ips_app = typer.Typer(no_args_is_help=True, help="IP addresses: states, history, operator moves.")
app.add_typer(ips_app, name="ips")


@ips_app.command("list")
def ips_list(
    ctx: typer.Context,
    pool: Annotated[str | None, typer.Option(help="only this pool")] = None,
    state: Annotated[
        str | None, typer.Option(help="free, assigned, quarantine, reserved or blocked")
    ] = None,
    at: AtOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Addresses with their state at a moment (an ended quarantine reads as free)."""
    orchestrator = _orchestrator(ctx)
    if state is not None and state not in ipam.STATES:
        raise _fail(f"unknown state {state!r} (states: {', '.join(ipam.STATES)})")
    with orchestrator.sessions() as session:
        views = ipam.listing(session, parse_at(at), pool=pool, state=state)
    if pool is not None and not views and pool not in orchestrator.inventory.pools:
        raise _fail(f"unknown pool {pool!r} (known: {', '.join(orchestrator.inventory.pools)})")
    sites = {name: found.site for name, found in orchestrator.inventory.pools.items()}
    rows = [_ips_json(view, history=False) | {"site": sites.get(view.pool)} for view in views]
    columns = ("address", "pool", "site", "state", "service_id", "quarantine_until")
    _emit(rows, as_json, lambda data: _table(data, columns))


@ips_app.command("show")
def ips_show(
    ctx: typer.Context, address: str, at: AtOption = None, as_json: JsonFlag = False
) -> None:
    """One address: its state, who holds it, and every change with who made it and why."""
    orchestrator = _orchestrator(ctx)
    try:
        with orchestrator.sessions() as session:
            view = ipam.show(session, address, parse_at(at))
    except ipam.IpamError as exc:
        raise _fail(str(exc)) from None
    _emit(_ips_json(view), as_json, _ips_show_render)


def _ips_show_render(data: dict[str, Any]) -> None:
    holder = data["service_id"] or data["last_service_id"] or "nobody"
    until = f" until {data['quarantine_until']}" if data["quarantine_until"] else ""
    out.print(
        Text.assemble(
            (data["address"], "bold"),
            f" ({data['pool']}): ",
            (data["state"], "bold"),
            redact_text(f"{until}; service {holder}"),
        ),
        highlight=False,
    )
    for h in data["history"]:
        service = f" ({h['service_id']})" if h["service_id"] else ""
        rest = f" until {h['until']}" if h["until"] else ""
        out.print(
            f"  {h['at']}  {h['from_state']} -> {h['to_state']}{rest}{service}"
            f" by {h['actor']}: {h['reason']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if not data["history"]:
        out.print("  unchanged since it was seeded")


@ips_app.command("release")
def ips_release(
    ctx: typer.Context, address: str, reason: ReasonOption = "released early", at: AtOption = None
) -> None:
    """End an address's quarantine now: anyone may get it next."""
    _ips_move(ctx, "released", at, reason, lambda s, c: ipam.release(s, address, c))


@ips_app.command("extend")
def ips_extend(
    ctx: typer.Context,
    address: str,
    until: Annotated[str, typer.Option(help="the quarantine's new end: a date or ISO time")],
    reason: ReasonOption = "quarantine extended",
    at: AtOption = None,
) -> None:
    """Move an address's quarantine end (a bare date means the end of that day)."""
    end = _ips_until(until)
    _ips_move(ctx, "extended", at, reason, lambda s, c: ipam.extend(s, address, end, c))


@ips_app.command("block")
def ips_block(
    ctx: typer.Context,
    address: str,
    reason: Annotated[str, typer.Option(help="why (abuse report, blocklist), for the history")],
    force: Annotated[
        bool, typer.Option("--force", help="also when it is assigned: takes it from its service")
    ] = False,
    at: AtOption = None,
) -> None:
    """Keep an address from everyone, e.g. while it sits on a blocklist."""
    _ips_move(ctx, "blocked", at, reason, lambda s, c: ipam.block(s, address, c, force=force))


@ips_app.command("unblock")
def ips_unblock(
    ctx: typer.Context, address: str, reason: ReasonOption = "unblocked", at: AtOption = None
) -> None:
    """Lift a block: back to the quarantine it interrupted if that lasts, else free."""
    _ips_move(ctx, "unblocked", at, reason, lambda s, c: ipam.unblock(s, address, c))


def _ips_move(
    ctx: typer.Context,
    verb: str,
    at: str | None,
    reason: str,
    move: Callable[[Session, ipam.Change], ipam.AddressView],
) -> None:
    """One operator move, its history and its audit entry in one transaction, or nothing."""
    orchestrator = _orchestrator(ctx)
    change = ipam.Change(parse_at(at), f"operator:{os.environ.get('USER', 'unknown')}", reason)
    try:
        with orchestrator.sessions.begin() as session:
            view = move(session, change)
            detail = {"reason": reason, "state": view.state, "until": view.quarantine_until}
            audit.append(session, change.at, change.actor, f"ip.{verb}", view.address, detail)
    except ipam.IpamError as exc:
        raise _fail(str(exc)) from None
    until = f" until {_local(view.quarantine_until)}" if view.quarantine_until else ""
    out.print(f"{view.address} {verb}: now {view.state}{until}", highlight=False)


def _ips_until(text: str) -> datetime:
    try:
        date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"--until {text!r} is neither a date (2026-12-06) nor an ISO time") from None
    return parse_at(text)


def _ips_json(view: ipam.AddressView, history: bool = True) -> dict[str, Any]:
    """Times on the operator's clock; a listing leaves out the (unread) history."""
    data = asdict(view)
    if not history:
        del data["history"]
    for key in ("quarantine_until", "changed_at"):
        data[key] = _local(data[key])
    for entry in data.get("history", []):
        entry["at"], entry["until"] = _local(entry["at"]), _local(entry["until"])
    return data


def _local(moment: datetime | None) -> str | None:
    return moment.astimezone(operator_zone()).isoformat() if moment is not None else None


# -- backups -----------------------------------------------------------------

backups_app = typer.Typer(no_args_is_help=True, help="Backups: the week's plan, copies, restores.")
app.add_typer(backups_app, name="backups")
WeekOption = Annotated[
    str | None, typer.Option("--week", help="the Monday the week starts (default: next Monday)")
]


def _week_start(text: str | None, now: datetime) -> date:
    """The Monday named, or the one after ``now`` on the operator's clock."""
    if text is None:
        today = now.astimezone(operator_zone()).date()
        return date.fromordinal(today.toordinal() + 7 - today.weekday())
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise _fail(f"--week {text!r} is not a date (2026-12-07)") from None
    if day.weekday() != 0:
        raise _fail(f"--week {text} is a {day:%A}; a backup week starts on a Monday")
    return day


@backups_app.command("plan")
def backups_plan(
    ctx: typer.Context,
    week: WeekOption = None,
    schedule: Annotated[bool, typer.Option(help="journal the backups at their slots")] = False,
    at: AtOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The week's backups per host inside their windows; exits 1 if any cannot fit.

    Without ``--schedule`` nothing changes: this is what the daemon will journal.
    """
    orchestrator, now = _orchestrator(ctx, migrate_store=schedule), parse_at(at)
    start = _week_start(week, now)
    if schedule:
        with _exclusive(ctx, orchestrator, "orchestrator backups plan --schedule"):
            planned = orchestrator.schedule_backups(start, now, actor="operator")
    else:
        planned = orchestrator.backup_plan(start)
    data = {
        "week": start.isoformat(),
        "journaled": planned.journaled,
        "slots": [
            {
                "service_id": s.job.service_id,
                "host": s.job.host,
                "storage": s.job.storage,
                "start": _local(s.start),
                "end": _local(s.end),
            }
            for s in planned.plan.slots
        ],
        "unfit": [
            {"service_id": u.job.service_id, "host": u.job.host, "reason": u.reason}
            for u in planned.plan.unfit
        ],
        "skipped": planned.skipped,
    }
    _emit(data, as_json, _backups_plan_render)
    if planned.plan.unfit:
        raise typer.Exit(1)


def _backups_plan_render(data: dict[str, Any]) -> None:
    _table(data["slots"], ("service_id", "host", "storage", "start", "end"))
    for unfit in data["unfit"]:
        err.print(
            f"cannot fit: {unfit['service_id']} on {unfit['host']}: {unfit['reason']}",
            highlight=False,
            markup=False,
        )
    for skipped in data["skipped"]:
        out.print(f"no backup: {skipped}", highlight=False, markup=False)
    if data["journaled"]:
        out.print(f"{data['journaled']} backups journaled for the week of {data['week']}")


@backups_app.command("list")
def backups_list(ctx: typer.Context, service: str, as_json: JsonFlag = False) -> None:
    """Every copy of a service's data the hypervisor holds, newest first, the archive too."""
    orchestrator = _orchestrator(ctx)
    try:
        copies = orchestrator.backups_of(service)
    except KeyError:
        raise _fail(f"unknown service {service!r}") from None
    except DriverError as exc:
        raise _fail(str(exc)) from None
    rows = [{**asdict(c), "taken_at": _local(c.taken_at)} for c in copies]
    _emit(
        rows,
        as_json,
        lambda data: _table(data, ("backup_id", "taken_at", "size", "protected", "archive")),
    )


@backups_app.command("prune")
def backups_prune(
    ctx: typer.Context,
    service: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would go, and why")] = False,
    at: AtOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Apply the policy's retention now; a hold on purging keeps every copy."""
    orchestrator = _orchestrator(ctx)
    try:
        outcome = orchestrator.prune_backups(service, parse_at(at), dry_run)
    except KeyError:
        raise _fail(f"unknown service {service!r}") from None
    except DriverError as exc:
        raise _fail(str(exc)) from None
    _emit(outcome, as_json, _backups_prune_render)


def _backups_prune_render(data: dict[str, Any]) -> None:
    out.print(f"retention: {data['rules']}", highlight=False)
    if data["held_by"]:
        out.print(f"nothing removed: held by {data['held_by']}", highlight=False)
    _table(data["decisions"], ("backup_id", "mark", "reason"))


@backups_app.command("restore")
def backups_restore(ctx: typer.Context, service: str, backup_id: str, at: AtOption = None) -> None:
    """Replace the service's machine and disk by one chosen backup's (journaled, run now)."""
    _backup_step_command(ctx, lambda o, now: o.restore_backup(service, backup_id, now), at)


@backups_app.command("verify")
def backups_verify(
    ctx: typer.Context,
    service: str,
    backup_id: Annotated[str | None, typer.Option(help="this backup, not the newest")] = None,
    at: AtOption = None,
) -> None:
    """Test restore: boot a backup in a scratch machine and see it start; exits 1 if not."""
    _backup_step_command(ctx, lambda o, now: o.verify_backup(service, now, backup_id), at)


def _backup_step_command(
    ctx: typer.Context, start: Callable[[Orchestrator, datetime], Any], at: str | None
) -> None:
    orchestrator = _orchestrator(ctx)
    try:
        report = start(orchestrator, parse_at(at))
    except KeyError as exc:
        raise _fail(f"unknown service or step: {exc}") from None
    out.print(
        f"step {report.step_id} {report.kind}: {report.state} {report.detail}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if report.state != journal.DONE:
        raise typer.Exit(1)


def main() -> None:
    app()


__all__ = ["app", "main", "parse_at"]
