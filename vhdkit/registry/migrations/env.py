"""Alembic's environment: runs on the connection vhdkit hands over (see __init__.upgrade)."""
from alembic import context

context.configure(connection=context.config.attributes["connection"], target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
