"""The operator's command line: ``orchestrator --help``. This module is its command
table only: each command lives in the module of its group (``services``,
``events``, ``records``, ``ips``, ``backups``, ``serve``), output in ``render``,
what they share (options, the store, the clock) in ``common``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from orchestrator.faces.cli import backups, events, ips, records, serve, services
from orchestrator.faces.cli.common import EX_TEMPFAIL, main_options, parse_at

app = typer.Typer(no_args_is_help=True, help="Applies billing state to hosting infrastructure.")
app.callback()(main_options)

# Each group's help, in the order ``--help`` lists them.
GROUPS = {
    "policy": "Check and describe policy files.",
    "services": "The services the orchestrator knows.",
    "hold": "Place and release holds.",
    "audit": "The hash-chained audit trail.",
    "breaker": "The blast-radius breaker.",
    "steps": "The journal of steps.",
    "notifications": "What the billing system is told.",
    "erase": "Signed erase records of purged disks.",
    "colo": "Colocated hardware, the customers' own.",
    "events": "Payments held for review, and resolving them.",
    "ips": "IP addresses: states, history, operator moves.",
    "backups": "Backups: the week's plan, copies, restores.",
}
# Every command: "group command" or, at the top level, "command".
COMMANDS: dict[str, Callable[..., Any]] = {
    "policy check": serve.policy_check,
    "policy schema": serve.policy_schema_command,
    "services list": services.services_list,
    "services reprovision": services.services_reprovision,
    "hold add": services.hold_add,
    "hold remove": services.hold_remove,
    "audit verify": records.audit_verify,
    "breaker status": records.breaker_status,
    "breaker reset": records.breaker_reset,
    "steps list": records.steps_list,
    "steps show": records.steps_show,
    "steps retry": records.steps_retry,
    "steps cancel": records.steps_cancel,
    "notifications list": records.notifications_list,
    "notifications replay": records.notifications_replay,
    "erase verify": records.erase_verify,
    "colo due": services.colo_due,
    "events unmatched": events.events_unmatched,
    "events match": events.events_match,
    "events discard": events.events_discard,
    "ips list": ips.ips_list,
    "ips show": ips.ips_show,
    "ips release": ips.ips_release,
    "ips extend": ips.ips_extend,
    "ips block": ips.ips_block,
    "ips unblock": ips.ips_unblock,
    "backups plan": backups.backups_plan,
    "backups list": backups.backups_list,
    "backups prune": backups.backups_prune,
    "backups restore": backups.backups_restore,
    "backups verify": backups.backups_verify,
    "init": services.init,
    "event": events.event,
    "plan": services.plan,
    "explain": services.explain,
    "apply": services.apply,
    "drift": services.drift,
    "run": serve.run,
    "serve": serve.serve,
    "openapi": serve.openapi,
    "demo": serve.demo,
}


def _wire() -> None:
    subs = {name: typer.Typer(no_args_is_help=True, help=text) for name, text in GROUPS.items()}
    for path, function in COMMANDS.items():
        group, _, name = path.rpartition(" ")
        (subs[group] if group else app).command(name)(function)
    for name, sub in subs.items():
        app.add_typer(sub, name=name)


_wire()


def main() -> None:
    app()


__all__ = ["EX_TEMPFAIL", "app", "main", "parse_at"]
