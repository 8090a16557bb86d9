"""Alembic migration environment (shipped with the package)."""
