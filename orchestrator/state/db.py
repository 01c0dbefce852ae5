"""Opening the store and bringing its schema up to date with Alembic.

SQLite (a file under the working directory) is the embedded default;
PostgreSQL is used by giving its URL. ``migrate`` runs the same Alembic
migrations on both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, DBAPIError

from orchestrator.secrets.redact import redact_text

DEFAULT_URL = "sqlite:///orchestrator.db"
MIGRATIONS = Path(__file__).parent / "migrations"


def database_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("ORCHESTRATOR_DB") or DEFAULT_URL


class StoreError(Exception):
    """The store cannot be opened; the message names its URL, never its password."""


def open_engine(url: str) -> Engine:
    try:
        return _engine(url)
    except (ArgumentError, ImportError) as exc:
        raise StoreError(f"{redact_text(url)} is not a store URL: {exc}") from None


def reachable(engine: Engine) -> Engine:
    """The engine, once a connection opened: a dead server or an unopenable file is
    one line saying which, before any command half-runs."""
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        lines = str(exc.orig).strip().splitlines() or [type(exc.orig).__name__]
        where = engine.url.render_as_string(hide_password=True)
        raise StoreError(f"cannot open the store {where}: {redact_text(lines[0])}") from None
    return engine


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
