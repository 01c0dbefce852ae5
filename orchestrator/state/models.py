"""The store's tables. Alembic migrations in ``migrations/`` create them.

Times are stored as UTC (``UTCDateTime``) so that SQLite, which keeps no
time zone, and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    """Billing events exactly as received; the first with an id wins."""

    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    service_id: Mapped[str] = mapped_column(String(100), index=True)
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    body: Mapped[str] = mapped_column(Text)


class ServiceRow(Base):
    """One sold service: its facts, the phase last applied, and when it next changes."""

    __tablename__ = "services"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    customer: Mapped[str] = mapped_column(String(200))
    policy: Mapped[str] = mapped_column(String(100))
    product: Mapped[str] = mapped_column(String(40))
    host: Mapped[str] = mapped_column(String(200))
    phase: Mapped[str] = mapped_column(String(40))
    applied_phase: Mapped[str] = mapped_column(String(40))
    next_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    facts: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # What an operator must look at (a payment after the purge, one under review), as JSON.
    attention: Mapped[str] = mapped_column(Text, default="[]")

    __table_args__ = (Index("ix_services_next_at", "next_at"),)


class PaymentReviewRow(Base):
    """A payment naming no invoice we know: refused, kept here, and holding every
    destructive step of its service until it is matched or discarded."""

    __tablename__ = "payment_reviews"
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(100), index=True)
    invoice: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(20), index=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    resolution: Mapped[str | None] = mapped_column(Text, nullable=True)


class AddressRow(Base):
    """An IP address: free, assigned, in quarantine, reserved or blocked (see ``ipam``)."""

    __tablename__ = "addresses"
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(String(100), index=True)
    state: Mapped[str] = mapped_column(String(20))
    service_id: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    last_service_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    quarantine_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AddressHistoryRow(Base):
    """One change of an address's state: who moved it, when, from what to what, and why."""

    __tablename__ = "address_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    pool: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    service_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)


class StepRow(Base):
    """The write-ahead journal: a step is a row before it runs, and its outcome after."""

    __tablename__ = "steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    service_id: Mapped[str] = mapped_column(String(100), index=True)
    host: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    destructive: Mapped[bool] = mapped_column()
    params: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The leadership epoch of the claim (None: a run that took no leadership), and when a
    # leader that had lost it tried to finish the step and was refused (see ``journal``).
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fenced_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class LeadershipRow(Base):
    """Who leads and under which epoch: bumped at every acquisition, it fences the old leader."""

    __tablename__ = "leadership"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(300))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditRow(Base):
    """Hash-chained: each row's hash covers its content and the previous hash."""

    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class MetaRow(Base):
    """Small named values: the audit head, the breaker's state."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class IdempotencyRow(Base):
    """A module command's first response, replayed for the same Idempotency-Key."""

    __tablename__ = "idempotency_keys"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class HookSignatureRow(Base):
    """Signatures of accepted hook requests, kept while they could still be replayed."""

    __tablename__ = "hook_signatures"
    signature: Mapped[str] = mapped_column(String(80), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class NotificationRow(Base):
    """An outbound message to the billing system: kept until delivered, or dead-lettered."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    service_id: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(60))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
