"""Alembic revisions, forward only."""
