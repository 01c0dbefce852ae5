"""The long-running faces and the tools: the daemon, the hooks API, the demo, policy files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.core.policy import load_policy, policy_schema
from orchestrator.core.yamlerrors import PolicyError
from orchestrator.faces.cli.common import JsonFlag, config, fail, orchestrator_of, read
from orchestrator.faces.cli.render import emit, err, out


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


def policy_schema_command() -> None:
    """The JSON Schema of policy files, for editors."""
    emit(policy_schema(), True)


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

    found = config(ctx)
    orchestrator_of(ctx)  # a broken policy or inventory stops the daemon before it starts
    configure_logging()
    daemon = DaemonConfig(
        found.db,
        str(found.policies),
        str(found.inventory),
        tick,
        sync_every,
        takeover,
        os.environ.get("ORCHESTRATOR_BILLING_URL"),
        orphan_grace_seconds=orphan_grace,
    )
    raise typer.Exit(run_daemon(daemon, stop_on_signals()))


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
        raise fail("no signing secret: set ORCHESTRATOR_HOOK_SECRETS or give --secrets-file")
    orchestrator = orchestrator_of(ctx, migrate_store=True)
    uvicorn.run(create_app(orchestrator, secrets), host=host, port=port, log_level="info")


def openapi() -> None:
    """The hooks API's OpenAPI document (kept in the repo as orchestrator/faces/openapi.json)."""
    from orchestrator.faces.api import openapi_document

    emit(openapi_document(), True)


def _hook_secrets(path: Path | None) -> list[bytes]:
    """Secrets come from a file or the environment, never the command line."""
    text = (
        read(path) if path else os.environ.get("ORCHESTRATOR_HOOK_SECRETS", "").replace(",", "\n")
    )
    return [line.strip().encode() for line in text.splitlines() if line.strip()]


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
        raise fail(f"unknown hypervisor {hypervisor!r} (choose {', '.join(HYPERVISORS)})")
    code = run_demo(
        workdir, config(ctx).policies, as_json=as_json, hypervisor=hypervisor, verbose=verbose
    )
    raise typer.Exit(code)
