"""How the demo tells its story: the hosts it runs on, a line per simulated day, a story per policy.

The demo (``demo.py``) decides what happens; this module only says it, on a
console that is the terminal (with a live bar), a pipe (plain lines, flushed
as each simulated day ends) or, for ``--json``, stderr while the JSON
document goes to stdout.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, tzinfo
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from orchestrator.engine import ApplyReport

# Billing events worth a word in the story, and that word.
SHOWN_EVENTS = {
    "invoice.paid": "paid",
    "service.renewed": "renewed",
    "deposit.changed": "deposit",
    "service.cancelled": "closed",
}
WIDTH = 160


@dataclass(frozen=True)
class Peer:
    """Where a product's services really ran, said plainly when a host stands in."""

    product: str
    host: str
    driver: str
    uri: str
    stands_in_for: str | None
    # suspend methods the policies ask for -> the method that runs on this driver
    methods: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        where = f"{self.product:<12} on {self.host:<12} {self.driver} at {self.uri}"
        if self.stands_in_for is None:
            return where
        changed = [f"{asked} runs as {ran}" for asked, ran in self.methods.items() if asked != ran]
        return f"{where}, a stand-in for the {self.stands_in_for} driver" + "".join(
            f"; {change}" for change in changed
        )


@dataclass(frozen=True)
class Report:
    """What the demo found, read back from the journal: the peers it ran on, every event
    and step (``history``), one story per policy, and the timeline mismatches."""

    peers: list[Peer]
    history: list[dict[str, Any]]
    stories: dict[str, list[dict[str, Any]]]
    problems: list[str]


@dataclass(frozen=True)
class Output:
    """Where the demo writes: the result, and the progress (stderr when the result is JSON)."""

    result: Console
    progress: Console


def output(as_json: bool) -> Output:
    result = Console(width=WIDTH)
    return Output(result, Console(width=WIDTH, stderr=True) if as_json else result)


def print_peers(console: Console, peers: list[Peer]) -> None:
    console.print("products and the hosts, drivers and peers they run on:", highlight=False)
    for peer in peers:
        console.print(f"  {escape(peer.line())}", highlight=False, soft_wrap=True)


class DayProgress:
    """One line per simulated day that had work, flushed as it ends; on a terminal, a live bar.

    The lab's real guests make a run take minutes, so the operator sees each
    day go by instead of waiting in silence for the summary.
    """

    def __init__(self, console: Console, start: date, days: int, zone: tzinfo) -> None:
        self.console, self.start, self.days, self.zone = console, start, days, zone
        self.day: date | None = None
        self.steps: Counter[str] = Counter()
        self.events = 0
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> DayProgress:
        if self.console.is_terminal:
            self.bar = Progress(
                SpinnerColumn(),  # alive while one apply creates the lab's guests for minutes
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.bar.add_task("simulated days", total=self.days)
            self.bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._flush()
        if self.bar is not None:
            self.bar.stop()

    def note(self, what: str) -> None:
        """What the demo is doing before the first simulated day (finding a hypervisor, ...)."""
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, description=what)

    def applying(self, now: datetime) -> None:
        """An apply at ``now`` starts: on the lab it may create guests for minutes."""
        day = self._move_to(now)
        done = ", ".join(f"{kind} {n}" for kind, n in self.steps.items())
        self.note(f"{day}: applying the steps due" + (f" (done: {done})" if done else ""))

    def arrived(self, now: datetime, count: int) -> None:
        """Billing events came in at ``now``."""
        self._move_to(now)
        self.events += count

    def applied(self, now: datetime, report: ApplyReport) -> None:
        """An apply at ``now`` ran these steps."""
        day = self._move_to(now)
        self.steps.update(_step_label(step.kind, step.state) for step in report.steps)
        if self.bar is not None and self.task is not None:
            done = ", ".join(f"{kind} {n}" for kind, n in self.steps.items())
            self.bar.update(self.task, description=f"{day}: {done or 'nothing done yet'}")

    def _move_to(self, now: datetime) -> date:
        """The day on the policies' clock; a new one flushes the line of the last."""
        day = now.astimezone(self.zone).date()
        if day != self.day:
            self._flush()
            self.day = day
            if self.bar is not None and self.task is not None:
                self.bar.update(self.task, completed=(day - self.start).days)
        return day

    def _flush(self) -> None:
        if self.day is None or not (self.steps or self.events):
            return
        steps = ", ".join(f"{kind} {n}" for kind, n in sorted(self.steps.items()))
        billing = f"; {self.events} billing events" if self.events else ""
        number = (self.day - self.start).days + 1
        self.console.print(
            f"{self.day}  day {number:>2}/{self.days}  {steps or 'no steps'}{billing}",
            highlight=False,
            soft_wrap=True,
        )
        self.steps, self.events = Counter(), 0


def _step_label(kind: str, state: str) -> str:
    return kind if state == "done" else f"{kind} ({state})"


def word(h: dict[str, Any]) -> str:
    """A history row in a word or two; a suspension says how, and how it really ran."""
    action: str = h["action"]
    if action.startswith("billing: "):
        return SHOWN_EVENTS[action.removeprefix("billing: ")]
    if h["method"] and h["ran"] and h["ran"] != h["method"]:
        return f"{action} {h['method']}→{h['ran']}"
    return f"{action} {h['method']}" if h["method"] else action


def _story_line(entry: dict[str, Any]) -> str:
    days = " · ".join(f"{d['day'][5:]} {', '.join(d['what'])}" for d in entry["days"])
    return f"  {entry['product']:<12} {entry['story']:<10} {days or 'nothing after the set-up'}"


def print_story(console: Console, report: Report, verbose: bool) -> None:
    """A screen per policy at most: a header, then one line per customer; the journal if verbose."""
    problems = report.problems
    if verbose:
        console.print(_journal_table(report.history))
    console.print("what happened to whom (month-day on the policies' clock, WIB):")
    print_peers(console, report.peers)
    for policy, entries in report.stories.items():
        services = tuple(f"{e['service']}:" for e in entries)
        wrong = [p for p in problems if p.startswith(services)]
        verdict = (
            f"{len(wrong)} MISMATCHES" if wrong else "the never-payer's steps match the timeline"
        )
        console.print(f"{policy}: {len(entries)} customers; {verdict}", highlight=False)
        for entry in entries:
            console.print(escape(_story_line(entry)), highlight=False, soft_wrap=True)
    for problem in problems:
        console.print(f"[red]MISMATCH[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if not problems:
        console.print(
            "every never-paying customer's suspend, reclaim, terminate and purge days "
            "match its policy's timeline and clause",
            highlight=False,
        )


def _journal_table(history: list[dict[str, Any]]) -> Table:
    table = Table(title="what happened when (from the journal)")
    for column in ("day", "service", "step", "why"):
        table.add_column(column, overflow="fold")
    for h in history:
        table.add_row(h["day"], h["service"], escape(word(h)), escape(h["why"]))
    return table


def print_json(console: Console, report: Report) -> None:
    document = {
        "peers": [asdict(peer) for peer in report.peers],
        "stories": report.stories,
        "history": report.history,
        "problems": report.problems,
    }
    console.print_json(json.dumps(document))


__all__ = [
    "DayProgress",
    "Output",
    "Peer",
    "Report",
    "output",
    "print_json",
    "print_peers",
    "print_story",
]
