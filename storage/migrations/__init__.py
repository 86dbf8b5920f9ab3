"""Alembic scripts for ftprune's tables; run them through :mod:`storage.migrate`."""
