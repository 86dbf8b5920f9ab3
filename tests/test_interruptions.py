"""One behaviour for every interruption of a search: SIGTERM (``kill``, a scheduler's stop,
Ray's job stop) and SIGINT (Ctrl-C) mark the run ``interrupted``, release its lease, print
one line naming ``ftprune search resume RUN`` and exit with 128 + the signal's number; the
resumed run ends where an uninterrupted one ends. A finished run is never searched again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.config import build_config
from search.coordinator import launch
from storage import Store, open_reader

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
GENERATIONS = 5


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ftprune.cli", *args]


def _wait_for_generation(url: str, path: Path, run: str, process: subprocess.Popen) -> None:
    """Until the run has stored a generation (or fail if the process ends first)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if path.exists():
            try:
                with open_reader(url) as reader:
                    if reader.run_status(run)["generations"] >= 1:
                        return
            except Exception:
                pass  # not created yet
        time.sleep(0.05)
    raise AssertionError("no generation stored in time")


def _interrupt(tmp_path: Path, signum: int, pool: str) -> tuple[str, subprocess.CompletedProcess]:
    """Launch a tiny search, send ``signum`` once it stored a generation; (url, outcome)."""
    path = tmp_path / "stop.db"
    url = f"sqlite:///{path}"
    args = ["search", "launch", "--config", str(TINY), "--generations", str(GENERATIONS)]
    args += ["--run-name", "stop", "--pool", pool, "--workers", "1", "--db", url, "--quiet"]
    process = subprocess.Popen(
        _command(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_generation(url, path, "stop", process)
        process.send_signal(signum)
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return url, subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _assert_interrupted(url: str, done: subprocess.CompletedProcess, signum: int) -> None:
    assert done.returncode == 128 + signum, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines() == [
        "interrupted: run 'stop' keeps its last stored generation; "
        "`ftprune search resume stop` continues it"
    ], done.stderr
    with open_reader(url) as reader:
        row = reader.find_run("stop")
        assert row.status == "interrupted" and row.lease_owner is None
        assert 1 <= row.generations_done < GENERATIONS


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[float], float]:
    """The uninterrupted run's best schedule and fitness."""
    root = tmp_path_factory.mktemp("reference")
    config = build_config(TINY, generations=GENERATIONS, run_name="reference", pool="local")
    outcome = launch(config, Store(f"sqlite:///{root / 'reference.db'}"), show_progress=False)
    return outcome.search.best_schedule, outcome.search.best_fitness


@pytest.mark.fault
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_run_is_marked_released_and_resumes_to_the_same_result(
    tmp_path, signum, reference
):
    url, done = _interrupt(tmp_path, signum, "local")
    _assert_interrupted(url, done, signum)
    resumed = subprocess.run(
        _command("search", "resume", "stop", "--db", url, "--quiet"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert resumed.returncode == 0, resumed.stderr
    with open_reader(url) as reader:
        row = reader.find_run("stop")
        assert row.status == "finished" and row.generations_done == GENERATIONS
        assert (row.best_schedule, row.best_fitness) == reference


@pytest.mark.fault
@pytest.mark.ray
def test_a_ray_job_stop_is_the_same_interruption(tmp_path):
    """Ray's job stop sends the driver SIGTERM, which ``ray.init`` answers with
    ``SystemExit`` unless ftprune's handler is in place."""
    url, done = _interrupt(tmp_path, signal.SIGTERM, "ray")
    _assert_interrupted(url, done, signal.SIGTERM)


def test_resuming_a_finished_run_reports_it_and_runs_nothing(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 'done.db'}"
    config = build_config(TINY, generations=GENERATIONS, run_name="done", pool="local")
    with Store(url) as store:
        launch(config, store, show_progress=False)
    before = (tmp_path / "done.db").read_bytes()
    done = subprocess.run(
        _command("search", "resume", "done", "--db", url, "--quiet"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: run 'done' has finished (best calibration window KL {reference[1]:.4g}): "
        "nothing to resume; `ftprune search status done` shows its result"
    ]
    assert (tmp_path / "done.db").read_bytes() == before
