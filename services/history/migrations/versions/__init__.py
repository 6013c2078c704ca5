"""Alembic revisions (frozen snapshots of the schema; they never import services.history.schema)."""
