"""Fixtures of the fault tests: a throwaway PostgreSQL server of their own (they stop and
restart it), one fresh database per test."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from tests.storage.conftest import serve_postgres
from tests.storage.postgres import PostgresServer


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    """A server of the module's own, which its tests stop and restart."""
    yield from serve_postgres()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the module's server (started again if a test left it down)."""
    name = f"ftprune_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    yield pg_server.url(name)
    try:
        pg_server.admin().close()
    except Exception:
        pg_server.start()
    pg_server.drop_database(name)
