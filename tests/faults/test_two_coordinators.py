"""Two coordinators on one run, through the command line: while the first (a process of its
own) holds the run's lease, alive but frozen with SIGSTOP, a second `search resume` is
refused with one line and changes nothing; once the lease has expired a resume takes the
run over and finishes it exactly as an uninterrupted run would; the first, woken up, finds
its lease gone and exits without writing anything."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftprune.cli import app
from search.coordinator import launch
from storage import Store
from tests.faults.helpers import ROOT, TINY, rows, tiny

pytestmark = pytest.mark.fault
GENERATIONS = 3
LEASE_S = "6"  # frozen right after a renewal, the lease still has 4 s: time to be refused
runner = CliRunner()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ftprune.cli", *args]


def _freeze(process: subprocess.Popen, database: Path) -> None:
    """SIGSTOP ``process`` outside any write transaction (a frozen writer holding SQLite's
    lock would block everyone, which is not the fault under test)."""
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(database, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            process.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError("the coordinator never left its write transaction")


def _snapshot(store: Store) -> tuple:
    status = store.run_status("shared")
    return rows(store, status["id"]), status["generations"], status["status"]


def test_a_second_coordinator_is_refused_until_the_lease_expires(tmp_path, monkeypatch):
    database = tmp_path / "shared.db"
    url = f"sqlite:///{database}"
    monkeypatch.setenv("FTPRUNE_LEASE_S", LEASE_S)
    env = {**os.environ, "FTPRUNE_LEASE_S": LEASE_S}
    first = subprocess.Popen(
        _cli(
            "search", "launch", "--config", str(TINY), "--generations", str(GENERATIONS),
            "--run-name", "shared", "--db", url, "--quiet",
        ),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not database.exists() or not _started(url):
            assert first.poll() is None and time.monotonic() < deadline, "launch did not start"
            time.sleep(0.05)
        _freeze(first, database)
        store = Store(url, create=False)
        frozen = _snapshot(store)
        assert frozen[2] == "running" and 1 <= frozen[1] < GENERATIONS

        refused = runner.invoke(app, ["search", "resume", "shared", "--db", url, "--quiet"])
        assert refused.exit_code == 2, refused.output
        line = refused.stderr.strip()
        assert "\n" not in line and line.startswith("error: run 'shared' is driven by another")
        assert f"pid {first.pid}" in line and "once the lease has expired" in line
        assert _snapshot(store) == frozen

        expires = datetime.fromisoformat(store.run_status("shared")["lease_expires_at"])
        time.sleep(max(0.0, expires.timestamp() - time.time()) + 0.2)
        taken = runner.invoke(app, ["search", "resume", "shared", "--db", url, "--quiet"])
        assert taken.exit_code == 0, taken.output
        finished = _snapshot(store)
        assert finished[1:] == (GENERATIONS, "finished")

        first.send_signal(signal.SIGCONT)  # the stale coordinator wakes up
        _, errors = first.communicate(timeout=120)
        assert first.returncode == 2, errors
        assert "is no longer driven by this coordinator" in errors.strip().splitlines()[-1]
        assert _snapshot(store) == finished  # it wrote nothing
        assert store.run_status("shared")["lease_owner"] is None
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()

    reference = Store(f"sqlite:///{tmp_path / 'reference.db'}")
    expected = launch(tiny(generations=GENERATIONS, run_name="shared"), reference, False)
    assert finished[0] == rows(reference, expected.run_id)
    assert store.run_status("shared")["best_schedule"] == expected.search.best_schedule


def _started(url: str) -> bool:
    """Whether the run has stored its first generation."""
    try:
        with Store(url, create=False) as store:
            return store.run_status("shared")["generations"] >= 1
    except Exception:
        return False
