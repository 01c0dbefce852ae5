"""The store's leadership lock: one active writer at a time, fenced by epoch.

A PostgreSQL advisory lock held on a connection of its own (it goes the
moment the process dies, kill -9 included), or, for the embedded SQLite
store, an flock on a file beside it. Each acquisition takes a new epoch,
the fencing token every claim carries (see ``journal``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from orchestrator.state import journal
from orchestrator.state.db import open_engine

ADVISORY_KEY = 0x6F726368  # "orch"


class Leadership(Protocol):
    def acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...

    def fence(self) -> journal.Fence: ...


class _Epochs:
    """What both locks share: a new epoch at each acquisition, and the fence that carries it.

    The fence answers for its own epoch only: once the lock was lost, a run
    still holding the old fence stays fenced even after this process leads again.
    """

    orphan_grace = timedelta(0)

    def __init__(self, url: str, holder: str) -> None:
        self._sessions = sessionmaker(open_engine(url))
        self.holder, self.epoch, self.since = holder, 0, datetime.now(UTC)

    def _take_epoch(self) -> None:
        self.since = datetime.now(UTC)
        with self._sessions.begin() as session:
            self.epoch = journal.take_epoch(session, self.holder, self.since)

    def held(self) -> bool:
        raise NotImplementedError

    def fence(self) -> journal.Fence:
        epoch = self.epoch
        return journal.Fence(
            epoch, lambda: self.epoch == epoch and self.held(), self.orphan_grace, self.since
        )


def advisory_keys(schema: str) -> tuple[int, int]:
    """The advisory lock of one store: PostgreSQL's locks are per database, stores per schema."""
    return ADVISORY_KEY, zlib.crc32(schema.encode()) & 0x7FFFFFFF


class AdvisoryLock(_Epochs):
    """PostgreSQL: the lock lives as long as its connection.

    ``held`` asks ``pg_locks`` on that connection, so a connection the
    server dropped (a failover, ``pg_terminate_backend``) reads as lost at
    the next check, which the executor makes before every step. Its old
    leader may still be inside a driver call then: ``orphan_grace``.
    """

    def __init__(self, url: str, holder: str, orphan_grace: timedelta) -> None:
        super().__init__(url, holder)
        self.orphan_grace = orphan_grace
        self._engine = open_engine(url)
        self._connection: Connection | None = None
        self._guard = threading.Lock()  # executor threads check it at once; a connection is not
        self._keys = (0, 0)

    def acquire(self) -> bool:
        connection = self._engine.connect()
        self._keys = advisory_keys(str(connection.scalar(text("SELECT current_schema()"))))
        won = connection.scalar(text("SELECT pg_try_advisory_lock(:a, :b)"), self._params())
        connection.commit()
        if not won:
            connection.close()
            return False
        self._connection = connection
        self._take_epoch()
        return True

    def _params(self) -> dict[str, int]:
        return {"a": self._keys[0], "b": self._keys[1]}

    def held(self) -> bool:
        with self._guard:
            if self._connection is None:
                return False
            try:
                count = self._connection.scalar(text(HELD_SQL), self._params())
                self._connection.commit()
            except SQLAlchemyError:  # a dropped connection means the lock is gone too
                count = 0
            if not count:
                self._drop()
            return bool(count)

    def release(self) -> None:
        with self._guard:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.invalidate()  # never back to the pool: it may hold the lock
            self._connection.close()
            self._connection = None


HELD_SQL = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid = :a AND objid = :b AND objsubid = 2"
)


class FileLock(_Epochs):
    """SQLite: one host, one file beside the database. The kernel frees it only when its
    holder exits or lets go, so steps found running are nobody's: no grace."""

    def __init__(self, url: str, holder: str) -> None:
        super().__init__(url, holder)
        self._path = Path(url.removeprefix("sqlite:///") + ".leader")
        self._file: Any = None

    def acquire(self) -> bool:
        handle = self._path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        self._take_epoch()
        return True

    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def leadership_for(
    url: str, role: str, orphan_grace: timedelta = timedelta(minutes=5)
) -> Leadership:
    """The store's leadership lock, for this process in ``role`` (named to a refused rival)."""
    holder = f"{role} on {socket.gethostname()} pid {os.getpid()}"
    if url.startswith("postgresql"):
        return AdvisoryLock(url, holder, orphan_grace)
    return FileLock(url, holder)


def holder_of(url: str) -> str:
    """Who took the leadership last, and since when: the reason a second run gives."""
    with sessionmaker(open_engine(url))() as session:
        row = journal.leader(session)
    if row is None:
        return "another process"
    return f"{row.holder} (epoch {row.epoch}, since {row.acquired_at.isoformat()})"
