"""The command line: help, input validation before any work, a tiny search end to end."""

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


@pytest.mark.parametrize(
    "override,message",
    [
        (["--target-sparsity", "1.5"], "target_sparsity"),
        (["--model", "no-such-model"], "unknown model"),
        (["--calibration", "/nonexistent/file.txt"], "not found"),
        (["--seq-len", "4"], "window"),
    ],
)
def test_bad_input_is_one_line_and_touches_no_database(tmp_path, override, message):
    db = tmp_path / "never.db"
    result = runner.invoke(
        app,
        [
            "search",
            "launch",
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            "--db",
            f"sqlite:///{db}",
            *override,
        ],
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not db.exists()


def test_missing_config_and_bad_yaml(tmp_path):
    result = runner.invoke(app, ["search", "launch", "--config", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "not found" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("population: [unclosed\n")
    result = runner.invoke(app, ["search", "launch", "--config", str(bad)])
    assert result.exit_code == 2 and "YAML" in result.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("populaton: 3\n")
    result = runner.invoke(app, ["search", "launch", "--config", str(unknown)])
    assert result.exit_code == 2 and "populaton" in result.output


def test_status_of_missing_database_or_run(tmp_path, db_url):
    result = runner.invoke(app, ["search", "status", "--db", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 2 and "no database" in result.output
    from storage import Store

    Store(db_url)
    result = runner.invoke(app, ["search", "status", "ghost", "--db", db_url])
    assert result.exit_code == 2 and "no run 'ghost'" in result.output


def test_tiny_search_end_to_end_then_status_json(db_url):
    result = runner.invoke(
        app,
        [
            "search",
            "launch",
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            "--db",
            db_url,
            "--run-name",
            "smoke",
            "--quiet",
        ],
    )
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
    again = runner.invoke(
        app,
        [
            "search",
            "launch",
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            "--db",
            db_url,
            "--run-name",
            "smoke",
        ],
    )
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
    "args,message",
    [
        (["bench", "search", "--tokens", "0"], "--tokens"),
        (["bench", "search", "--model", "nope"], "unknown model"),
        (["bench", "coordinator", "--workers", "0"], "--workers"),
        (["bench", "coordinator", "--db", "mysql://x/y"], "unsupported"),
        (["bench", "quality", "--seeds", "0"], "--seeds"),
        (["bench", "ablation", "--model", "nope"], "unknown model"),
        (["bench", "quality", "--seq-len", "4"], "window"),
    ],
)
def test_bench_bad_input_is_one_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output
