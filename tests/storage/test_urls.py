"""The URL helpers of :mod:`storage.engine` that commands use before opening a database:
the SQLite file a URL names, the writability probe and the URL Optuna is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import StorageError
from storage.engine import check_writable, optuna_url, sqlite_path


def test_sqlite_path_names_the_file_of_a_sqlite_url_only(tmp_path: Path) -> None:
    assert sqlite_path(f"sqlite:///{tmp_path / 'a.db'}") == tmp_path / "a.db"
    assert sqlite_path("sqlite:///~/x.db") == Path("~/x.db").expanduser()
    assert sqlite_path("sqlite://") is None and sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://u:p@h/db") is None
    with pytest.raises(StorageError, match="unsupported database"):
        sqlite_path("mysql://u:p@h/db")
    with pytest.raises(StorageError, match="directory for the SQLite database does not exist"):
        sqlite_path(f"sqlite:///{tmp_path / 'absent' / 'a.db'}")


def test_optuna_gets_the_psycopg_driver_and_the_password() -> None:
    assert optuna_url("postgresql://me:pw@db.example/ftp") == (
        "postgresql+psycopg://me:pw@db.example/ftp"
    )
    assert optuna_url("postgresql+psycopg://me@h:5433/x") == "postgresql+psycopg://me@h:5433/x"
    assert optuna_url("sqlite:///ftprune.db") == "sqlite:///ftprune.db"
    with pytest.raises(StorageError, match="invalid database URL"):
        optuna_url("not a url")


def test_the_writability_probe_refuses_what_sqlite_could_not_write_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    check_writable(f"sqlite:///{tmp_path / 'new.db'}")  # a new file in a writable directory
    (tmp_path / "old.db").write_bytes(b"kept")
    check_writable(f"sqlite:///{tmp_path / 'old.db'}")
    assert (tmp_path / "old.db").read_bytes() == b"kept"
    (tmp_path / "folder.db").mkdir()  # a directory where the file should be
    with pytest.raises(StorageError, match=r"folder\.db is not writable") as refused:
        check_writable(f"sqlite:///{tmp_path / 'folder.db'}")
    assert "\n" not in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.db", "old.db"]
    check_writable("postgresql://me:pw@127.0.0.1:1/ftp")  # the server's to report: no probe
