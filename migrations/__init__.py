"""Alembic migrations for Squall; they run on SQLite and on PostgreSQL."""
