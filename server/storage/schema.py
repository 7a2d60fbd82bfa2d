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

# -- the cluster (several relays on one database) --------------------------------

# One row per change another relay must act on (a token rotated, an agent or a
# connection edited or deleted). Relays read the rows after the last one they
# saw: woken by NOTIFY on PostgreSQL, by a cheap poll on SQLite. Old rows are
# pruned; they are never needed once every live relay has read them.
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
)

# Secrets every relay of the cluster shares, each sealed with the master key:
# the SSH host key, the admin token, a value that proves the master key.
cluster_secrets = sa.Table(
    "cluster_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# The live relays; a row whose heartbeat is older than the expiry is a dead relay.
relays = sa.Table(
    "relays",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("advertise_ssh", sa.String(255), nullable=False),
    sa.Column("cluster_url", sa.String(255), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("draining", sa.Boolean, nullable=False, default=False),
)

# Which relay holds which tunnels (replicas) of which agent.
presence = sa.Table(
    "presence",
    metadata,
    sa.Column("relay_id", sa.String(32), primary_key=True),
    sa.Column("tunnel_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("agent_id", sa.String(32), nullable=False, index=True),
    sa.Column("peer", sa.String(128), nullable=False),
    sa.Column("agent_version", sa.String(64), nullable=False),
    sa.Column("connected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("draining", sa.Boolean, nullable=False, default=False),
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

# A connection's rate-limit deadline shared by the relays of a cluster
# (server.cluster.shared_limits): nobody sends before `until`; after it, the
# relay named in `probe_by` (until `probe_until`) sends the one probe. The
# row goes when a probe comes back not limited.
connection_limits = sa.Table(
    "connection_limits",
    metadata,
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

# A job one relay of the cluster runs at a time (the health schedule): the
# holder renews `expires`; another relay takes the row once it has passed.
cluster_leases = sa.Table(
    "cluster_leases",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("holder", sa.String(32), nullable=False),
    sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
)
