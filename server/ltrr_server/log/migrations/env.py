"""Alembic environment: runs on the connection ltrr passes in (``db.migrate``)."""

from alembic import context

from ltrr_server.log.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
