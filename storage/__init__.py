"""Storage: the schema, its migrations and every SQL statement ftprune runs (SQLite or
PostgreSQL); :mod:`storage.queries` returns what dashboards and reports show as DataFrames.
:class:`RunStore` is the interface a search depends on; :class:`Store` implements it on SQL,
:class:`MemoryStore` in one process's memory."""

from storage.engine import DEFAULT_URL, StorageError, check_url, default_url, redact
from storage.leases import LeaseHeld, LeaseLost
from storage.memory import MemoryStore
from storage.protocol import RunStore
from storage.records import GenerationExists, RunPlan
from storage.store import EvaluationRecord, Store, open_reader

__all__ = [
    "DEFAULT_URL",
    "EvaluationRecord",
    "GenerationExists",
    "LeaseHeld",
    "LeaseLost",
    "MemoryStore",
    "RunPlan",
    "RunStore",
    "Store",
    "StorageError",
    "check_url",
    "default_url",
    "open_reader",
    "redact",
]
