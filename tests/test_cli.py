"""The command line: help, a fast start, a tiny search end to end (bad input, command by
command: tests/test_bad_input.py)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import typer.main
from typer.testing import CliRunner

from ftprune.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def commands(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(command path, Click command) of every command, and of every group that takes
    options of its own (``tune``), from the CLI itself."""
    command = command or typer.main.get_command(app)
    sub = getattr(command, "commands", None)
    if not sub or options(command):
        yield " ".join(path), command
    for name, child in (sub or {}).items():
        yield from commands(child, (*path, name))


def options(command: Any) -> set[str]:
    """The long options a command's --help lists, --help aside."""
    return {
        opt
        for param in command.params
        if param.param_type_name == "option"
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    }


def readme_synopsis() -> dict[str, str]:
    """The README's command synopsis: {command path: its synopsis lines joined}."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Commands\n\n```bash\n", 1)[1].split("```", 1)[0]
    known = {path for path, _ in commands()}
    synopsis: dict[str, str] = {}
    for line in block.replace("\\\n", " ").splitlines():
        line = re.split(r"\s+#\s", line)[0]
        words = line.split()
        assert words[0] == "ftprune", line
        # The longest run of command words (``a|b`` names two) that the CLI has.
        paths = [""]
        for word in words[1:]:
            longer = [f"{p} {alt}".strip() for p in paths for alt in word.split("|")]
            if not all(p in known or any(k.startswith(p + " ") for k in known) for p in longer):
                break
            paths = longer
        for path in paths:
            synopsis[path] = f"{synopsis.get(path, '')} {line}"
    return synopsis


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
    assert result.stderr == ""  # --quiet: no bars, no announcement of the worker's start
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
@pytest.mark.usefixtures("ray_instance")
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


def test_the_readme_synopsis_lists_every_command_and_exactly_its_options():
    synopsis = readme_synopsis()
    cli = dict(commands())
    assert set(synopsis) == set(cli), (set(cli) - set(synopsis), set(synopsis) - set(cli))
    for path, command in cli.items():
        written = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", synopsis[path]))
        assert written == options(command), (path, options(command) - written, written)


def test_usage_lines_name_arguments_as_the_readme_does():
    synopsis = readme_synopsis()
    for path in ("search status", "search resume"):
        usage = runner.invoke(app, [*path.split(), "--help"]).output.splitlines()[0]
        argument = usage.split("[OPTIONS] ")[1]
        assert argument in ("RUN", "[RUN]") and f"{path} {argument}" in synopsis[path], usage


@pytest.mark.parametrize("path", [path for path, _ in commands()])
def test_help_reads_as_plain_paragraphs(path):
    """No boxes, no metavar on a flag, and each paragraph of the description filled to the
    width rather than broken where the docstring's source lines broke."""
    result = runner.invoke(app, [*path.split(), "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text and "╭" not in text and "│" not in text
    description = text.split("\n\n", 1)[1].split("\nOptions:", 1)[0].split("\nArguments:")[0]
    for paragraph in description.strip().split("\n\n"):
        lines = paragraph.splitlines()
        for line, after in itertools.pairwise(lines):
            room = 78 - len(line)
            assert room <= len(after.split()[0]), (path, line, after)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--bogus"], "error: No such option: --bogus (try 'ftprune demo --help')"),
        (["bogus"], "error: No such command 'bogus' (try 'ftprune --help')"),
        (
            ["search", "launch"],
            "error: Missing option '--config' (try 'ftprune search launch --help')",
        ),
        (
            ["search", "resume"],
            "error: Missing argument 'RUN' (try 'ftprune search resume --help')",
        ),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args, prog_name="ftprune")
    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr == message + "\n"


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"ftprune {version('ftprune')}\n"


def test_ctrl_c_says_so_in_one_line(monkeypatch):
    import storage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "open_reader", interrupted)
    result = runner.invoke(app, ["search", "status"])
    assert result.exit_code == 130
    assert result.stdout == "" and result.stderr == "interrupted\n"


def test_status_without_a_run_shows_the_pipeline_a_fine_tuning_run_belongs_to(db_url):
    """The demo names its pipeline's run; its fine-tuning run is newer, but a plain
    ``search status`` shows the run the demo named. A run that only looks like a
    fine-tuning run (no seed run, or no such pipeline) is shown as itself."""
    from search.config import build_config
    from storage import Store

    store = Store(db_url)
    config = build_config(ROOT / "configs/tiny.yaml").model_dump()
    store.create_run("demo-1", config, 0)
    store.create_run("demo-1-finetune-1", {**config, "seed_run": "demo-1"}, 0)
    status = runner.invoke(app, ["search", "status", "--json", "--db", db_url])
    assert json.loads(status.stdout)["run"] == "demo-1"
    store.create_run("solo-finetune-2", {**config, "seed_run": "demo-1"}, 0)
    status = runner.invoke(app, ["search", "status", "--json", "--db", db_url])
    assert json.loads(status.stdout)["run"] == "solo-finetune-2"
    store.close()


USE = "use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ("garbage", [], f"$FTPRUNE_DB: invalid database URL 'garbage': {USE}"),
        (
            "postgresql+psycopg://me:secret@db:port/ftp",
            [],
            f"$FTPRUNE_DB: invalid database URL 'postgresql+psycopg://me:***@db:port/ftp': {USE}",
        ),
        ("mysql://db/ftp", [], f"$FTPRUNE_DB: unsupported database 'mysql': {USE}"),
        ("sqlite:///x.db", ["--db", "garbage"], f"invalid database URL 'garbage': {USE}"),
    ],
)
def test_a_bad_database_url_says_where_it_came_from(env, args, message):
    result = runner.invoke(app, ["search", "status", *args], env={"FTPRUNE_DB": env})
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {message}\n"
