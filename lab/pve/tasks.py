"""Worker tasks as ``fork_worker`` runs them: a UPID at once, the work in the background.

A task has two halves. ``begin`` runs before the UPID is returned (PVE's worker starts at
once, so a lock it takes is visible to the very next request) and ``finish`` runs after
the task's duration. Either half raising ``TaskError`` ends the task ``stopped`` with that
text as ``exitstatus`` and ``TASK ERROR: <text>`` as the last log line; success ends with
``OK`` / ``TASK OK``. The lab can make the next task of a type fail instead (``FaultPlan``),
with the log lines and exit status it is given.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab.pve.state import Cluster

Step = Callable[["Task"], None]


class TaskError(Exception):
    """The worker died with this message; it becomes the task's exit status."""


@dataclass
class Task:
    upid: str
    node: str
    type: str
    id: str
    user: str
    pid: int
    pstart: int
    starttime: int
    status: str = "running"
    exitstatus: str | None = None
    endtime: int | None = None
    log: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.log.append(line)

    def as_status(self) -> dict[str, object]:
        data: dict[str, object] = {
            "upid": self.upid, "node": self.node, "pid": self.pid, "pstart": self.pstart,
            "starttime": self.starttime, "type": self.type, "id": self.id, "user": self.user,
            "status": self.status,
        }
        if self.exitstatus is not None:
            data["exitstatus"] = self.exitstatus
        return data

    def as_list_item(self) -> dict[str, object]:
        data = {k: v for k, v in self.as_status().items() if k != "exitstatus"}
        if self.status == "stopped":
            data["status"] = self.exitstatus
            data["endtime"] = self.endtime
        return data


@dataclass
class Fault:
    exitstatus: str
    log: list[str]


class Tasks:
    """Every task of the cluster, by UPID, and the lab's knobs for them."""

    def __init__(self, cluster: Cluster, seconds: float = 0.3) -> None:
        self.cluster = cluster
        self.seconds = seconds
        self.by_upid: dict[str, Task] = {}
        self.faults: dict[str, Fault] = {}
        self._pid = os.getpid() * 10
        self._pstart = int(time.monotonic() * 100)

    def upid(self, node: str, kind: str, ident: str, user: str, start: int) -> tuple[str, int]:
        self._pid += 1
        upid = (f"UPID:{node}:{self._pid:08X}:{self._pstart:08X}:{start:08X}:"
                f"{kind}:{ident}:{user}:")
        return upid, self._pid

    def start(self, node: str, kind: str, ident: str | int, user: str,
              begin: Step | None = None, finish: Step | None = None) -> str:
        """Register the task, run ``begin`` now and ``finish`` after the task's duration."""
        with self.cluster.lock:
            now = self.cluster.now()
            upid, pid = self.upid(node, kind, str(ident), user, now)
            task = Task(upid, node, kind, str(ident), user, pid, self._pstart, now)
            self.by_upid[upid] = task
            fault = self.faults.pop(kind, None)
            if fault is not None:
                self._later(task, lambda t: self._injected(t, fault))
                return upid
            if not self._run(task, begin):
                return upid
        self._later(task, finish)
        return upid

    def _injected(self, task: Task, fault: Fault) -> None:
        for line in fault.log:
            task.say(line)
        raise TaskError(fault.exitstatus)

    def _run(self, task: Task, step: Step | None) -> bool:
        """Run one half; False (and the task ended) when it failed."""
        try:
            if step is not None:
                step(task)
        except TaskError as exc:
            self._end(task, str(exc))
            return False
        return True

    def _later(self, task: Task, step: Step | None) -> None:
        def run() -> None:
            time.sleep(self.seconds)
            with self.cluster.lock:
                if self._run(task, step):
                    self._end(task, "OK")

        threading.Thread(target=run, name=f"task-{task.type}", daemon=True).start()

    def _end(self, task: Task, exitstatus: str) -> None:
        task.say("TASK OK" if exitstatus == "OK" else f"TASK ERROR: {exitstatus}")
        task.exitstatus = exitstatus
        task.endtime = self.cluster.now()
        task.status = "stopped"

    def get(self, node: str, upid: str) -> Task:
        task = self.by_upid.get(upid)
        if task is None or task.node != node:
            raise TaskError(f"no such task '{upid}'")
        return task

    def active(self, vmid: int) -> list[Task]:
        return [t for t in self.by_upid.values() if t.status == "running" and t.id == str(vmid)]
