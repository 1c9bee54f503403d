"""Alembic revisions of the registry schema (see vhdkit/registry/engine.py)."""
