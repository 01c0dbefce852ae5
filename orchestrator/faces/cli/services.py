"""Services: what happens to whom and why, holds, and running what is due."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from orchestrator.core.events import Event, EventError, parse_events
from orchestrator.engine import operations
from orchestrator.faces.cli.common import (
    AtOption,
    JsonFlag,
    ReasonOption,
    config,
    exclusive,
    fail,
    local,
    orchestrator_of,
    parse_at,
)
from orchestrator.faces.cli.render import emit, err, out, table
from orchestrator.faces.views import verdict_json
from orchestrator.secrets.redact import redact_text


def init(ctx: typer.Context) -> None:
    """Create or upgrade the store and load the inventory's IP pools."""
    orchestrator = orchestrator_of(ctx, migrate_store=True)
    added = orchestrator.seed_pools()
    out.print(
        f"store ready at {config(ctx).db}; {added} new addresses in "
        f"{len(orchestrator.inventory.pools)} pools; {len(orchestrator.policies)} policies"
    )


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
        for p in orchestrator_of(ctx).plan(moment)
    ]
    emit({"at": moment.isoformat(), "services": rows}, as_json, _plan_table)


def _plan_table(data: dict[str, Any]) -> None:
    rows = [
        row
        | {
            "steps": ", ".join(s["action"] for s in row["steps"]),
            "why": "; ".join(dict.fromkeys(s["why"] for s in row["steps"])),
        }
        for row in data["services"]
    ]
    table(rows, ("service", "policy", "phase", "steps", "why"), title=f"plan at {data['at']}")


def explain(
    ctx: typer.Context, service: str, at: AtOption = None, as_json: JsonFlag = False
) -> None:
    """A service's phase, reasons and dated timeline, with the clause behind each step."""
    orchestrator = orchestrator_of(ctx)
    try:
        facts = orchestrator.facts(service)
    except KeyError:
        raise fail(f"unknown service {service!r}") from None
    moment = parse_at(at)
    data = verdict_json(service, orchestrator.verdict(facts, moment), facts.policy)
    emit(data, as_json, _explain_render)


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
    timeline = Table()
    for column in ("day", "step", "phase", "clause", "if paid after"):
        timeline.add_column(column)
    for e in data["timeline"]:
        cells = (e["day"] + _mark(e), e["step"], e["phase"], e["clause"])
        timeline.add_row(*(Text(c) for c in (*cells, "; ".join(e["if_paid_after"]))))
    out.print(timeline)
    for item in data["attention"]:
        out.print(f"  needs attention: {item}", highlight=False, markup=False)


def _mark(entry: dict[str, Any]) -> str:
    """Whether a timeline entry is reached, ahead, held or delayed."""
    mark = (
        ""
        if entry["reached"]
        else " (ahead)"
        if not entry["blocked_by"]
        else f" (held: {entry['blocked_by']})"
    )
    if entry["delayed_by"]:
        mark += f" (delayed by {entry['delayed_by']})"
    return mark


SERVICE_COLUMNS = ("service", "customer", "policy", "product", "phase", "applied", "next_at")


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
    found = operations.services(orchestrator_of(ctx), needs_attention)
    rows = [row | {"next_at": local(row["next_at"])} for row in found]
    emit(rows, as_json, _services_table)


def _services_table(rows: list[dict[str, Any]]) -> None:
    shown = [row | {"attention": "; ".join(row["attention"])} for row in rows]
    table(shown, (*SERVICE_COLUMNS, "attention"))


def services_reprovision(
    ctx: typer.Context, service: str, reason: ReasonOption = "", at: AtOption = None
) -> None:
    """Give a service whose data was purged a fresh machine (its data cannot come back)."""
    operator_event(ctx, service, {"type": "service.reprovision", "reason": reason}, at)
    out.print(f"{service}: a fresh machine at the next apply", highlight=False, markup=False)


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
    operator_event(ctx, service, data, at)
    out.print(f"placed {kind} hold {hold_id} on {service}")


def hold_remove(ctx: typer.Context, service: str, hold_id: str, at: AtOption = None) -> None:
    """Release a hold by its id (see ``explain``); an id the service does not hold is refused."""
    try:
        holds = [hold.id for hold in orchestrator_of(ctx).facts(service).holds]
    except KeyError:
        raise fail(f"unknown service {service!r}") from None
    if hold_id not in holds:
        known = ", ".join(holds) or "none"
        raise fail(f"{service} has no hold {hold_id!r} (its holds: {known})")
    operator_event(ctx, service, {"type": "hold.released", "hold": hold_id}, at)
    out.print(f"released hold {hold_id} on {service}")


def operator_event(ctx: typer.Context, service: str, data: dict[str, Any], at: str | None) -> None:
    """An operator's fact about a service, taken in as billing's events are."""
    moment = parse_at(at)
    raw = {
        "id": f"op-{uuid.uuid4().hex}",
        "service": service,
        "at": moment.isoformat(),
        "data": data,
    }
    try:
        events: list[Event] = parse_events(json.dumps(raw))
        orchestrator_of(ctx).ingest(events, moment, actor=config(ctx).actor)
    except EventError as exc:
        raise fail(str(exc)) from None


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
    orchestrator = orchestrator_of(ctx, migrate_store=True)
    with exclusive(ctx, orchestrator, "orchestrator apply"):
        report = orchestrator.apply(parse_at(at), yes=yes, actor="cli")
    data = {
        "planned": report.planned,
        "skipped": report.skipped,
        "steps": [asdict(step) for step in report.steps],
    }
    emit(data, as_json, _apply_render)
    if any(step.state == "failed" for step in report.steps):
        raise typer.Exit(1)


def _apply_render(data: dict[str, Any]) -> None:
    columns = ("step_id", "service_id", "kind", "state", "detail")
    shown = Table(title=f"{data['planned']} steps journaled")
    for column in ("step", "service", "action", "state", "detail"):
        shown.add_column(column)
    for step in data["steps"]:
        shown.add_row(*(str(step[c]) if c == "step_id" else step[c] for c in columns))
    out.print(shown)
    for line in data["skipped"]:
        err.print(f"skipped: {line}", highlight=False, markup=False)


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
    orchestrator = orchestrator_of(ctx, migrate_store=mark)
    now = parse_at(at)
    if mark:
        with exclusive(ctx, orchestrator, "orchestrator drift --mark"):
            found = orchestrator.drift(now)
            orchestrator.sync(now)
    else:
        found = orchestrator.drift(now)
    rows = [{**asdict(d), "corrections": " ".join(d.corrections)} for d in found]
    columns = ("service_id", "host", "phase", "observed", "corrections")
    emit(rows, as_json, lambda data: table(data, columns) if data else out.print("no drift"))
    if found:
        raise typer.Exit(1)


def colo_due(ctx: typer.Context, at: AtOption = None, as_json: JsonFlag = False) -> None:
    """Colocated boxes whose hand-over deadline has come: to collect, never to wipe.

    Each with its deadline, the hand_over step's state in the journal (not
    journaled yet, awaiting ``apply --yes``, done) and any hold keeping it back.
    """
    found = orchestrator_of(ctx).hand_overs(parse_at(at))
    rows = [{**asdict(h), "deadline": local(h.deadline)} for h in found]
    columns = ("service_id", "customer", "host", "uplink", "deadline", "step", "blocked_by")
    emit(
        rows, as_json, lambda data: table(data, columns) if data else out.print("no hand-over due")
    )
