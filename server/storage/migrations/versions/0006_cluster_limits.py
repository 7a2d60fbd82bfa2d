"""the cluster's shared rate-limit deadlines and its leases (one relay runs the health schedule)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connection_limits",
        sa.Column(
            "connection_id",
            sa.String(32),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("probe_by", sa.String(32), nullable=True),
        sa.Column("probe_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "cluster_leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(32), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cluster_leases")
    op.drop_table("connection_limits")
