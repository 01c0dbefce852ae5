"""Output: the redacting consoles, JSON, and the tables the commands print.

Every read command takes ``--json``; without it, a renderer prints the same
data for a person.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.secrets.redact import redact_text


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


def emit(data: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    """JSON on stdout when asked for (or when there is no renderer), else the rendering."""
    if as_json or render is None:
        sys.stdout.write(redact_text(json.dumps(data, indent=2, default=str)) + "\n")
    else:
        render(data)


def table(
    rows: Iterable[dict[str, Any]], columns: tuple[str, ...], title: str | None = None
) -> None:
    """One row per dict, one column per key named; None shows as an empty cell."""
    shown = Table(title=title)
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*(str(row[c] if row[c] is not None else "") for c in columns))
    out.print(shown)


def columns(*names: str) -> Callable[[list[dict[str, Any]]], None]:
    """A renderer of a listing as a table of these columns."""
    return lambda rows: table(rows, names)


def lines(console: Console, items: Iterable[str], prefix: str = "") -> None:
    """Text from drivers and operators, one a line, never read as markup."""
    for item in items:
        console.print(f"{prefix}{item}", highlight=False, markup=False, soft_wrap=True)
