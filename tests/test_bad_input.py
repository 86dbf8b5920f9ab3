"""Bad input, command by command: one line on stderr naming the problem, exit status 2,
nothing on stdout, and the database exactly as it was (its bytes, or its absence).

Each row of CASES runs the command in-process. ``{db}`` is a SQLite URL: a file holding one
run named ``r1`` (``db="run"``), an empty database (``"empty"``), a file that is no database
(``"junk"``) or no file at all (``"none"``); it is also ``$FTPRUNE_DB``, so a command without
``--db`` that touched its default database would be caught. ``{in}`` holds the bad inputs
built by the ``inputs`` fixture, ``{tiny}`` is configs/tiny.yaml, ``{closed}`` a PostgreSQL
URL (with a password) on a loopback port nothing listens on. A row with ``usage`` is a bad
option value that the command-line parser refuses (one line too): it must name the option.

Full disks and read-only files are simulated without root-only tools: ``/dev/full`` for
output files, ``RLIMIT_FSIZE`` in a child process for a database (writes past it fail with
``EFBIG``, "File too large", where a full disk says ``ENOSPC``), and ``chmod 444`` for a
read-only database (run in a child without CAP_DAC_OVERRIDE when the tests run as root).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from ftprune.cli import app
from tests.bad_input_table import (
    CASES,
    DATABASES,
    ROOT,
    TINY,
    Case,
    build_databases,
    build_inputs,
    command_line,
    snapshot,
)
from tests.bad_input_table import closed_url as make_closed_url

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The bad inputs the table names as ``{in}/...``."""
    return build_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of each starting database (``none`` has none)."""
    return build_databases(tmp_path_factory.mktemp("databases"))


@pytest.fixture(scope="module")
def closed_url() -> str:
    return make_closed_url()


@pytest.fixture
def no_weights(monkeypatch) -> list[str]:
    """Every way ftprune reads model or router weights, made to record the read and fail:
    the table's rows are answered before any weight is read."""
    import safetensors.torch

    # Every auto class is created now: one created while the patch is in place would copy
    # the patched from_config into its own class dict and keep it after the test.
    import transformers.models.auto.modeling_auto  # noqa: F401
    from transformers.models.auto import auto_factory

    import router.checkpoint
    import router.loading

    reads: list[str] = []

    def refuse(what: str) -> Any:
        def read(*args: Any, **kwargs: Any) -> Any:
            reads.append(what)
            raise AssertionError(f"{what} read weights while answering bad input")

        return read

    for owner, name in (
        (router.loading, "load_model"),
        (router.loading, "_converted_gguf"),
        (router.loading, "_random_model"),
        (router.checkpoint, "load_file"),
        (safetensors.torch, "load_file"),
    ):
        monkeypatch.setattr(owner, name, refuse(f"{owner.__name__}.{name}"))
    for name in ("from_pretrained", "from_config"):
        monkeypatch.setattr(auto_factory._BaseAutoModelClass, name, classmethod(refuse(name)))
    return reads


def assert_refused(result: Any, case: Case, code: int = 2) -> None:
    """Exit status, one stderr message naming the problem, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    pattern = rf"Invalid value for '{re.escape(case.message)}'" if case.usage else case.message
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_before_any_work(
    case, inputs, databases, closed_url, tmp_path, monkeypatch, no_weights
):
    path = tmp_path / "ftprune.db"
    if case.db != "none":
        path.write_bytes(databases[case.db])
    url = f"sqlite:///{path}"
    args = command_line(case, url, inputs, closed_url)
    before = snapshot(path)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args, env={"FTPRUNE_DB": url})
    assert no_weights == []  # answered without reading model or router weights
    assert_refused(result, case)
    assert snapshot(path) == before
    assert "never-shown" not in result.output
    assert not (tmp_path / "ftprune-artifacts").exists()


def test_the_table_has_the_rows_it_promises():
    assert len(CASES) >= 150
    assert len({case.name for case in CASES}) == len(CASES)
    assert {case.db for case in CASES} <= set(DATABASES)


def test_the_table_covers_every_command():
    commands = {
        "search launch",
        "search resume",
        "search status",
        "pipeline",
        "demo",
        "router train",
        "export",
        "eval",
        "tune",
        "tune status",
        "tune check",
        "dashboard",
        "bench routing",
        "bench search",
        "bench coordinator",
        "bench quality",
        "bench ablation",
        "bench eval",
        "db upgrade",
        "db check",
    }
    covered = {
        " ".join(case.args.split()[:2]) if case.args.split()[1][0] != "-" else case.args.split()[0]
        for case in CASES
    }
    assert commands <= covered | {c.split()[0] for c in covered}, commands - covered
    assert len(CASES) >= 30


def test_the_default_router_kind_is_a_registry_kind():
    # search.config skips the registry (and torch) for the default kind
    from router.registry import TRAINED
    from search.config import DEFAULT_ROUTER_KIND

    assert DEFAULT_ROUTER_KIND in TRAINED


HEAVY = ("torch", "transformers", "ray", "sqlalchemy")
LIGHT_CASES = [
    "search launch --config {in}/none.yaml",
    "search launch --config {in}/unknown.yaml",
    "search launch --config {demo} --target-sparsity 1.5",
    "search launch --config {tiny} --seq-len 4",
    "pipeline --config {in}/bad.yaml",
    "demo --workers 0",
    "bench search --config {in}/list.yaml",
    "bench routing --sparsity 1.0",
    "eval --model smollm2-135m --sparsity 2",
    "search launch --config {in}/empty.yaml",
    "search launch --config {in}/duplicate.yaml",
    "search launch --config {tiny} --generations 1000000000",
    "search launch --config {tiny} --run-name 12",
    "tune --config {tiny} --trials 2 --timeout nan",
]


@pytest.mark.parametrize(
    ("args", "heavy"),
    [(case, HEAVY) for case in LIGHT_CASES]
    # the database URL is checked (SQLAlchemy) before the model, the model before torch
    + [("search launch --config {tiny} --model no-such-model --db sqlite:///x.db", HEAVY[:3])],
)
def test_bad_config_or_option_is_answered_before_heavy_imports(args, heavy, inputs, tmp_path):
    # a timing test would be flaky on a shared machine: what makes a bad input slow to answer
    # is importing these packages, so check that none of them was imported
    argv = args.format(tiny=TINY, demo=ROOT / "configs/demo.yaml", **{"in": inputs}).split()
    code = (
        "import sys\nfrom ftprune.cli import main\n"
        f"sys.argv = ['ftprune', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2 []", done.stdout


# -- full disks and read-only files, in child processes ------------------------------------


def _without_file_permissions_override() -> None:
    """In the child: as root, drop CAP_DAC_OVERRIDE (and reading past permissions) from the
    bounding set, so the exec'd command meets file permissions like any user."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past it fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@dataclass(frozen=True)
class Child:
    """A child process's outcome, read like a CliRunner result."""

    exit_code: int
    stdout: str
    stderr: str


def _run_child(args: list[str], preexec: Callable[[], None], cwd: Path) -> Child:
    done = subprocess.run(
        [sys.executable, "-m", "ftprune.cli", *args],
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "FTPRUNE_DB": "sqlite:///never.db"},
        timeout=300,
    )
    return Child(done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["search", "launch", "--config", str(TINY), "--quiet"],
            "is not writable: Permission denied",
        ),
        (["db", "upgrade"], "is not writable: Permission denied"),
        (["router", "train", "--run", "r1", "--schedule", "0.3,0.3,0.3,0.3"], "is not writable"),
    ],
    ids=["search-launch", "db-upgrade", "router-train"],
)
def test_a_read_only_database_is_refused_untouched(databases, args, message):
    folder = Path(tempfile.mkdtemp())
    try:
        path = folder / "ro.db"
        path.write_bytes(databases["run"])
        path.chmod(0o444)
        before = snapshot(path)
        result = _run_child(
            [*args, "--db", f"sqlite:///{path}"], _without_file_permissions_override, folder
        )
        assert_refused(result, Case("read-only", "", message))
        assert snapshot(path) == before
        assert sorted(p.name for p in folder.iterdir()) == ["ro.db"]
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


@pytest.mark.parametrize(
    "command,existing",
    [("db upgrade", False), ("search launch --config " + str(TINY) + " -q", True)],
    ids=["db-upgrade-new", "search-launch-existing"],
)
def test_a_full_disk_is_refused_before_the_database_changes(databases, tmp_path, command, existing):
    path = tmp_path / "full.db"
    if existing:
        path.write_bytes(databases["run"])
    before = snapshot(path)
    # 64 kB for any file the command writes: less than the room check_writable asks for
    result = _run_child(
        [*command.split(), "--db", f"sqlite:///{path}"], _file_size_limit(64_000), tmp_path
    )
    assert_refused(result, Case("full-disk", "", r"full.db is not writable: File too large"))
    assert snapshot(path) == before
