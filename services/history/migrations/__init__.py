"""Alembic migrations of the history database (run programmatically: services.history.store.migrate)."""
