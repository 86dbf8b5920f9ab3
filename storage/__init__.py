"""Storage: the schema and every SQL statement ftprune runs (SQLite or PostgreSQL)."""

from storage.store import DEFAULT_URL, Store, StorageError, check_url, default_url, redact

__all__ = ["DEFAULT_URL", "Store", "StorageError", "check_url", "default_url", "redact"]
