"""The audit chain against someone who can write to the database but holds no key (finding 6)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.state import audit
from orchestrator.state.models import AuditRow, MetaRow
from tests.conftest import wib

KEY_ENV = "ORCHESTRATOR_TEST_AUDIT_KEY_2"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A key by reference and a checkpoint file, as a production install sets them."""
    checkpoints = tmp_path / "elsewhere" / "audit.checkpoints"
    checkpoints.parent.mkdir()
    monkeypatch.setenv(KEY_ENV, "a-key-the-database-never-sees")
    monkeypatch.setenv(audit.KEY_SETTING, f"env:{KEY_ENV}")
    monkeypatch.setenv(audit.CHECKPOINTS_SETTING, str(checkpoints))
    return checkpoints


def _write(engine: Engine, count: int) -> sessionmaker[Session]:
    sessions = sessionmaker(engine)
    for n in range(1, count + 1):
        with sessions.begin() as session:
            audit.append(session, wib(2026, 12, n), "scheduler", "step.done", f"s{n}", {"n": n})
    return sessions


def _plain_sha256(row: AuditRow) -> str:
    """What the attacker recomputes: the chain's content, hashed as fa3ecf3 hashed it."""
    content = [
        row.seq,
        row.at.astimezone(UTC).isoformat(),
        row.actor,
        row.action,
        row.subject,
        row.detail,
        row.prev_hash,
    ]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _rewrite_from(sessions: sessionmaker[Session], first: int) -> None:
    """Change every entry from ``first`` on and recompute hashes, prev links and the head."""
    with sessions.begin() as session:
        rows = list(session.scalars(select(AuditRow).order_by(AuditRow.seq)))
        prev = rows[first - 2].hash if first > 1 else audit.GENESIS
        for row in rows[first - 1 :]:
            row.actor, row.prev_hash = "mallory", prev
            row.hash = prev = _plain_sha256(row)
        session.merge(MetaRow(key=audit.HEAD_KEY, value=f"{rows[-1].seq}:{prev}"))


def test_an_intact_keyed_chain_verifies(store_engine: Engine, keyed: Path) -> None:
    sessions = _write(store_engine, 5)
    with sessions() as session:
        result = audit.verify(session)
    assert result.ok and result.entries == 5 and result.checkpoints == 5
    assert len(keyed.read_text().splitlines()) == 5


def test_a_rewrite_with_recomputed_hashes_is_caught(store_engine: Engine, keyed: Path) -> None:
    sessions = _write(store_engine, 6)
    _rewrite_from(sessions, 3)
    with sessions() as session:
        result = audit.verify(session)
    assert not result.ok
    assert "entry 3 was changed after it was written" in result.problems
    assert any("entry 6 differs from its checkpoint" in p for p in result.problems)


def test_a_rewrite_is_caught_by_the_key_alone(store_engine: Engine, keyed: Path) -> None:
    sessions = _write(store_engine, 4)
    keyed.unlink()  # the checkpoints are out of reach; the MACs still hold
    _rewrite_from(sessions, 2)
    with sessions() as session:
        problems = audit.verify(session).problems
    assert "entry 2 was changed after it was written" in problems


def test_a_cut_tail_with_its_head_set_back_is_caught_by_the_checkpoints(
    store_engine: Engine, keyed: Path
) -> None:
    sessions = _write(store_engine, 5)
    with sessions.begin() as session:
        fourth = session.get(AuditRow, 4)
        assert fourth is not None
        session.execute(delete(AuditRow).where(AuditRow.seq == 5))
        session.merge(MetaRow(key=audit.HEAD_KEY, value=f"4:{fourth.hash}"))
    with sessions() as session:
        problems = audit.verify(session).problems
    assert any("entry 5, checkpointed, is gone" in p for p in problems)


def test_a_forged_checkpoint_is_caught(store_engine: Engine, keyed: Path) -> None:
    sessions = _write(store_engine, 2)
    forged = audit.checkpoint(b"guessed-key", 2, "0" * 64, wib(2026, 12, 3))
    with keyed.open("a") as handle:
        handle.write(json.dumps(forged) + "\n")
    with sessions() as session:
        problems = audit.verify(session).problems
    assert problems == (f"{keyed}:3: checkpoint of entry 2 is not signed by the audit key",)


def test_a_rolled_back_entry_leaves_no_checkpoint(store_engine: Engine, keyed: Path) -> None:
    sessions = _write(store_engine, 1)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        audit.append(session, wib(2026, 12, 9), "cli", "hold.placed", "s9", {})
        raise RuntimeError("the step failed; nothing it recorded stays")
    with sessions() as session:
        assert audit.verify(session).ok
    assert len(keyed.read_text().splitlines()) == 1


def test_without_a_key_the_chain_is_not_vouched_for(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(audit.KEY_SETTING)
    sessions = _write(sqlite_engine, 2)
    with sessions() as session:
        result = audit.verify(session)
    assert not result.ok and result.entries == 2
    assert result.problems[0].startswith("no audit key (ORCHESTRATOR_AUDIT_KEY)")


def test_an_unresolvable_key_reference_is_one_clear_error(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(audit.KEY_SETTING, "file:/nonexistent/audit.key")
    with pytest.raises(audit.AuditKeyError, match=r"cannot read /nonexistent/audit\.key"):
        _write(sqlite_engine, 1)
