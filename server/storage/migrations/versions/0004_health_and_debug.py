"""connection health; debug-log windows and entries

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connection_health",
        sa.Column(
            "connection_id",
            sa.String(32),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_table(
        "debug_windows",
        sa.Column(
            "connection_id",
            sa.String(32),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "debug_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "connection_id",
            sa.String(32),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry", sa.Text, nullable=False),
    )
    op.create_index("debug_entries_by_connection", "debug_entries", ["connection_id", "id"])


def downgrade() -> None:
    op.drop_index("debug_entries_by_connection", "debug_entries")
    op.drop_table("debug_entries")
    op.drop_table("debug_windows")
    op.drop_table("connection_health")
