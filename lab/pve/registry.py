"""One table from (method, path template) to the function that answers it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.pve.auth import Principal
from lab.pve.state import Cluster
from lab.pve.tasks import Tasks


@dataclass
class Call:
    """What a handler gets: the cluster, its tasks, the caller, and validated parameters."""

    cluster: Cluster
    tasks: Tasks
    caller: Principal
    params: dict[str, Any]

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.params.get(name)
        return default if value is None else str(value) in ("1", "True", "true")

    def text(self, name: str, default: str = "") -> str:
        value = self.params.get(name)
        return default if value is None else str(value)


Handler = Callable[[Call], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}


def api(method: str, path: str) -> Callable[[Handler], Handler]:
    """Register a handler; the schema subset must declare the same method and path."""

    def register(handler: Handler) -> Handler:
        HANDLERS[(method, path)] = handler
        return handler

    return register
