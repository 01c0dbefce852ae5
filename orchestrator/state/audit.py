"""The audit trail: every step and every operator action, chained under a key.

Each entry's MAC is HMAC-SHA256, under the audit key, of its content and the
previous entry's MAC, and the head (last sequence number and MAC) is kept
beside the chain: ``verify`` finds a changed entry, a deleted entry in the
middle (the chain breaks) and a deleted tail (the head no longer matches).
The key lives outside the database, given by reference like every other
secret (``ORCHESTRATOR_AUDIT_KEY=env:NAME`` or ``file:/path``), so whoever
can write to the database cannot rewrite the chain and recompute it.

Whoever can write to the database can still cut the tail and set the head
back. So after every commit that added entries, a checkpoint of the head
(``{"seq", "hash", "at", "mac"}``, MAC'd with the same key) is appended to a
file the database's writer cannot reach (``ORCHESTRATOR_AUDIT_CHECKPOINTS``,
e.g. on another host's mount or an append-only file: ``chattr +a``);
``verify`` checks that each checkpointed entry is still there, unchanged.

Without a key, entries are chained with plain SHA-256 (the store still
works, for a first try or a demo), and ``verify`` says the chain cannot be
trusted and fails: a production install sets the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from orchestrator.secrets.credentials import CredentialError, resolve
from orchestrator.secrets.redact import redact
from orchestrator.state.models import AuditRow, MetaRow

log = logging.getLogger("orchestrator.state.audit")
GENESIS = "0" * 64
HEAD_KEY = "audit_head"
KEY_SETTING = "ORCHESTRATOR_AUDIT_KEY"
CHECKPOINTS_SETTING = "ORCHESTRATOR_AUDIT_CHECKPOINTS"
_PENDING = "audit_checkpoint"


class AuditKeyError(Exception):
    """The audit key's reference cannot be resolved; names the setting, never a value."""


@dataclass(frozen=True)
class AuditSettings:
    key: bytes | None
    checkpoints: Path | None


def settings() -> AuditSettings:
    """The key and checkpoint file named in this process's environment (references only)."""
    return _settings(os.environ.get(KEY_SETTING) or None, os.environ.get(CHECKPOINTS_SETTING))


@lru_cache(maxsize=8)
def _settings(reference: str | None, checkpoints: str | None) -> AuditSettings:
    try:
        key = resolve(reference, what=KEY_SETTING).reveal().encode() if reference else None
    except CredentialError as exc:
        raise AuditKeyError(str(exc)) from None
    return AuditSettings(key, Path(checkpoints) if checkpoints else None)


def append(
    session: Session, at: datetime, actor: str, action: str, subject: str, detail: dict[str, Any]
) -> AuditRow:
    """Add one entry; the caller's transaction makes it durable with what it records."""
    head = _head(session)
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    text = json.dumps(redact(detail), sort_keys=True, default=str)
    row = AuditRow(seq=seq, at=at, actor=actor, action=action, subject=subject, detail=text)
    row.prev_hash = prev
    row.hash = entry_hash(row, settings().key)
    session.add(row)
    session.merge(MetaRow(key=HEAD_KEY, value=f"{seq}:{row.hash}"))
    session.info[_PENDING] = (seq, row.hash)
    return row


def entry_hash(row: AuditRow, key: bytes | None) -> str:
    """HMAC-SHA256 under the key of the entry and the one before; plain SHA-256 without."""
    content = json.dumps(
        [
            row.seq,
            row.at.astimezone(UTC).isoformat(),
            row.actor,
            row.action,
            row.subject,
            row.detail,
            row.prev_hash,
        ]
    ).encode()
    if key is None:
        return hashlib.sha256(content).hexdigest()
    return hmac.new(key, content, hashlib.sha256).hexdigest()


def _head(session: Session) -> tuple[int, str] | None:
    meta = session.get(MetaRow, HEAD_KEY, with_for_update=True)
    if meta is None:
        return None
    seq, digest = meta.value.split(":")
    return int(seq), digest


# -- checkpoints ---------------------------------------------------------------


@event.listens_for(Session, "after_commit")
def _export_checkpoint(session: Session) -> None:
    """Only what was committed is checkpointed: a rolled-back head would be a false alarm."""
    pending = session.info.pop(_PENDING, None)
    config = settings()
    if pending is None or config.key is None or config.checkpoints is None:
        return
    seq, digest = pending
    line = json.dumps(checkpoint(config.key, seq, digest, datetime.now(UTC)), sort_keys=True)
    try:
        with config.checkpoints.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:  # the entry is committed; verify will name the gap
        log.error("audit checkpoint not written", extra={"fields": {"error": str(exc)}})


@event.listens_for(Session, "after_rollback")
def _forget_checkpoint(session: Session) -> None:
    session.info.pop(_PENDING, None)


def checkpoint(key: bytes, seq: int, digest: str, at: datetime) -> dict[str, Any]:
    mac = _checkpoint_mac(key, seq, digest)
    return {"seq": seq, "hash": digest, "at": at.isoformat(), "mac": mac}


def _checkpoint_mac(key: bytes, seq: int, digest: str) -> str:
    return hmac.new(key, f"checkpoint\n{seq}\n{digest}".encode(), hashlib.sha256).hexdigest()


# -- verification --------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    entries: int
    problems: tuple[str, ...]
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session, config: AuditSettings | None = None) -> Verification:
    """The chain under the key, its head, and every exported checkpoint."""
    config = config or settings()
    problems: list[str] = []
    if config.key is None:
        problems.append(
            f"no audit key ({KEY_SETTING}): the chain is plain SHA-256, "
            "which anyone who can write to the database can rewrite"
        )
    hashes = _check_chain(session, config.key, problems)
    last_seq = max(hashes, default=0)
    problems += _check_head(session, last_seq, hashes.get(last_seq, GENESIS))
    count = 0
    if config.key is not None and config.checkpoints is not None:
        count = _check_checkpoints(config.key, config.checkpoints, hashes, problems)
    return Verification(len(hashes), tuple(problems), count)


def _check_chain(session: Session, key: bytes | None, problems: list[str]) -> dict[int, str]:
    prev, expected_seq, hashes = GENESIS, 1, {}
    for row in session.scalars(select(AuditRow).order_by(AuditRow.seq)):
        if row.seq != expected_seq:
            problems.append(f"entry {expected_seq} is missing (next found: {row.seq})")
        if row.prev_hash != prev:
            problems.append(f"entry {row.seq} does not follow the entry before it")
        if not hmac.compare_digest(entry_hash(row, key), row.hash):
            problems.append(f"entry {row.seq} was changed after it was written")
        prev, expected_seq, hashes[row.seq] = row.hash, row.seq + 1, row.hash
    return hashes


def _check_head(session: Session, last_seq: int, last_hash: str) -> list[str]:
    head = session.get(MetaRow, HEAD_KEY)
    if head is None:
        return [] if last_seq == 0 else ["the chain's head record is missing"]
    seq, digest = head.value.split(":")
    if int(seq) != last_seq or digest != last_hash:
        return [f"the chain ends at entry {last_seq} but its head says {seq}: entries removed"]
    return []


def _check_checkpoints(key: bytes, path: Path, hashes: dict[int, str], problems: list[str]) -> int:
    """Each signed checkpoint names an entry that must still be there with that MAC."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        if hashes:
            problems.append(f"cannot read the checkpoints {path}: {exc.strerror}")
        return 0
    for number, text in enumerate(lines, start=1):
        problem = _checkpoint_problem(key, text, hashes)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
    return len(lines)


def _checkpoint_problem(key: bytes, text: str, hashes: dict[int, str]) -> str | None:
    try:
        line = json.loads(text)
        seq, digest, mac = int(line["seq"]), str(line["hash"]), str(line["mac"])
    except (ValueError, KeyError, TypeError):
        return "not a checkpoint"
    if not hmac.compare_digest(_checkpoint_mac(key, seq, digest), mac):
        return f"checkpoint of entry {seq} is not signed by the audit key"
    if seq not in hashes:
        return f"entry {seq}, checkpointed, is gone from the database"
    if hashes[seq] != digest:
        return f"entry {seq} differs from its checkpoint: the chain was rewritten"
    return None
