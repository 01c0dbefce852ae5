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

Command = tuple[str, Callable[..., Any]]
# group name, its help, and its commands: (command name, function)
GROUPS: list[tuple[str, str, list[Command]]] = [
    (
        "policy",
        "Check and describe policy files.",
        [("check", serve.policy_check), ("schema", serve.policy_schema_command)],
    ),
    (
        "services",
        "The services the orchestrator knows.",
        [("list", services.services_list), ("reprovision", services.services_reprovision)],
    ),
    (
        "hold",
        "Place and release holds.",
        [("add", services.hold_add), ("remove", services.hold_remove)],
    ),
    ("audit", "The hash-chained audit trail.", [("verify", records.audit_verify)]),
    (
        "breaker",
        "The blast-radius breaker.",
        [("status", records.breaker_status), ("reset", records.breaker_reset)],
    ),
    (
        "steps",
        "The journal of steps.",
        [
            ("list", records.steps_list),
            ("show", records.steps_show),
            ("retry", records.steps_retry),
            ("cancel", records.steps_cancel),
        ],
    ),
    (
        "notifications",
        "What the billing system is told.",
        [("list", records.notifications_list), ("replay", records.notifications_replay)],
    ),
    ("erase", "Signed erase records of purged disks.", [("verify", records.erase_verify)]),
    ("colo", "Colocated hardware, the customers' own.", [("due", services.colo_due)]),
    (
        "events",
        "Payments held for review, and resolving them.",
        [
            ("unmatched", events.events_unmatched),
            ("match", events.events_match),
            ("discard", events.events_discard),
        ],
    ),
    (
        "ips",
        "IP addresses: states, history, operator moves.",
        [
            ("list", ips.ips_list),
            ("show", ips.ips_show),
            ("release", ips.ips_release),
            ("extend", ips.ips_extend),
            ("block", ips.ips_block),
            ("unblock", ips.ips_unblock),
        ],
    ),
    (
        "backups",
        "Backups: the week's plan, copies, restores.",
        [
            ("plan", backups.backups_plan),
            ("list", backups.backups_list),
            ("prune", backups.backups_prune),
            ("restore", backups.backups_restore),
            ("verify", backups.backups_verify),
        ],
    ),
]
COMMANDS: list[Command] = [
    ("init", services.init),
    ("event", events.event),
    ("plan", services.plan),
    ("explain", services.explain),
    ("apply", services.apply),
    ("drift", services.drift),
    ("run", serve.run),
    ("serve", serve.serve),
    ("openapi", serve.openapi),
    ("demo", serve.demo),
]

for group, help_text, commands in GROUPS:
    sub = typer.Typer(no_args_is_help=True, help=help_text)
    for name, function in commands:
        sub.command(name)(function)
    app.add_typer(sub, name=group)
for name, function in COMMANDS:
    app.command(name)(function)


def main() -> None:
    app()


__all__ = ["EX_TEMPFAIL", "app", "main", "parse_at"]
