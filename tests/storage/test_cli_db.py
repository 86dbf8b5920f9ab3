"""``ftprune db``: help, one-line errors before any database is touched, lazy imports, and
passwords that never reach the output or the logs."""

from __future__ import annotations

import logging
import subprocess
import sys
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from ftprune.cli import app

runner = CliRunner()
PASSWORD = "pw-Zq81x%secret"


@pytest.mark.parametrize("args", [["db"], ["db", "upgrade"], ["db", "check"]])
def test_db_commands_have_help(args):
    result = runner.invoke(app, args + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    if len(args) == 2:
        assert "--db" in result.output and "FTPRUNE_DB" in result.output


@pytest.mark.parametrize("command", ["upgrade", "check"])
@pytest.mark.parametrize(
    "url,message",
    [
        ("mysql://u:p@h/db", "unsupported database"),
        ("not a url", "invalid database URL"),
        ("sqlite:////no/such/dir/x.db", "does not exist"),
    ],
)
def test_bad_urls_are_one_line_and_exit_2(command, url, message):
    result = runner.invoke(app, ["db", command, "--db", url])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_check_never_creates_a_database(tmp_path, monkeypatch):
    db = tmp_path / "absent.db"
    monkeypatch.setenv("FTPRUNE_DB", f"sqlite:///{db}")
    result = runner.invoke(app, ["db", "check"])
    assert result.exit_code == 2 and "no database at" in result.stderr
    assert not db.exists()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert db.exists() and runner.invoke(app, ["db", "check"]).exit_code == 0


def test_cli_starts_without_database_libraries():
    code = (
        "import sys; from ftprune.cli import app; print(sorted(m for m in ('sqlalchemy', "
        "'alembic', 'pandas', 'psycopg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_passwords_never_reach_output_or_logs(postgres, caplog):
    caplog.set_level(logging.DEBUG)
    # Optuna's RDBStorage quiets the "alembic" logger process-wide (level WARN); earlier tests
    # in the same process open one, so the migrations' own logging is turned back on here.
    caplog.set_level(logging.DEBUG, logger="alembic")
    postgres.create_role("ftp_user", PASSWORD)
    postgres.create_database("ftp_secret", owner="ftp_user")
    try:
        url = postgres.url("ftp_secret", user="ftp_user", password=PASSWORD)
        outputs = []
        for command in ("upgrade", "check"):
            result = runner.invoke(app, ["db", command, "--db", url])
            assert result.exit_code == 0, result.output
            assert "ftp_user:***@127.0.0.1" in result.output
            outputs.append(result.output)
        wrong = postgres.url("ftp_secret", user="ftp_user", password=PASSWORD + "-wrong")
        result = runner.invoke(app, ["db", "upgrade", "--db", wrong])
        assert result.exit_code == 2 and "password authentication failed" in result.stderr
        outputs.append(result.output)
        assert caplog.text, "the migrations logged nothing: the log check would prove nothing"
        for text in (*outputs, caplog.text):
            assert PASSWORD not in text and quote(PASSWORD, safe="") not in text
    finally:
        postgres.drop_database("ftp_secret")
