"""The audit trail: every step and every operator action, hash-chained.

Each entry's hash covers its own content and the previous entry's hash, and
the head (last sequence number and hash) is kept beside the chain, so that
``verify`` finds a changed entry, a deleted entry in the middle (the chain
breaks) and a deleted tail (the head no longer matches).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.redact import redact
from orchestrator.store.models import AuditRow, MetaRow

GENESIS = "0" * 64
HEAD_KEY = "audit_head"


def append(
    session: Session, at: datetime, actor: str, action: str, subject: str, detail: dict[str, Any]
) -> AuditRow:
    """Add one entry; the caller's transaction makes it durable with what it records."""
    head = _head(session)
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    text = json.dumps(redact(detail), sort_keys=True, default=str)
    row = AuditRow(seq=seq, at=at, actor=actor, action=action, subject=subject, detail=text)
    row.prev_hash = prev
    row.hash = entry_hash(row)
    session.add(row)
    session.merge(MetaRow(key=HEAD_KEY, value=f"{seq}:{row.hash}"))
    return row


def entry_hash(row: AuditRow) -> str:
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
    )
    return hashlib.sha256(content.encode()).hexdigest()


def _head(session: Session) -> tuple[int, str] | None:
    meta = session.get(MetaRow, HEAD_KEY, with_for_update=True)
    if meta is None:
        return None
    seq, digest = meta.value.split(":")
    return int(seq), digest


@dataclass(frozen=True)
class Verification:
    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session) -> Verification:
    problems: list[str] = []
    prev, expected_seq, count = GENESIS, 1, 0
    for row in session.scalars(select(AuditRow).order_by(AuditRow.seq)):
        count += 1
        if row.seq != expected_seq:
            problems.append(f"entry {expected_seq} is missing (next found: {row.seq})")
        if row.prev_hash != prev:
            problems.append(f"entry {row.seq} does not follow the entry before it")
        if entry_hash(row) != row.hash:
            problems.append(f"entry {row.seq} was changed after it was written")
        prev, expected_seq = row.hash, row.seq + 1
    problems += _check_head(session, expected_seq - 1, prev)
    return Verification(count, tuple(problems))


def _check_head(session: Session, last_seq: int, last_hash: str) -> list[str]:
    head = session.get(MetaRow, HEAD_KEY)
    if head is None:
        return [] if last_seq == 0 else ["the chain's head record is missing"]
    seq, digest = head.value.split(":")
    if int(seq) != last_seq or digest != last_hash:
        return [f"the chain ends at entry {last_seq} but its head says {seq}: entries removed"]
    return []
