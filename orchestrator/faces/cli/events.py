"""Billing events: taking them in, and the payments held for review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.core.events import EventError, parse_events
from orchestrator.engine import operations
from orchestrator.faces.cli import common
from orchestrator.faces.cli.common import AtOption, JsonFlag, ReasonOption
from orchestrator.faces.cli.render import emit, out, table

REVIEW_COLUMNS = ("event", "service", "invoice", "received", "state", "resolution")


def event(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="a JSON file of events, or - for stdin")] = "-",
    at: AtOption = None,
) -> None:
    """Take in billing events (one object, an array, or one per line); replays are ignored."""
    raw = common.stdin() if source == "-" else common.read(Path(source))
    try:
        events = parse_events(raw)
        report = common.orchestrator_of(ctx).ingest(events, common.parse_at(at), actor="cli")
    except EventError as exc:
        raise common.fail(f"nothing was stored: {exc}") from None
    out.print(f"{len(report.accepted)} accepted, {len(report.duplicates)} already known")


def events_unmatched(
    ctx: typer.Context,
    include_resolved: Annotated[bool, typer.Option("--all", help="resolved ones too")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Payments naming an invoice the service does not have: each holds its service's
    destructive steps until matched (``events match``) or discarded (``events discard``)."""
    found = operations.payment_reviews(common.orchestrator_of(ctx), include_resolved)
    rows = [row | {"received": common.local(row["received"])} for row in found]
    emit(rows, as_json, _unmatched_table)


def _unmatched_table(rows: list[dict[str, Any]]) -> None:
    table(rows, REVIEW_COLUMNS, title=f"{len(rows)} payments held for review")


def events_match(ctx: typer.Context, event_id: str, invoice: str, at: AtOption = None) -> None:
    """Settle an invoice of the service with a payment under review."""
    _resolve_payment(ctx, event_id, invoice, "", at)
    out.print(f"{event_id} matched to invoice {invoice}", highlight=False, markup=False)


def events_discard(
    ctx: typer.Context, event_id: str, reason: ReasonOption = "", at: AtOption = None
) -> None:
    """Drop a payment under review (a mistake of billing's); its hold ends."""
    _resolve_payment(ctx, event_id, None, reason, at)
    out.print(f"{event_id} discarded", highlight=False, markup=False)


def _resolve_payment(
    ctx: typer.Context, event_id: str, invoice: str | None, reason: str, at: str | None
) -> None:
    orchestrator, actor = common.orchestrator_of(ctx), common.config(ctx).actor
    try:
        orchestrator.resolve_payment(event_id, common.parse_at(at), actor, invoice, reason)
    except EventError as exc:
        raise common.fail(str(exc)) from None
