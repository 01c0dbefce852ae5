"""The use-cases the faces call: each opens its own session on the orchestrator's store.

The faces (CLI, hooks API, daemon, demo) never touch the store: they call
these, get plain values back (dicts, dataclasses, numbers), and turn a
refusal (``OperationError``, whose message is for the operator) into their
own answer: an exit code, a 4xx. Opening and migrating the store for a face
happens here too, as does the store's leadership lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from orchestrator.core.inventory import Inventory
from orchestrator.core.policy import Policy
from orchestrator.engine import Orchestrator, Settings
from orchestrator.run import notify
from orchestrator.state import audit, ipam, journal, queries
from orchestrator.state.db import StoreError, database_url, migrate, open_engine, reachable
from orchestrator.state.ingest import EventConflict
from orchestrator.state.journal import Fence
from orchestrator.state.leadership import Leadership, advisory_keys, holder_of, leadership_for

DONE = journal.DONE
IP_STATES = ipam.STATES


class OperationError(Exception):
    """A use-case that could not be done as asked; nothing was changed. The message says why."""


# -- opening the store -------------------------------------------------------


def open_orchestrator(
    url: str,
    policies: dict[str, Policy],
    inventory: Inventory,
    settings: Settings | None = None,
    *,
    migrate_store: bool = False,
    check: bool = True,
) -> Orchestrator:
    """An orchestrator on the store at ``url``; ``check`` first makes sure the audit key
    resolves and the store answers, ``migrate_store`` creates or upgrades its tables."""
    try:
        if check:
            audit.settings()
        engine = open_engine(url)
        if check:
            reachable(engine)
    except (audit.AuditKeyError, StoreError) as exc:
        raise OperationError(str(exc)) from None
    if migrate_store:
        migrate(engine)
    return Orchestrator(engine, policies, inventory, settings or Settings.from_environment())


def close(orchestrator: Orchestrator) -> None:
    """Let go of the store's connections (a daemon's term has ended)."""
    bind = orchestrator.sessions.kw.get("bind")
    if bind is not None:
        bind.dispose()


def prepare_store(url: str) -> None:
    """Create or upgrade the store's tables."""
    migrate(open_engine(url))


# -- reading -----------------------------------------------------------------


def services(orchestrator: Orchestrator, needs_attention: bool = False) -> list[dict[str, Any]]:
    with orchestrator.sessions() as session:
        return queries.services(session, needs_attention)


def payment_reviews(orchestrator: Orchestrator, include_resolved: bool) -> list[dict[str, Any]]:
    with orchestrator.sessions() as session:
        return queries.payment_reviews(session, include_resolved)


def steps(orchestrator: Orchestrator, service: str | None = None) -> list[dict[str, Any]]:
    with orchestrator.sessions() as session:
        return queries.steps(session, service)


def step(orchestrator: Orchestrator, step_id: int) -> dict[str, Any]:
    with orchestrator.sessions() as session:
        found = queries.step(session, step_id)
    if found is None:
        raise OperationError(f"no step {step_id}")
    return found


def erase_records(orchestrator: Orchestrator, step_id: int) -> list[dict[str, Any]]:
    with orchestrator.sessions() as session:
        return queries.erase_records(session, step_id)


def notifications(orchestrator: Orchestrator, state: str | None = None) -> list[dict[str, Any]]:
    with orchestrator.sessions() as session:
        return queries.notifications(session, state)


def breaker_status(orchestrator: Orchestrator) -> str | None:
    """Why the breaker is open, or None when it is closed."""
    with orchestrator.sessions() as session:
        return orchestrator.breaker.status(session)


def verify_audit(orchestrator: Orchestrator) -> dict[str, Any]:
    with orchestrator.sessions() as session:
        result = audit.verify(session)
    return {
        "entries": result.entries,
        "checkpoints": result.checkpoints,
        "ok": result.ok,
        "problems": list(result.problems),
    }


def history(orchestrator: Orchestrator, event_types: Sequence[str]) -> list[dict[str, Any]]:
    """Billing events of these types and the steps done (see ``queries.shown_history``)."""
    with orchestrator.sessions() as session:
        return queries.shown_history(session, event_types)


def ip_listing(
    orchestrator: Orchestrator, now: datetime, pool: str | None, state: str | None
) -> list[ipam.AddressView]:
    with orchestrator.sessions() as session:
        return ipam.listing(session, now, pool=pool, state=state)


def ip_show(orchestrator: Orchestrator, address: str, now: datetime) -> ipam.AddressView:
    try:
        with orchestrator.sessions() as session:
            return ipam.show(session, address, now)
    except ipam.IpamError as exc:
        raise OperationError(str(exc)) from None


# -- operator changes: each with its audit entry, in one transaction ---------


def change_step(
    orchestrator: Orchestrator, step_id: int, verb: str, at: datetime, actor: str
) -> None:
    """``verb`` "retried" (back to pending) or "cancelled" (a step that has not run)."""
    with orchestrator.sessions.begin() as session:
        refused = queries.change_step(session, step_id, verb, at, actor)
    if refused == "missing":
        raise OperationError(f"no step {step_id}")
    if refused is not None:
        raise OperationError(f"step {step_id} is {refused}: it cannot be {verb}")


def replay_notification(
    orchestrator: Orchestrator, notification_id: int, at: datetime, actor: str
) -> None:
    with orchestrator.sessions.begin() as session:
        if not notify.replay(session, notification_id, at):
            raise OperationError(f"notification {notification_id} is not a dead letter")
        audit.append(session, at, actor, "notification.replayed", "*", {"id": notification_id})


def reset_breaker(orchestrator: Orchestrator, actor: str, at: datetime) -> bool:
    """Whether it was open."""
    with orchestrator.sessions.begin() as session:
        return orchestrator.breaker.reset(session, actor, at)


def move_ip(
    orchestrator: Orchestrator,
    verb: str,
    address: str,
    change: tuple[datetime, str, str],
    until: datetime | None = None,
    force: bool = False,
) -> ipam.AddressView:
    """An operator's move of an address (``verb``: released, extended, blocked, unblocked);
    ``change`` is when, who and why. Its history and audit entry, or nothing."""
    at, actor, reason = change
    done = ipam.Change(at, actor, reason)
    moves = {
        "released": lambda s: ipam.release(s, address, done),
        "extended": lambda s: ipam.extend(s, address, until or at, done),
        "blocked": lambda s: ipam.block(s, address, done, force=force),
        "unblocked": lambda s: ipam.unblock(s, address, done),
    }
    try:
        with orchestrator.sessions.begin() as session:
            view = moves[verb](session)
            detail = {"reason": reason, "state": view.state, "until": view.quarantine_until}
            audit.append(session, at, actor, f"ip.{verb}", view.address, detail)
    except ipam.IpamError as exc:
        raise OperationError(str(exc)) from None
    return view


# -- the hooks API -----------------------------------------------------------


def first_sight(
    orchestrator: Orchestrator, request_id: str, now: datetime, horizon: datetime
) -> bool:
    """Whether a request id is new (and now taken); ids seen before ``horizon`` are forgotten."""
    try:
        with orchestrator.sessions.begin() as session:
            queries.first_sight(session, request_id, now, horizon)
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class StoredResponse:
    request_hash: str
    status: int
    body: dict[str, Any]


def stored_response(orchestrator: Orchestrator, key: str) -> StoredResponse | None:
    with orchestrator.sessions() as session:
        found = queries.stored_response(session, key)
    return None if found is None else StoredResponse(found[0], found[1], json.loads(found[2]))


def remember_response(
    orchestrator: Orchestrator,
    key: str,
    digest: str,
    status: int,
    content: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """Keep the first response; a racing twin's insert fails and it replays ours."""
    try:
        with orchestrator.sessions.begin() as session:
            queries.remember_response(session, key, digest, status, json.dumps(content), now)
    except IntegrityError:
        stored = stored_response(orchestrator, key)
        return stored.body if stored else content
    return content


@dataclass(frozen=True)
class Metrics:
    steps: list[tuple[str, str, int]]  # kind, state, count
    phases: list[tuple[str, int]]
    breaker_open: bool
    last_tick: datetime | None


def metrics(orchestrator: Orchestrator) -> Metrics:
    with orchestrator.sessions() as session:
        return Metrics(
            queries.step_counts(session),
            queries.phase_counts(session),
            orchestrator.breaker.is_open(session),
            queries.last_tick(session),
        )


def ping(orchestrator: Orchestrator) -> None:
    with orchestrator.sessions() as session:
        queries.ping(session)


# -- the daemon --------------------------------------------------------------


def deliver_notifications(
    orchestrator: Orchestrator, post: notify.Post, secret: bytes, now: datetime, path: str
) -> notify.Delivery:
    return notify.deliver(orchestrator.sessions, post, secret, now, path)


__all__ = [
    "DONE",
    "IP_STATES",
    "EventConflict",
    "Fence",
    "Leadership",
    "Metrics",
    "OperationError",
    "StoredResponse",
    "advisory_keys",
    "database_url",
    "holder_of",
    "leadership_for",
    "open_orchestrator",
    "prepare_store",
]
