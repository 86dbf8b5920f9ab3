"""Fixtures of the fault tests: a throwaway PostgreSQL server of their own (they stop and
restart it), one fresh database per test."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from tests.storage.conftest import in_ci
from tests.storage.postgres import PostgresServer, PostgresUnavailable, start_server


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = start_server()
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is required in CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield server
    server.stop()


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
