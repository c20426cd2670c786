"""Storage: one SQLAlchemy model, run on SQLite (embedded) or PostgreSQL."""
