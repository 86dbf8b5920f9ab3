"""Fixtures of the storage conformance suite: every test taking ``db_url`` runs once on
SQLite and once on a throwaway PostgreSQL server (one fresh database per test).

Outside CI a missing or broken PostgreSQL skips the PostgreSQL half with the reason; with
``CI=true`` it is an error, so CI cannot pass without running it.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from tests.storage.postgres import PostgresServer, PostgresUnavailable, start_server

BACKENDS = ("sqlite", "postgresql")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def serve_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for a fixture: skipped where Debian's server programs
    are missing, a failure in CI; stopped and deleted at the end."""
    try:
        server = start_server()
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is required in CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session."""
    yield from serve_postgres()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ftprune.db'}"


@pytest.fixture
def postgresql_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    name = f"ftprune_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture(params=BACKENDS)
def db_url(request) -> str:
    """An empty database on each backend in turn."""
    return request.getfixturevalue(f"{request.param}_url")
