"""Table definitions (SQLAlchemy Core). Alembic migrations create and upgrade them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("token_rotated_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
    # During a rotation's grace period the previous token still logs in.
    sa.Column("previous_token_hash", sa.String(64), nullable=True),
    sa.Column("previous_token_expires_at", sa.DateTime(timezone=True), nullable=True),
)

# Who changed what, when, from where; never a secret value. Append-only
# (database triggers refuse UPDATE and DELETE).
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(64), nullable=True),
    sa.Column("source", sa.String(64), nullable=True),
    sa.Column("details", sa.Text, nullable=False),
)

# A connection's settings live in `document` as JSON, with every secret value
# replaced by its AES-GCM ciphertext; name, mode and agent are columns too so
# they can be queried and the agent reference enforced.
connections = sa.Table(
    "connections",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column(
        "agent_id",
        sa.String(32),
        sa.ForeignKey("agents.id", ondelete="RESTRICT"),
        nullable=True,
        index=True,
    ),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("last_test", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# The latest scheduled or manual check of a connection (server.connections.health).
connection_health = sa.Table(
    "connection_health",
    metadata,
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

# A connection's open debug-log window, and what it recorded (secrets masked).
debug_windows = sa.Table(
    "debug_windows",
    metadata,
    sa.Column(
        "connection_id",
        sa.String(32),
        sa.ForeignKey("connections.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("until", sa.DateTime(timezone=True), nullable=False),
)

debug_entries = sa.Table(
    "debug_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "connection_id",
        sa.String(32),
        sa.ForeignKey("connections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("entry", sa.Text, nullable=False),
    sa.Index("debug_entries_by_connection", "connection_id", "id"),
)
