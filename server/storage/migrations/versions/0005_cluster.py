"""the cluster: change feed, shared secrets, relays and their tunnels

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
    )
    op.create_table(
        "cluster_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "relays",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("advertise_ssh", sa.String(255), nullable=False),
        sa.Column("cluster_url", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "presence",
        sa.Column("relay_id", sa.String(32), primary_key=True),
        sa.Column("tunnel_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("agent_id", sa.String(32), nullable=False, index=True),
        sa.Column("peer", sa.String(128), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("presence")
    op.drop_table("relays")
    op.drop_table("cluster_secrets")
    op.drop_table("changes")
