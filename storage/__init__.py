"""Storage: the schema, its migrations and every SQL statement ftprune runs (SQLite or
PostgreSQL); :mod:`storage.queries` returns what dashboards and reports show as DataFrames."""

from storage.engine import DEFAULT_URL, StorageError, check_url, default_url, redact
from storage.store import EvaluationRecord, Store, open_reader

__all__ = [
    "DEFAULT_URL",
    "EvaluationRecord",
    "Store",
    "StorageError",
    "check_url",
    "default_url",
    "open_reader",
    "redact",
]
