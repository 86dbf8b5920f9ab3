"""The command line: help, a fast start, a tiny search end to end (bad input, command by
command: tests/test_bad_input.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftprune.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["search"],
        ["search", "launch"],
        ["search", "status"],
        ["demo"],
        ["pipeline"],
        ["router", "train"],
        ["export"],
        ["bench", "quality"],
        ["bench", "ablation"],
    ],
)
def test_every_command_has_help(args):
    result = runner.invoke(app, args + ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_help_starts_without_heavy_imports():
    code = (
        "import sys; from ftprune.cli import main; sys.argv = ['ftprune', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(any(m in sys.modules for m in ('torch', 'ray', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_tiny_search_end_to_end_then_status_json(db_url):
    launch = ["search", "launch", "--config", str(ROOT / "configs/tiny.yaml")]
    launch += ["--db", db_url, "--run-name", "smoke"]
    result = runner.invoke(app, [*launch, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "best schedule" in result.output and "uniform + static router" in result.output
    status = runner.invoke(app, ["search", "status", "smoke", "--json", "--db", db_url])
    data = json.loads(status.output)
    assert {
        "run",
        "status",
        "generations",
        "evaluations",
        "best_fitness",
        "best_schedule",
    } <= data.keys()
    assert data["run"] == "smoke" and data["status"] == "finished" and data["generations"] == 3
    assert abs(sum(data["best_schedule"]) / len(data["best_schedule"]) - 0.3) <= 1e-9
    again = runner.invoke(app, launch)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.ray
def test_bench_coordinator_writes_its_row(tmp_path):
    out = tmp_path / "coordinator.json"
    result = runner.invoke(
        app, ["bench", "coordinator", "--workers", "2", "--candidates", "200", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())[0]
    assert {"workers", "candidates", "candidates_per_s", "db_rows_written"} <= row.keys()
    assert row["workers"] == 2 and row["candidates"] >= 200 // 66 * 66
    assert row["db_rows_written"] == row["candidates"] and row["candidates_per_s"] > 0


@pytest.mark.parametrize(
    ("module", "name"), [("search.coordinator", "SearchFailure"), ("workers.pool", "WorkerFailure")]
)
def test_a_failed_run_is_one_line_and_exit_1(module, name, capsys):
    """A failure of the work itself (not bad input) is one line on stderr and exit status 1,
    not a traceback."""
    import importlib

    import typer

    from ftprune.cli_common import user_errors

    failure = getattr(importlib.import_module(module), name)
    with pytest.raises(typer.Exit) as exited, user_errors():
        raise failure("generation 2, stage 1: none of the 8 candidates could be scored")
    assert exited.value.exit_code == 1
    err = capsys.readouterr().err
    assert err == "error: generation 2, stage 1: none of the 8 candidates could be scored\n"
