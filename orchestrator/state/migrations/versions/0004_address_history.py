"""IP address states and their history: reserved and blocked, and who changed what.

The new states are values of ``addresses.state``; only the history is a new table.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from orchestrator.state.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "address_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(64), nullable=False, index=True),
        sa.Column("pool", sa.String(100), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=False),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=True),
        sa.Column("until", UTCDateTime(), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("address_history")
