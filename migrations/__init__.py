"""The Alembic environment and revisions, shipped in the wheel as `pipeline.migrations`."""
