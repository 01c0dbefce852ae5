"""IP addresses: states, history, and an operator's moves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from orchestrator.engine import operations
from orchestrator.engine.operations import OperationError
from orchestrator.faces.cli.common import (
    AtOption,
    JsonFlag,
    ReasonOption,
    config,
    fail,
    local,
    orchestrator_of,
    parse_at,
)
from orchestrator.faces.cli.render import columns, emit, out
from orchestrator.secrets.redact import redact_text

LIST_COLUMNS = ("address", "pool", "site", "state", "service_id", "quarantine_until")


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
    orchestrator = orchestrator_of(ctx)
    if state is not None and state not in operations.IP_STATES:
        raise fail(f"unknown state {state!r} (states: {', '.join(operations.IP_STATES)})")
    views = operations.ip_listing(orchestrator, parse_at(at), pool, state)
    pools = orchestrator.inventory.pools
    if pool is not None and not views and pool not in pools:
        raise fail(f"unknown pool {pool!r} (known: {', '.join(pools)})")
    sites = {name: found.site for name, found in pools.items()}
    rows = [_ips_json(view, history=False) | {"site": sites.get(view.pool)} for view in views]
    emit(rows, as_json, columns(*LIST_COLUMNS))


def ips_show(
    ctx: typer.Context, address: str, at: AtOption = None, as_json: JsonFlag = False
) -> None:
    """One address: its state, who holds it, and every change with who made it and why."""
    orchestrator = orchestrator_of(ctx)
    try:
        view = operations.ip_show(orchestrator, address, parse_at(at))
    except OperationError as exc:
        raise fail(str(exc)) from None
    emit(_ips_json(view), as_json, _ips_show_render)


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


def ips_extend(
    ctx: typer.Context,
    address: str,
    until: Annotated[str, typer.Option(help="the quarantine's new end: a date or ISO time")],
    reason: ReasonOption = "quarantine extended",
    at: AtOption = None,
) -> None:
    """Move an address's quarantine end (a bare date means the end of that day)."""
    _ips_move(ctx, "extended", address, at, reason, until=_ips_until(until))


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
    _ips_move(ctx, "blocked", address, at, reason, force=force)


def _plain_move(verb: str, default_reason: str, doc: str) -> Callable[..., None]:
    """A move that needs nothing but the address, the reason and the moment."""

    def command(
        ctx: typer.Context, address: str, reason: ReasonOption = default_reason, at: AtOption = None
    ) -> None:
        _ips_move(ctx, verb, address, at, reason)

    command.__doc__ = doc
    return command


ips_release = _plain_move(
    "released", "released early", "End an address's quarantine now: anyone may get it next."
)
ips_unblock = _plain_move(
    "unblocked",
    "unblocked",
    "Lift a block: back to the quarantine it interrupted if that lasts, else free.",
)


def _ips_move(
    ctx: typer.Context,
    verb: str,
    address: str,
    at: str | None,
    reason: str,
    until: datetime | None = None,
    force: bool = False,
) -> None:
    """One operator move, its history and its audit entry in one transaction, or nothing."""
    orchestrator = orchestrator_of(ctx)
    change = (parse_at(at), config(ctx).actor, reason)
    try:
        view = operations.move_ip(orchestrator, verb, address, change, until, force)
    except OperationError as exc:
        raise fail(str(exc)) from None
    until_text = f" until {local(view.quarantine_until)}" if view.quarantine_until else ""
    out.print(f"{view.address} {verb}: now {view.state}{until_text}", highlight=False)


def _ips_until(text: str) -> datetime:
    try:
        date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--until {text!r} is neither a date (2026-12-06) nor an ISO time") from None
    return parse_at(text)


def _ips_json(view: Any, history: bool = True) -> dict[str, Any]:
    """Times on the operator's clock; a listing leaves out the (unread) history."""
    data = asdict(view)
    if not history:
        del data["history"]
    for key in ("quarantine_until", "changed_at"):
        data[key] = local(data[key])
    for entry in data.get("history", []):
        entry["at"], entry["until"] = local(entry["at"]), local(entry["until"])
    return data
