"""What every command shares: the global options, the store, the clock, failing.

This is the outermost layer: the only place that reads the wall clock
(when ``--at`` is not given), the environment and files. A bare ``--at``
date means the end of that day on the operator's clock (``ORCHESTRATOR_TZ``,
WIB by default), so that "what happens on 6 December" includes everything
dated that day.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.text import Text

from orchestrator.core.inventory import load_inventory
from orchestrator.core.policy import load_policies
from orchestrator.core.yamlerrors import PolicyError, read_text
from orchestrator.engine import Orchestrator, operations
from orchestrator.engine.operations import OperationError
from orchestrator.faces.cli.render import err
from orchestrator.secrets.redact import redact_text

REPO = Path(__file__).resolve().parents[3]
# sysexits.h: a temporary failure, try again later (another run holds the leadership lock).
EX_TEMPFAIL = 75
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON")]
AtOption = Annotated[str | None, typer.Option("--at", help="a date or ISO time; default now")]
ReasonOption = Annotated[str, typer.Option("--reason", help="why, for the history and audit")]


@dataclass
class Config:
    db: str
    policies: Path
    inventory: Path
    # Who an operator's change is recorded as, in histories and the audit trail.
    actor: str


def main_options(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option(help="store URL (env ORCHESTRATOR_DB)")] = None,
    policies: Annotated[Path | None, typer.Option(help="policy directory")] = None,
    inventory: Annotated[Path | None, typer.Option(help="inventory file")] = None,
) -> None:
    ctx.obj = Config(
        operations.database_url(db),
        policies or Path(os.environ.get("ORCHESTRATOR_POLICIES", REPO / "inventory" / "policies")),
        inventory
        or Path(os.environ.get("ORCHESTRATOR_INVENTORY", REPO / "inventory" / "lab.yaml")),
        f"operator:{os.environ.get('USER', 'unknown')}",
    )


def config(ctx: typer.Context) -> Config:
    found: Config = ctx.obj
    return found


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(Text.assemble(("error:", "red"), " ", redact_text(message)), highlight=False)
    return typer.Exit(code)


def orchestrator_of(ctx: typer.Context, migrate_store: bool = False) -> Orchestrator:
    """The orchestrator on the configured store, policies and inventory; any of them
    broken stops the command with the reason."""
    found = config(ctx)
    if not found.policies.is_dir():
        raise fail(f"--policies {found.policies}: no such directory")
    try:
        policies = load_policies(found.policies)
        inventory = load_inventory(found.inventory)
        return operations.open_orchestrator(
            found.db, policies, inventory, migrate_store=migrate_store
        )
    except (PolicyError, OperationError) as exc:
        raise fail(str(exc)) from None


@contextmanager
def exclusive(ctx: typer.Context, orchestrator: Orchestrator, role: str) -> Iterator[None]:
    """A run that writes takes the daemon's leadership lock (one writer at a time); when
    another holds it, exit at once with EX_TEMPFAIL and who holds it, for cron's mail."""
    db = config(ctx).db
    leadership = operations.leadership_for(db, role)
    if not leadership.acquire():
        raise fail(f"{role} not run: the store is led by {operations.holder_of(db)}", EX_TEMPFAIL)
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
        raise fail(f"--at {text!r} is neither a date (2026-12-06) nor an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=operator_zone())


def local(moment: datetime | None) -> str | None:
    """A time on the operator's clock."""
    return moment.astimezone(operator_zone()).isoformat() if moment is not None else None


def read(path: Path) -> str:
    try:
        return read_text(path)
    except PolicyError as exc:
        raise fail(str(exc)) from None


def stdin() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"stdin: not UTF-8 text (byte {exc.start})") from None
