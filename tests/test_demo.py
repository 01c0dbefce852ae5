"""The README's demo: ten weeks of the five policies, told while it runs, checked against them.

Each run is the real command in a subprocess with its output on a pipe, as
in CI or a log: there the progress is plain lines, one per simulated day.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import select
from typer.testing import CliRunner

from orchestrator.engine import Orchestrator
from orchestrator.faces.cli import app
from orchestrator.faces.demo import run_demo
from orchestrator.faces.demo_report import Output, Report, print_story
from orchestrator.state.db import open_engine
from orchestrator.state.models import StepRow
from tests.conftest import REPO

DAY_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2})  day +(\d+)/75  \S")
POLICY_HEADER = re.compile(r"^(\w+): (\d+) customers; ")
STORY_HEADER = "what happened to whom"
JOURNAL_TITLE = "what happened when (from the journal)"
# A screen: what a policy's story may take, its header included, and how wide it may be.
SCREEN_LINES = 40
SCREEN_WIDTH = 160


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    workdir: Path


def _demo(workdir: Path, *flags: str) -> Run:
    command = "from orchestrator.faces.cli import main; main()"
    args = ["demo", "--hypervisor", "test", "--workdir", str(workdir), *flags]
    result = subprocess.run(
        [sys.executable, "-c", command, *args], cwd=REPO, capture_output=True, text=True
    )
    return Run(result.returncode, result.stdout, result.stderr, workdir)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _demo(tmp_path_factory.mktemp("plain") / "demo")


@pytest.fixture(scope="module")
def as_json(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _demo(tmp_path_factory.mktemp("json") / "demo", "--json")


def test_demo_lives_through_ten_weeks_and_matches_the_policies(plain: Run) -> None:
    assert plain.code == 0, plain.stdout + plain.stderr
    engine = open_engine(f"sqlite:///{plain.workdir / 'demo.db'}")
    with engine.connect() as connection:
        done = connection.execute(
            select(StepRow.service_id, StepRow.kind).where(StepRow.state == "done")
        ).all()
    kinds = {kind for _, kind in done}
    assert {"create", "suspend", "resume", "reclaim_ips", "terminate", "restore", "purge"} <= kinds
    # Klikserver keeps an archive: paying after termination restores it.
    assert ("klikserver-kvm-vps-very-late", "restore") in done
    # cybernet purges at termination: paying afterwards brings nothing back.
    cybernet = [kind for service, kind in done if service == "cybernet-kvm-vps-very-late"]
    assert cybernet[-1] == "purge" and "restore" not in cybernet
    assert "every never-paying customer's suspend, reclaim" in plain.stdout


def test_progress_comes_a_line_per_simulated_day_before_the_summary(plain: Run) -> None:
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("demo: ten weeks of 60 services of 5 policies")
    summary = next(i for i, line in enumerate(lines) if line.startswith(STORY_HEADER))
    progress = [(i, DAY_LINE.match(line)) for i, line in enumerate(lines)]
    days = [(i, match.group(1)) for i, match in progress if match]
    assert len(days) >= 10
    assert all(i < summary for i, _ in days)
    # One line per day, in the order the days were lived.
    assert [day for _, day in days] == sorted({day for _, day in days})
    first = dict((day, lines[i]) for i, day in days)
    assert "create 60" in first["2026-11-25"]
    assert "suspend" in first["2026-12-06"]  # Klikserver's 5 days after the due date
    assert JOURNAL_TITLE not in plain.stdout


def test_the_summary_is_a_header_and_a_line_per_customer_for_each_policy(plain: Run) -> None:
    lines = plain.stdout.splitlines()
    headers = [(i, POLICY_HEADER.match(line)) for i, line in enumerate(lines)]
    found = [(i, match.group(1), int(match.group(2))) for i, match in headers if match]
    assert [name for _, name, _ in found] == [
        "cbncloud",
        "cloudmatika",
        "cybernet",
        "herza",
        "klikserver",
    ]
    for i, name, customers in found:
        story = lines[i + 1 : i + 1 + customers]
        assert customers + 1 <= SCREEN_LINES
        assert all(line.startswith("  ") for line in story), (name, story)
        after = lines[i + 1 + customers]
        assert not after.startswith("  "), f"{name} has more lines than customers"
        assert sum(line.split()[1] == "never" for line in story) == customers // 4


def test_the_demo_says_which_product_runs_on_which_host_and_driver(plain: Run) -> None:
    """The Proxmox, dedicated and colocation products run on libvirt stand-ins, and it says so."""
    lines = plain.stdout.splitlines()
    before_progress = lines[: next(i for i, line in enumerate(lines) if DAY_LINE.match(line))]
    peers = {line.split()[0]: line for line in before_progress if line.startswith("  ")}
    assert "kvm-jkt-1    libvirt at test:///default" in peers["kvm_vps"]
    assert "stand-in" not in peers["kvm_vps"]
    assert "a stand-in for the proxmox driver" in peers["proxmox_vps"]
    assert "a stand-in for the ipmi driver; power_off runs as shutdown" in peers["dedicated"]
    assert "a stand-in for the colo driver; port_down runs as cut_network" in peers["colocation"]
    summary = plain.stdout[plain.stdout.index(STORY_HEADER) :]
    assert "a stand-in for the ipmi driver" in summary
    dedicated = [line for line in summary.splitlines() if line.startswith("  dedicated    never")]
    assert dedicated and all("suspend power_off→shutdown" in line for line in dedicated)


def test_json_is_one_document_on_stdout_with_the_progress_on_stderr(as_json: Run) -> None:
    assert as_json.code == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["problems"] == []
    assert any(DAY_LINE.match(line) for line in as_json.stderr.splitlines())
    peers = {peer["product"]: peer for peer in document["peers"]}
    assert peers["colocation"]["stands_in_for"] == "colo"
    assert peers["colocation"]["methods"] == {"port_down": "cut_network"}
    suspends = [
        h
        for h in document["history"]
        if h["service"] == "klikserver-dedicated-never" and h["action"] == "suspend"
    ]
    assert [(h["day"], h["method"], h["ran"]) for h in suspends] == [
        ("2026-12-06", "power_off", "shutdown")
    ]
    stories = {e["service"]: e for e in document["stories"]["klikserver"]}
    assert {"day": "2026-12-16", "what": ["purge"]} in stories["klikserver-kvm-vps-never"]["days"]


def test_verbose_adds_the_whole_journal_after_the_progress(tmp_path: Path) -> None:
    run = _demo(tmp_path / "demo", "--verbose")
    assert run.code == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    table = lines.index(next(line for line in lines if JOURNAL_TITLE in line))
    last_day = max(i for i, line in enumerate(lines) if DAY_LINE.match(line))
    assert last_day < table < lines.index(next(x for x in lines if x.startswith(STORY_HEADER)))
    rows = [line for line in lines[table:] if "klikserver-kvm-vps-very-late" in line]
    assert any("restore" in row for row in rows)


def test_an_unknown_hypervisor_is_refused_in_one_line_and_touches_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--hypervisor", "qemu", "--workdir", str(workdir)])
    assert result.exit_code == 2
    assert "unknown hypervisor 'qemu' (choose lab, test, auto)" in result.output
    assert not workdir.exists()


def test_a_mismatch_is_counted_in_its_policy_header_and_printed_verbatim() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160)
    stories = {
        "klikserver": [
            {"service": "k-never", "product": "kvm_vps", "story": "never", "days": []},
        ],
        "herza": [{"service": "h-never", "product": "kvm_vps", "story": "never", "days": []}],
    }
    problem = "k-never: suspend expected 2026-12-06 ([5.1] overdue); journal has ['2026-12-07']"
    print_story(console, Report([], [], stories, [problem]), verbose=False)
    text = buffer.getvalue()
    assert "klikserver: 1 customers; 1 MISMATCHES" in text
    assert "herza: 1 customers; the never-payer's steps match the timeline" in text
    assert f"MISMATCH {problem}" in text
    assert "every never-paying customer's" not in text


def test_each_policy_s_story_fits_one_screen_and_the_journal_stays_out(plain: Run) -> None:
    lines = plain.stdout.splitlines()
    story = lines[next(i for i, line in enumerate(lines) if line.startswith(STORY_HEADER)) :]
    starts = [i for i, line in enumerate(story) if POLICY_HEADER.match(line)]
    last = starts[-1] + 1
    while story[last].startswith("  "):
        last += 1
    for start, end in zip(starts, [*starts[1:], last], strict=True):
        block = story[start:end]
        assert len(block) <= SCREEN_LINES, block
        assert all(len(line) <= SCREEN_WIDTH for line in block), block
    assert JOURNAL_TITLE not in plain.stdout
    assert (
        len(lines) < 75 + sum(int(POLICY_HEADER.match(story[i]).group(2)) + 1 for i in starts) + 20
    )


class Stopped(Exception):
    """Raised by the first apply: the test has seen what it came for."""


def test_the_progress_display_is_written_before_the_first_simulated_day_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the live bar shows up at once, before the lab is probed or the first
    day's guests are created; the first apply finds it already written."""
    happened: list[str] = []

    class Terminal(io.StringIO):
        def write(self, text: str) -> int:
            happened.append(text)
            return super().write(text)

    def first_apply(self: Orchestrator, now: object, yes: bool = False, actor: str = "") -> None:
        happened.append("<first apply>")
        raise Stopped

    monkeypatch.setattr(Orchestrator, "apply", first_apply)
    console = Console(file=Terminal(), width=SCREEN_WIDTH, force_terminal=True)
    with pytest.raises(Stopped):
        run_demo(
            tmp_path / "demo",
            REPO / "inventory" / "policies",
            hypervisor="test",
            output=Output(console, console),
        )
    before = "".join(happened[: happened.index("<first apply>")])
    assert before.startswith("demo: ten weeks of 60 services")
    assert "0/75" in before
    # The bar is drawn before the hypervisor is probed and the store created, which on
    # the real lab can take a while; what was found is printed above it.
    assert before.index("simulated days") < before.index("running on libvirt's test hypervisor")
