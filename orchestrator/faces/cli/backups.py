"""Backups: the week's plan, the copies a hypervisor holds, retention, restores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

import typer

from drivers.base import DriverError
from orchestrator.engine import Orchestrator, operations
from orchestrator.faces.cli.common import (
    AtOption,
    JsonFlag,
    exclusive,
    fail,
    local,
    operator_zone,
    orchestrator_of,
    parse_at,
)
from orchestrator.faces.cli.render import columns, emit, err, out, table

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
        raise fail(f"--week {text!r} is not a date (2026-12-07)") from None
    if day.weekday() != 0:
        raise fail(f"--week {text} is a {day:%A}; a backup week starts on a Monday")
    return day


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
    orchestrator, now = orchestrator_of(ctx, migrate_store=schedule), parse_at(at)
    start = _week_start(week, now)
    if schedule:
        with exclusive(ctx, orchestrator, "orchestrator backups plan --schedule"):
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
                "start": local(s.start),
                "end": local(s.end),
            }
            for s in planned.plan.slots
        ],
        "unfit": [
            {"service_id": u.job.service_id, "host": u.job.host, "reason": u.reason}
            for u in planned.plan.unfit
        ],
        "skipped": planned.skipped,
    }
    emit(data, as_json, _backups_plan_render)
    if planned.plan.unfit:
        raise typer.Exit(1)


def _backups_plan_render(data: dict[str, Any]) -> None:
    table(data["slots"], ("service_id", "host", "storage", "start", "end"))
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


def _of_service(find: Callable[[], Any], service: str) -> Any:
    """A backup use-case's answer; an unknown service or a driver's refusal stops here."""
    try:
        return find()
    except KeyError:
        raise fail(f"unknown service {service!r}") from None
    except DriverError as exc:
        raise fail(str(exc)) from None


def backups_list(ctx: typer.Context, service: str, as_json: JsonFlag = False) -> None:
    """Every copy of a service's data the hypervisor holds, newest first, the archive too."""
    orchestrator = orchestrator_of(ctx)
    copies = _of_service(lambda: orchestrator.backups_of(service), service)
    rows = [{**asdict(c), "taken_at": local(c.taken_at)} for c in copies]
    emit(rows, as_json, columns("backup_id", "taken_at", "size", "protected", "archive"))


def backups_prune(
    ctx: typer.Context,
    service: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would go, and why")] = False,
    at: AtOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Apply the policy's retention now; a hold on purging keeps every copy."""
    orchestrator, now = orchestrator_of(ctx), parse_at(at)
    outcome = _of_service(lambda: orchestrator.prune_backups(service, now, dry_run), service)
    emit(outcome, as_json, _backups_prune_render)


def _backups_prune_render(data: dict[str, Any]) -> None:
    out.print(f"retention: {data['rules']}", highlight=False)
    if data["held_by"]:
        out.print(f"nothing removed: held by {data['held_by']}", highlight=False)
    table(data["decisions"], ("backup_id", "mark", "reason"))


def backups_restore(ctx: typer.Context, service: str, backup_id: str, at: AtOption = None) -> None:
    """Replace the service's machine and disk by one chosen backup's (journaled, run now)."""
    _backup_step_command(ctx, lambda o, now: o.restore_backup(service, backup_id, now), at)


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
    orchestrator = orchestrator_of(ctx)
    try:
        report = start(orchestrator, parse_at(at))
    except KeyError as exc:
        raise fail(f"unknown service or step: {exc}") from None
    out.print(
        f"step {report.step_id} {report.kind}: {report.state} {report.detail}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if report.state != operations.DONE:
        raise typer.Exit(1)
