"""Alembic environment: always run in-process on a connection the relay hands over."""

from __future__ import annotations

from alembic import context

from server.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Sluice runs its migrations itself at start; use 'sluice-server run'")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
