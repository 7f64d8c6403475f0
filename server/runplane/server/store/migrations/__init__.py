"""Alembic environment and versions for the runplane schema."""
