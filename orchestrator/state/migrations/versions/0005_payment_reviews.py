"""Payments under review (unmatched), and what an operator must look at per service.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from orchestrator.state.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_reviews",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("service_id", sa.String(100), nullable=False, index=True),
        sa.Column("invoice", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.Column("resolved_by", sa.String(200), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
    )
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("attention", sa.Text(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("attention")
    op.drop_table("payment_reviews")
