"""``ftprune db``: bring a database to the newest schema, or check models against migrations.

Both commands touch only ftprune's ``ftp_*`` tables (Optuna's, in the same database, are left
alone) and print the database URL with its password hidden. Bad input or an unreachable
database prints one line (``error: ...``) and exits with status 2; ``check`` exits with
status 1 and one line when the database and the models differ. The storage layer is imported
inside the commands, so ``ftprune --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Iterator, Optional

import typer

db_app = typer.Typer(
    help="Create, upgrade and check ftprune's tables in a database.", no_args_is_help=True
)

Db = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL (default: $FTPRUNE_DB, else sqlite:///ftprune.db)."),
]


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn the storage layer's errors into one line on stderr and exit status 2."""
    from storage import StorageError

    try:
        yield
    except StorageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@db_app.command("upgrade")
def upgrade(db: Db = None) -> None:
    """Bring the database to the newest schema.

    Creates ftprune's tables in a new database.
    Migrates an older one in place, keeping its rows.
    Adopts a database made before migrations existed.
    Safe to run from several processes at once.
    Refuses a read-only SQLite file, or one on a full disk, before changing anything.
    """
    from storage import default_url, redact
    from storage.engine import check_writable, database_errors, make_engine
    from storage.migrate import SKELETON_REVISION
    from storage.migrate import upgrade as upgrade_database

    url = db or default_url()
    with _storage_errors():
        check_writable(url)
        with database_errors(url):
            done = upgrade_database(make_engine(url), repair=True)
    if done.recreated:
        typer.echo(
            f"{redact(url)}: at revision {done.after}, recreated the missing tables "
            f"{', '.join(done.recreated)}"
        )
    elif done.before == done.after:
        typer.echo(f"{redact(url)}: already at revision {done.after} (newest)")
    elif done.adopted_skeleton:
        typer.echo(
            f"{redact(url)}: adopted a database made before migrations existed as "
            f"revision {SKELETON_REVISION}, upgraded to {done.after}"
        )
    else:
        typer.echo(
            f"{redact(url)}: upgraded from {done.before or 'an empty database'} "
            f"to revision {done.after}"
        )


@db_app.command("check")
def check(db: Db = None) -> None:
    """Check that the database's tables match the models.

    Exits with status 1 and one line naming the differences when ftprune's tables
    differ from the models or the database is not at the newest revision.
    Never changes the database.
    """
    from storage import default_url, redact
    from storage.engine import database_errors, make_reader_engine
    from storage.migrate import check as check_database
    from storage.migrate import head_revision

    url = db or default_url()
    with _storage_errors(), database_errors(url):
        engine = make_reader_engine(url)
        try:
            problems = check_database(engine)
        finally:
            engine.dispose()
    if problems:
        typer.echo(f"error: {redact(url)} differs from the models: {'; '.join(problems)}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{redact(url)}: at revision {head_revision()}, tables match the models")
