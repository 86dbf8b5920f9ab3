"""What a command that writes will find in its database, read before any work and without
changing anything, so that bad input and a database it must refuse are both answered
before the model loads and before the database is touched."""

from __future__ import annotations

from storage.engine import (
    StorageError,
    check_url,
    check_writable,
    database_errors,
    make_reader_engine,
    read_only,
    redact,
    sqlite_path,
)
from storage.migrate import check, current_revision, head_revision, known_revisions
from storage.store import Store, open_reader


def open_for_checks(url: str) -> Store | None:
    """A read-only store over ``url`` for the checks of a command that will write there
    (run names, seed runs), or None when there is nothing to read yet: no database, or one
    at an older revision (the writer will migrate it, and checks names as it writes).

    Raises StorageError, one line, for a URL ftprune cannot use, a SQLite file that is not
    writable or is no database, a database written by a newer ftprune, and one whose
    tables differ from the models (``ftprune db upgrade`` repairs dropped tables). Never
    creates, migrates or writes the database."""
    check_url(url)
    check_writable(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = make_reader_engine(url)
    try:
        with database_errors(url):
            with read_only(engine).connect() as connection:
                current = current_revision(connection)
            if current is not None and current not in known_revisions():
                raise StorageError(
                    f"database {redact(url)} is at revision {current}, which this ftprune "
                    f"does not know (its migrations end at {head_revision()}): it was "
                    "written by a newer ftprune, upgrade ftprune"
                )
            if current != head_revision():
                return None
            problems = check(engine)
    finally:
        engine.dispose()
    if problems:
        raise StorageError(
            f"database {redact(url)} differs from the models ({'; '.join(problems)}): "
            "run `ftprune db upgrade`"
        )
    return open_reader(url)
