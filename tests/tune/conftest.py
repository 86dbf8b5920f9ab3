"""The storage suite's database fixtures (a throwaway PostgreSQL server, SQLite files)."""

from tests.storage.conftest import postgres, postgresql_url, sqlite_url  # noqa: F401
