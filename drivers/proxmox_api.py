"""Proxmox VE's REST API as the Proxmox driver needs it: one error boundary, tasks, locks.

Every call goes through proxmoxer (HTTPS, API token in the Authorization
header; the token's secret never enters a URL, a log line or an error).
Three behaviours of Proxmox VE shape this module:

- Long operations (clone, start, shutdown, vzdump, delete...) answer at once
  with a UPID and run as a task; the outcome is the task's ``exitstatus``,
  read from ``/nodes/{node}/tasks/{upid}/status``, ``"OK"`` (or
  ``"WARNINGS: n"``) for success, the error text otherwise. ``task`` waits
  for it and, on failure, raises with the tail of the task's log, so a
  failed vzdump is reported with what vzdump said, never as success.
- A guest has at most one lock (backup, clone, snapshot, migrate...). A call
  meeting a lock fails, synchronously (HTTP 500 "VM 100 is locked
  (backup)") or inside its task; either way ``task`` retries with backoff
  until the lock goes or ``lock_patience`` runs out, then gives up with a
  temporary error so the step is retried later.
- Errors are HTTP statuses with the message in the reason phrase: 400
  "Parameter verification failed." with per-parameter errors, 401, 403
  "Permission check failed", 500 for refusals, 595/596 for an unreachable
  node. ``_translated`` turns them into the drivers' error tree.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import proxmoxer
import requests

from drivers.base import DriverError, PermanentError, Secret, TemporaryError

LOCKED = re.compile(r"is locked \(([\w-]+)\)")
UNREACHABLE = {502, 503, 504, 595, 596}
LOG_TAIL = 20
LOG_PAGE = 500


class Locked(TemporaryError):
    """The guest holds a lock (``lock`` says which); retried by ``task`` until it goes."""

    def __init__(self, message: str, lock: str) -> None:
        super().__init__(message, delay=5.0)
        self.lock = lock


class TaskFailed(PermanentError):
    """A task ended with an error; the message carries its exit status and log tail."""

    def __init__(self, message: str, exitstatus: str, log: list[str]) -> None:
        super().__init__(message)
        self.exitstatus = exitstatus
        self.log = log


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """The proxmoxer/requests error boundary: every API call of the driver runs inside it."""
    try:
        yield
    except proxmoxer.ResourceException as exc:
        raise _from_status(action, exc.status_code, str(exc.content), exc.errors) from None
    except proxmoxer.AuthenticationError as exc:
        raise PermanentError(f"{action}: authentication failed: {exc}") from None
    except requests.exceptions.SSLError as exc:
        raise PermanentError(f"{action}: TLS verification failed: {type(exc).__name__}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise TemporaryError(f"{action}: cannot reach the API: {type(exc).__name__}") from None


def _from_status(action: str, status: int, reason: str, errors: Any) -> DriverError:
    message = f"{action}: HTTP {status} {reason}"
    if errors:
        message += f" {errors}"
    locked = LOCKED.search(reason)
    if locked:
        return Locked(message, locked.group(1))
    if status in UNREACHABLE:
        return TemporaryError(message, delay=30.0)
    return PermanentError(message)


def upid_node(upid: str) -> str:
    """The node a task runs on is the UPID's second field (UPID:node:pid:...)."""
    fields = upid.split(":")
    if len(fields) < 8 or fields[0] != "UPID":
        raise PermanentError(f"not a task id: {upid!r}")
    return fields[1]


def _verb(method: str) -> Callable[..., Any]:
    """``api.get(path, **params)`` and its kin: ``call`` with the method named."""

    def send(self: PveApi, path: str, **arguments: Any) -> Any:
        return self.call(method, path, **arguments)

    send.__name__ = method.lower()
    return send


class PveApi:
    """A cluster's API through one endpoint, with task waiting and lock retries."""

    def __init__(
        self,
        uri: str,
        *,
        user: str,
        token_name: str,
        token_secret: Secret,
        verify: str | bool = True,
        timeout: float = 30.0,
        task_timeout: float = 900.0,
        lock_patience: float = 300.0,
        poll: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        address = urlsplit(uri if "//" in uri else f"https://{uri}")
        if address.scheme not in ("https", "pve") or not address.hostname:
            raise PermanentError(f"a Proxmox VE uri is https://HOST[:PORT], not {uri!r}")
        self.endpoint = f"{address.hostname}:{address.port or 8006}"
        self._client = proxmoxer.ProxmoxAPI(
            address.hostname,
            port=address.port or 8006,
            user=user,
            token_name=token_name,
            token_value=token_secret.reveal(),
            verify_ssl=verify,
            timeout=timeout,
        )
        self.task_timeout = task_timeout
        self.lock_patience = lock_patience
        self.poll = poll
        self._sleep = sleep

    def call(self, method: str, path: str, **arguments: Any) -> Any:
        """One request (``method`` is GET, POST, PUT or DELETE), inside the error boundary."""
        with _translated(f"{method} {path}"):
            return getattr(self._client(path), method.lower())(**arguments)

    get, post, put, delete = (_verb(method) for method in ("GET", "POST", "PUT", "DELETE"))

    def task(self, action: str, start: Callable[[], Any]) -> str:
        """Start a task (``start`` returns its UPID) and wait for its end; retry while locked."""
        deadline = time.monotonic() + self.lock_patience
        delay = 1.0
        while True:
            try:
                upid = start()
                if upid is None:  # some calls finish synchronously when there is nothing to do
                    return "OK"
                return self.wait(action, str(upid))
            except Locked as exc:
                if time.monotonic() + delay > deadline:
                    raise TemporaryError(
                        f"{action}: the guest stayed locked ({exc.lock}) "
                        f"for {self.lock_patience:g}s", delay=60.0,
                    ) from None
                self._sleep(delay)
                delay = min(delay * 2, 15.0)

    def wait(self, action: str, upid: str) -> str:
        """The task's exit status once it has stopped; its log tail in the error if it failed."""
        node = upid_node(upid)
        deadline = time.monotonic() + self.task_timeout
        while True:
            status = self.get(f"nodes/{node}/tasks/{upid}/status")
            if status.get("status") == "stopped":
                break
            if time.monotonic() > deadline:
                raise TemporaryError(
                    f"{action}: task {upid} still running after {self.task_timeout:g}s", delay=60.0
                )
            self._sleep(self.poll)
        exitstatus = str(status.get("exitstatus", ""))
        if exitstatus == "OK" or exitstatus.startswith("WARNINGS"):
            return exitstatus
        log = self.log_tail(node, upid)
        # vzdump reports a held lock only in its log ("job errors" is all the status says).
        locked = LOCKED.search(exitstatus) or next(
            (found for line in log if (found := LOCKED.search(line))), None
        )
        if locked:
            raise Locked(f"{action}: {exitstatus}", locked.group(1))
        raise TaskFailed(
            f"{action}: task {upid} failed: {exitstatus}\n" + "\n".join(log), exitstatus, log
        )

    def log_tail(self, node: str, upid: str) -> list[str]:
        """The log's last lines: paged to its end, where a failed task says ``TASK ERROR``.

        The API returns at most ``limit`` lines from ``start``, numbered by ``n``; a
        page shorter than ``limit`` is the last one. Lines numbered at or before
        ``start`` are not new (PVE answers an empty range with one "no content" line).
        """
        tail: list[str] = []
        start = 0
        while True:
            page = self.get(f"nodes/{node}/tasks/{upid}/log", start=start, limit=LOG_PAGE)
            fresh = [line for line in page if int(line.get("n", start + 1)) > start]
            tail = (tail + [str(line.get("t", "")) for line in fresh])[-LOG_TAIL:]
            start += len(fresh)
            if len(page) < LOG_PAGE or not fresh:
                return tail
