"""Alembic environment: runs on the connection `runplane.server.store.migrate` hands in."""

from alembic import context

from runplane.server.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
