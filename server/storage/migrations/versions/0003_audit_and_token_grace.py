"""audit events; previous agent token during a rotation's grace period

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("previous_token_hash", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("previous_token_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("details", sa.Text, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Append-only in the database itself, not only in the application.
        op.execute(
            "CREATE FUNCTION sluice_audit_append_only() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'audit_events is append-only'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION sluice_audit_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
        )


def downgrade() -> None:
    op.drop_table("audit_events")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("previous_token_expires_at")
        batch.drop_column("previous_token_hash")
