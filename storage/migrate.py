"""Schema migrations: Alembic, configured here in code (no ``alembic.ini``), over ftprune's
own tables only.

Guarantees:

- Only tables named ``ftp_*`` are created, altered, compared or dropped. The revision lives
  in ``ftp_alembic_version``, so another tool's Alembic (Optuna's ``alembic_version`` and
  tables) in the same database is never read or touched.
- :func:`upgrade` runs in one transaction under a lock (``BEGIN IMMEDIATE`` on SQLite, an
  advisory lock on PostgreSQL): concurrent upgrades of one database serialize, and an upgrade
  that fails leaves the database as it was.
- A database made by ftprune before migrations existed (the skeleton's three tables, no
  version table) is recognized, stamped at revision ``0001`` and upgraded in place, rows
  kept.
- A database at the head whose ftprune tables were dropped by hand is refused by writers
  (nothing is written into a schema that differs from the models); ``db upgrade``
  recreates the missing tables, and refuses any other difference.
- A database at a revision this code does not know (written by a newer ftprune) is
  refused with one line, by readers and writers alike.
- :func:`require_head` only reads: it refuses a database at any revision but the head (an
  older one, none, or one this code does not know) with one line saying what to do.
- :func:`check` lists every difference between the models in :mod:`storage.schema` and a
  database built by the migrations; an empty list means they agree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from storage.engine import StorageError, read_only
from storage.schema import Base

TABLE_PREFIX = "ftp_"
VERSION_TABLE = "ftp_alembic_version"
SKELETON_REVISION = "0001"
SKELETON_TABLES = frozenset({"ftp_runs", "ftp_evaluations", "ftp_heldout_results"})
# pg_advisory_xact_lock key that serializes ftprune migrations of one PostgreSQL database.
_POSTGRES_LOCK_KEY = 0x66747072756E65  # "ftprune"


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: the revision before (None: no version table yet), the
    revision after (the head), whether an unversioned skeleton database was adopted, and
    the missing tables it recreated."""

    before: str | None
    after: str
    adopted_skeleton: bool
    recreated: list[str] = field(default_factory=list)


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Alembic's name filter: only ftprune's own (``ftp_``-prefixed) tables."""
    return type_ != "table" or bool(name and name.startswith(TABLE_PREFIX))


def context_options() -> dict[str, Any]:
    """The options every Alembic context over ftprune's tables is configured with."""
    return {
        "target_metadata": Base.metadata,
        "version_table": VERSION_TABLE,
        "include_name": include_name,
        "compare_type": True,
    }


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for ftprune's migrations that runs any ``alembic.command`` on
    ``connection``, inside its transaction."""
    config = Config()
    config.set_main_option("script_location", "storage:migrations")
    config.attributes["connection"] = connection
    return config


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision shipped in ``storage/migrations/versions``."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "storage/migrations/versions holds no revision"
    return head


@functools.lru_cache(maxsize=1)
def known_revisions() -> frozenset[str]:
    """Every revision shipped in ``storage/migrations/versions``."""
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(revision.revision for revision in script.walk_revisions())


def revision_problem(current: str | None) -> str | None:
    """Why code at :func:`head_revision` cannot use a database at revision ``current`` (None:
    no revision), as one phrase ending in what to do; None when ``current`` is the head."""
    head = head_revision()
    if current == head:
        return None
    if current is None or current in known_revisions():
        return (
            f"at revision {current or 'none'}, this ftprune needs {head}: run `ftprune db upgrade`"
        )
    return (
        f"at revision {current}, which this ftprune does not know (its migrations end "
        f"at {head}): it was written by a newer ftprune, upgrade ftprune"
    )


def require_head(engine: Engine, name: str) -> None:
    """Raise :class:`StorageError` (``database NAME`` and :func:`revision_problem`'s phrase)
    unless the database is at the head revision; only reads."""
    with read_only(engine).connect() as connection:
        problem = revision_problem(current_revision(connection))
    if problem is not None:
        raise StorageError(f"database {name} {problem}")


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None when ftprune's version table is absent or empty."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
    # SQLite: the transaction began with BEGIN IMMEDIATE, which already holds the write lock.


def _own_tables(connection: Connection) -> set[str]:
    return {
        name
        for name in inspect(connection).get_table_names()
        if name.startswith(TABLE_PREFIX) and name != VERSION_TABLE
    }


def _alembic(action: Callable[..., None], connection: Connection, revision: str) -> None:
    try:
        action(alembic_config(connection), revision)
    except CommandError as exc:
        raise StorageError(f"cannot migrate: {str(exc).splitlines()[0]}") from None


def upgrade(engine: Engine, repair: bool = False) -> Upgrade:
    """Bring the database to the head revision (creating ftprune's tables if there are none).

    Refuses (StorageError, nothing changed) a revision this code does not know (written by
    a newer ftprune), and a database at the head whose ftprune tables are not all there
    (dropped by hand): with ``repair`` the missing tables are created from the models,
    and whatever difference remains is refused. Any other difference from the models is
    :func:`check`'s to report."""
    head = head_revision()
    with read_only(engine).connect() as connection:
        before = current_revision(connection)
        problem = revision_problem(before)
        missing = _missing_tables(connection) if before == head else set()
    if before is not None and before not in known_revisions() and problem is not None:
        raise StorageError(f"database {problem}")
    if before == head and not missing:
        return Upgrade(before, head, adopted_skeleton=False)
    if missing and not repair:
        raise StorageError(
            f"database lacks ftprune tables {', '.join(sorted(missing))} (dropped?): "
            "run `ftprune db upgrade` to recreate them"
        )
    with engine.begin() as connection:
        _lock(connection)
        before = current_revision(connection)
        adopted = False
        if before is None:
            adopted = _adopt(connection)
        if before != head:
            _alembic(command.upgrade, connection, "head")
        elif missing:
            _recreate(connection)
    return Upgrade(before, head, adopted, sorted(missing))


def _adopt(connection: Connection) -> bool:
    """Stamp an unversioned skeleton database (True), or refuse unknown ftprune tables."""
    own = _own_tables(connection)
    if own == SKELETON_TABLES:
        _alembic(command.stamp, connection, SKELETON_REVISION)
        return True
    if own:
        raise StorageError(
            f"unversioned database holds ftprune tables {sorted(own)} that match no known schema"
        )
    return False


def _missing_tables(connection: Connection) -> set[str]:
    return set(Base.metadata.tables) - _own_tables(connection)


def _recreate(connection: Connection) -> None:
    """Create the models' tables the database lacks, then refuse (rolling back) if it
    still differs from the models."""
    missing = [Base.metadata.tables[name] for name in sorted(_missing_tables(connection))]
    Base.metadata.create_all(connection, tables=missing)
    context = MigrationContext.configure(connection, opts=context_options())
    problems = [_describe(diff) for diff in compare_metadata(context, Base.metadata)]
    if problems:
        raise StorageError(
            f"database differs from the models beyond missing tables "
            f"({'; '.join(problems)}): `ftprune db upgrade` cannot repair it"
        )


def check(engine: Engine) -> list[str]:
    """Differences between the models and the database (which must be at the head revision),
    one short line each; empty when they agree."""
    with read_only(engine).connect() as connection:
        problem = revision_problem(current_revision(connection))
        if problem is not None:
            return [f"database {problem}"]
        context = MigrationContext.configure(connection, opts=context_options())
        return [_describe(diff) for diff in compare_metadata(context, Base.metadata)]


def _describe(diff: Any) -> str:
    """One line for one Alembic autogenerate difference."""
    if isinstance(diff, list):
        return "; ".join(_describe(item) for item in diff)
    op, *args = diff
    if op.startswith("modify_"):
        _schema, table, column, _info, old, new = args
        return f"{op} {table}.{column}: {old!r} -> {new!r}"
    if op.endswith("_column"):
        return f"{op} {args[1]}.{args[2].name}"
    target = args[-1]
    return f"{op} {getattr(target, 'name', None) or target}"
