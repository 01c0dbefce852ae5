"""Leadership epochs: a fencing token bumped at every acquisition, kept with each claim.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from orchestrator.state.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leadership",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(300), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("fenced_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("fenced_at")
        batch.drop_column("epoch")
    op.drop_table("leadership")
