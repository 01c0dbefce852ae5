"""The records: the journal of steps, notifications, the audit trail, the breaker, erasures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.engine import operations
from orchestrator.engine.operations import OperationError
from orchestrator.faces.cli.common import (
    AtOption,
    JsonFlag,
    config,
    fail,
    orchestrator_of,
    parse_at,
)
from orchestrator.faces.cli.render import columns, emit, out
from orchestrator.secrets import evidence


def audit_verify(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Check the keyed chain and the exported checkpoints; exits 1 if anything was changed
    or removed, or when no audit key is configured (then nothing can be vouched for)."""
    data = operations.verify_audit(orchestrator_of(ctx))
    emit(data, as_json, _audit_render)
    if not data["ok"]:
        raise typer.Exit(1)


def _audit_render(data: dict[str, Any]) -> None:
    summary = f"{data['entries']} entries, {data['checkpoints']} checkpoints: "
    out.print(summary + ("intact" if data["ok"] else "NOT intact"), highlight=False)
    for problem in data["problems"]:
        out.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)


def breaker_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    status = operations.breaker_status(orchestrator_of(ctx))
    emit(
        {"open": status is not None, "detail": status},
        as_json,
        lambda d: out.print(d["detail"] or "closed"),
    )


def breaker_reset(ctx: typer.Context, at: AtOption = None) -> None:
    orchestrator = orchestrator_of(ctx)
    was_open = operations.reset_breaker(orchestrator, config(ctx).actor, parse_at(at))
    out.print("breaker reset" if was_open else "breaker was closed")


def steps_list(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """The journal: every step with its state and outcome."""
    rows = operations.steps(orchestrator_of(ctx), service)
    emit(rows, as_json, columns("id", "service", "kind", "state", "created_at", "error"))


def steps_show(ctx: typer.Context, step_id: int, as_json: JsonFlag = False) -> None:
    """One step whole: parameters, outcome, evidence, error."""
    try:
        data = operations.step(orchestrator_of(ctx), step_id)
    except OperationError as exc:
        raise fail(str(exc)) from None
    emit(data, True)


def steps_retry(ctx: typer.Context, step_id: int, at: AtOption = None) -> None:
    """Run a failed, held, paused or waiting step again at the next apply (guards still apply)."""
    _operator_step_change(ctx, step_id, "retried", at)


def steps_cancel(ctx: typer.Context, step_id: int, at: AtOption = None) -> None:
    """Cancel a step that has not run; reconcile may plan it again if it is still needed."""
    _operator_step_change(ctx, step_id, "cancelled", at)


def _operator_step_change(ctx: typer.Context, step_id: int, verb: str, at: str | None) -> None:
    orchestrator = orchestrator_of(ctx)
    try:
        operations.change_step(orchestrator, step_id, verb, parse_at(at), config(ctx).actor)
    except OperationError as exc:
        raise fail(str(exc)) from None
    out.print(f"step {step_id} {verb}")


def notifications_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="pending, delivered or dead")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Queued, delivered and dead-lettered notifications, oldest first."""
    rows = operations.notifications(orchestrator_of(ctx), state)
    emit(rows, as_json, columns("id", "service", "kind", "state", "attempts", "last_error"))


def notifications_replay(ctx: typer.Context, notification_id: int, at: AtOption = None) -> None:
    """Put a dead letter back in the queue."""
    orchestrator = orchestrator_of(ctx)
    try:
        operations.replay_notification(
            orchestrator, notification_id, parse_at(at), config(ctx).actor
        )
    except OperationError as exc:
        raise fail(str(exc)) from None
    out.print(f"notification {notification_id} queued again")


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
        raise fail(f"cannot use {public_key} as the public key: {exc}") from None
    records = operations.erase_records(orchestrator_of(ctx), step_id)
    if not records:
        raise fail(f"step {step_id} holds no erase records")
    checked = [
        {
            **{k: signed["record"].get(k) for k in ("device", "serial", "method", "result")},
            "signer": signed.get("signer"),
            "signature": evidence.verify(signed, key),
        }
        for signed in records
    ]
    emit(checked, as_json, columns("device", "serial", "method", "result", "signer", "signature"))
    if not all(item["signature"] for item in checked):
        raise typer.Exit(1)
