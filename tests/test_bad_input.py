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
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from ftprune.cli import app

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
runner = CliRunner()


@dataclass(frozen=True)
class Case:
    name: str
    args: str  # the command line, split on spaces after formatting
    message: str  # regex the stderr line must match
    db: str = "none"  # the database {db} names before the command: none, empty, run, junk
    usage: bool = False  # a parser's "Invalid value for" line naming the option in ``message``


L = "search launch --config {tiny} --db {db} --quiet"
T = "router train --db {db} --run r1"
M = "--model random:llama-tiny"
CASES = [
    # search launch: the config file and its overrides
    Case(
        "launch-missing-config",
        "search launch --config {in}/none.yaml --db {db}",
        "config file not found",
    ),
    Case(
        "launch-config-is-a-directory",
        "search launch --config {in} --db {db}",
        "cannot read config file .*Is a directory",
    ),
    Case("launch-bad-yaml", "search launch --config {in}/bad.yaml --db {db}", "not valid YAML"),
    Case(
        "launch-config-not-a-mapping",
        "search launch --config {in}/list.yaml --db {db}",
        "expected a mapping",
    ),
    Case(
        "launch-unknown-config-key",
        "search launch --config {in}/unknown.yaml --db {db}",
        "populaton: Extra inputs are not permitted",
    ),
    Case(
        "launch-unknown-router-kind",
        "search launch --config {in}/kind.yaml --db {db}",
        "router_training.kind: unknown router kind 'lstm'",
    ),
    Case(
        "launch-static-start-of-a-hidden-state-router",
        "search launch --config {in}/static-start.yaml --db {db}",
        "init: static needs kind dynamic with the position factor",
    ),
    Case(
        "launch-nested-router-without-a-monotone-search",
        "search launch --config {in}/nested.yaml --db {db}",
        "router_training.nested needs monotone: true",
    ),
    Case(
        "launch-recall-prompts-longer-than-the-sequences",
        "search launch --config {in}/recall.yaml --db {db}",
        "calibration_recall: span-recall copies of 38 tokens need sequences of at least 75 tokens",
    ),
    Case(
        "launch-recall-share-above-one",
        "search launch --config {in}/recall-share.yaml --db {db}",
        "calibration_recall: Input should be less than or equal to 1",
    ),
    Case(
        "launch-sparsity-out-of-range",
        L + " --target-sparsity 1.5",
        "target_sparsity: Input should be less than 1",
    ),
    Case(
        "launch-sparsity-negative",
        L + " --target-sparsity -0.1",
        "target_sparsity: Input should be greater than or equal to 0",
    ),
    Case(
        "launch-sparsity-not-a-number",
        L + " --target-sparsity abc",
        "--target-sparsity",
        usage=True,
    ),
    Case(
        "launch-sparsity-above-block-limit",
        L + " --target-sparsity 0.9",
        "target_sparsity cannot exceed max_block_sparsity",
    ),
    Case("launch-seq-len-below-window", L + " --seq-len 4", "window must not exceed"),
    Case("launch-seq-len-not-a-number", L + " --seq-len long", "--seq-len", usage=True),
    Case(
        "launch-workers-zero",
        L + " --workers 0",
        "workers: Input should be greater than or equal to 1",
    ),
    Case("launch-unknown-pool", L + " --pool nowhere", "pool: Input should be 'local' or 'ray'"),
    Case("launch-malformed-device", L + " --device cuda:x", "unknown device 'cuda:x'"),
    # search launch: model, data, router, database
    Case("launch-unknown-model", L + " --model no-such-model", "unknown model 'no-such-model'"),
    Case(
        "launch-uncached-hub-model",
        L + " --model org/absent-model",
        "cannot read the config of model 'org/absent-model'",
    ),
    Case(
        "launch-unsupported-architecture",
        L + " --model {in}/gpt2",
        "model family 'gpt2' is not supported",
    ),
    Case(
        "launch-missing-calibration",
        L + " --calibration {in}/none.txt",
        "calibration file not found",
    ),
    Case(
        "launch-calibration-wrong-type",
        L + " --calibration {in}/bad.yaml",
        "use 'builtin:pydoc', a .txt file or a .jsonl",
    ),
    Case(
        "launch-empty-calibration",
        L + " --calibration {in}/empty.txt",
        "calibration file .*empty.txt holds no text",
    ),
    Case(
        "launch-calibration-too-short",
        L + " --calibration {in}/short.txt",
        r"short.txt \(calibration\) has \d+ tokens: too few for 6 sequences",
    ),
    Case(
        "launch-calibration-bad-jsonl",
        L + " --calibration {in}/bad.jsonl",
        r"bad.jsonl:2: expected a JSON object with a 'text' field",
    ),
    Case(
        "launch-seq-len-beyond-context",
        L + " --seq-len 64 --seq-len 999999",
        r"sequence length 999999 exceeds the context of model 'random:llama-tiny' \(4096 ",
    ),
    Case(
        "launch-router-missing",
        "search launch --config {in}/router-missing.yaml --db {db}",
        "not a router checkpoint",
    ),
    Case(
        "launch-router-corrupted",
        "search launch --config {in}/router-corrupt.yaml --db {db}",
        "router.json: invalid JSON",
    ),
    Case(
        "launch-router-bad-weights",
        "search launch --config {in}/router-garbage.yaml --db {db}",
        "router.safetensors: unreadable safetensors file",
    ),
    Case(
        "launch-router-for-another-model",
        "search launch --config {in}/router-other.yaml --db {db}",
        "trained for model 'random:qwen2-tiny', not 'random:llama-tiny'",
    ),
    Case(
        "launch-run-name-taken", L + " --run-name r1", "a run named 'r1' already exists", db="run"
    ),
    Case(
        "launch-malformed-db-url",
        "search launch --config {tiny} --db not-a-url",
        "invalid database URL",
    ),
    Case(
        "launch-unsupported-db",
        "search launch --config {tiny} --db mysql://x/y",
        "unsupported database 'mysql'",
    ),
    Case(
        "launch-db-directory-missing",
        "search launch --config {tiny} --db sqlite:///{in}/no/such/dir/x.db",
        "directory for the SQLite database does not exist",
    ),
    Case(
        "launch-unreachable-db",
        "search launch --config {tiny} --db {closed}",
        r"postgresql\+psycopg://ftp:\*\*\*@127.0.0.1:\d+/ftp: connection failed",
    ),
    Case("launch-not-a-database", L, "file is not a database", db="junk"),
    # search resume / status
    Case("resume-unknown-run", "search resume ghost --db {db}", "no run 'ghost'", db="run"),
    Case("resume-missing-database", "search resume r1 --db {db}", "no database at"),
    Case("status-unknown-run", "search status ghost --db {db}", "no run 'ghost'", db="run"),
    Case("status-missing-database", "search status --db {db}", "no database at"),
    Case("status-no-runs", "search status --db {db}", "holds no runs yet", db="empty"),
    Case("status-not-a-database", "search status --db {db}", "file is not a database", db="junk"),
    # pipeline, demo
    Case(
        "pipeline-rounds-zero",
        "pipeline --config {tiny} --db {db} --rounds 0",
        "--rounds must be at least 1",
    ),
    Case(
        "pipeline-bad-weights",
        "pipeline --config {tiny} --db {db} --weights bogus",
        "--weights must be one of",
    ),
    Case(
        "pipeline-empty-calibration",
        "pipeline --config {in}/empty-calibration.yaml --db {db}",
        "holds no text",
    ),
    Case(
        "pipeline-not-a-step-1",
        "pipeline --config {in}/router-static-random.yaml --db {db}",
        "static router",
    ),
    Case(
        "demo-workers-zero",
        "demo --quick --workers 0 --db {db}",
        "workers: Input should be greater than or equal to 1",
    ),
    Case("demo-unsupported-db", "demo --quick --db mysql://x/y", "unsupported database"),
    Case(
        "demo-device-second-gpu",
        "demo --quick --device cuda:1 --db {db}",
        "--device cuda:1: the demo's Ray workers share one GPU",
    ),
    # router train
    Case("train-unknown-run", "router train --db {db} --run ghost", "no run 'ghost'", db="run"),
    Case(
        "train-schedule-not-numbers",
        T + " --schedule a,b",
        "--schedule must be comma-separated numbers",
        db="run",
    ),
    Case(
        "train-schedule-wrong-length",
        T + " --schedule 0.3,0.3",
        "--schedule has 2 entries; the model has 4 blocks",
        db="run",
    ),
    Case(
        "train-schedule-out-of-range",
        T + " --schedule 0.3,0.3,0.3,1.2",
        r"must lie in \[0, 1\)",
        db="run",
    ),
    Case("train-no-best-schedule", T, "has no best schedule yet", db="run"),
    Case(
        "train-nested-router-on-a-decreasing-schedule",
        "router train --db {db} --run nested --schedule 0.4,0.2,0.3,0.3",
        "--schedule decreases, and router_training.nested routes only non-decreasing",
        db="run",
    ),
    Case("train-steps-zero", T + " --steps 0", "--steps must be at least 1", db="run"),
    Case(
        "train-bad-label",
        T + " --schedule 0.3,0.3,0.3,0.3 --label finetuned-1",
        "--label",
        db="run",
    ),
    # export
    Case(
        "export-unknown-run",
        "export --run ghost --out {in}/out --db {db}",
        "no run 'ghost'",
        db="run",
    ),
    Case(
        "export-out-not-empty",
        "export --run r1 --out {in}/gpt2 --db {db}",
        "exists and is not empty",
        db="run",
    ),
    Case(
        "export-run-without-router",
        "export --run r1 --out {in}/out --db {db}",
        "has no trained router",
        db="run",
    ),
    # eval
    Case("eval-two-sources", "eval --run r1 " + M + " --sparsity 0.3", "give exactly one of"),
    Case(
        "eval-sparsity-out-of-range",
        "eval " + M + " --sparsity 1.5",
        r"--sparsity must lie in \[0, 1\)",
    ),
    Case("eval-sparsity-not-a-number", "eval " + M + " --sparsity lots", "--sparsity", usage=True),
    Case(
        "eval-task-file-wrong-format",
        "eval " + M + " --sparsity 0.3 --task-file {in}/task.json",
        "no 'examples' list",
    ),
    Case(
        "eval-task-file-missing",
        "eval " + M + " --sparsity 0.3 --task-file {in}/none.json",
        "task file not found: .*none.json",
    ),
    Case(
        "eval-unsupported-architecture",
        "eval --model {in}/gpt2 --sparsity 0.3",
        "model family 'gpt2'",
    ),
    Case("eval-export-corrupted", "eval --export {in}/corrupt", "router.json: invalid JSON"),
    Case("eval-unknown-run", "eval --run ghost --db {db}", "no run 'ghost'", db="run"),
    Case(
        "eval-json-on-full-disk",
        "eval " + M + " --sparsity 0.3 --json /dev/full",
        "cannot write --json /dev/full: No space left on device",
    ),
    # tune
    Case(
        "tune-no-source",
        "tune --trials 2 --db {db}",
        "give exactly one of --run RUN and --config FILE",
    ),
    Case(
        "tune-parallel-on-sqlite",
        "tune --config {tiny} --trials 2 --workers 2 --db {db}",
        "parallel Optuna workers need PostgreSQL",
    ),
    Case(
        "tune-bad-objectives",
        "tune --config {tiny} --trials 2 --objectives speed --db {db}",
        "--objectives must be",
    ),
    Case(
        "tune-empty-calibration",
        "tune --config {in}/empty-calibration.yaml --trials 2 --db {db}",
        "holds no text",
    ),
    Case("tune-status-missing-database", "tune status --db {db}", "no database at"),
    Case("tune-status-no-study", "tune status --db {db}", "no tuning study in", db="run"),
    Case(
        "tune-status-plot-missing-directory",
        "tune status --plot {in}/none/s.png --db {db}",
        "--plot: directory .* does not exist",
        db="run",
    ),
    Case("tune-check-one-seed", "tune check --seeds 1 --db {db}", "--seeds must be at least 2"),
    Case(
        "tune-check-no-sequences",
        "tune check --heldout-sequences 0 --db {db}",
        "--heldout-sequences must be at least 1",
    ),
    Case("tune-check-missing-database", "tune check --db {db}", "no database at"),
    Case("tune-check-no-study", "tune check --db {db}", "no tuning study in", db="run"),
    # dashboard
    Case(
        "dashboard-port-not-a-number",
        "dashboard --db {db} --port web",
        "--port",
        usage=True,
        db="empty",
    ),
    Case("dashboard-not-a-database", "dashboard --db {db}", "file is not a database", db="junk"),
    # bench
    Case(
        "bench-routing-seq-len-beyond-context",
        "bench routing " + M + " --seq-len 999999",
        "--seq-len 999999 exceeds the context of model 'random:llama-tiny'",
    ),
    Case(
        "bench-routing-sparsity-one",
        "bench routing " + M + " --sparsity 1.0",
        r"--sparsity must lie in \[0, 1\)",
    ),
    Case(
        "bench-routing-unsupported-architecture",
        "bench routing --model {in}/gpt2",
        "model family 'gpt2'",
    ),
    Case(
        "bench-routing-json-on-full-disk",
        "bench routing " + M + " --json /dev/full",
        "No space left on device",
    ),
    Case(
        "bench-routing-json-directory-missing",
        "bench routing " + M + " --json {in}/no/such/out.json",
        "does not exist",
    ),
    Case("bench-search-tokens-zero", "bench search --tokens 0", "--tokens"),
    Case("bench-search-unknown-model", "bench search --model nope", "unknown model 'nope'"),
    Case("bench-search-unknown-config-key", "bench search --config {in}/unknown.yaml", "populaton"),
    Case("bench-coordinator-workers-zero", "bench coordinator --workers 0", "--workers"),
    Case(
        "bench-coordinator-unsupported-db",
        "bench coordinator --db mysql://x/y",
        "unsupported database",
    ),
    Case("bench-quality-seeds-zero", "bench quality --seeds 0", "--seeds"),
    Case("bench-quality-seq-len-below-window", "bench quality --seq-len 4", "window"),
    Case(
        "bench-quality-seq-len-beyond-context",
        "bench quality --config {tiny} --seq-len 999999",
        "exceeds the context",
    ),
    Case("bench-ablation-unknown-model", "bench ablation --model nope", "unknown model"),
    Case(
        "bench-eval-task-file-wrong-format",
        "bench eval " + M + " --task-file {in}/task.json",
        "no 'examples' list",
    ),
    Case("bench-eval-no-task", "bench eval " + M, "give at least one --task-file"),
    # db
    Case("db-upgrade-malformed-url", "db upgrade --db not-a-url", "invalid database URL"),
    Case("db-upgrade-unreachable", "db upgrade --db {closed}", "connection failed"),
    Case("db-upgrade-not-a-database", "db upgrade --db {db}", "file is not a database", db="junk"),
    Case("db-check-missing-database", "db check --db {db}", "no database at"),
]


def _write_checkpoint(directory: Path, model: str) -> Path:
    from router.checkpoint import save_router
    from router.dynamic import DynamicRouter

    return save_router(directory, DynamicRouter(), [0.3] * 4, model_spec=model)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The bad inputs the table names as ``{in}/...``."""
    root = tmp_path_factory.mktemp("inputs")
    tiny = TINY.read_text()
    (root / "bad.yaml").write_text("seq_lens: [64, 96\n")
    (root / "list.yaml").write_text("- model\n- calibration\n")
    (root / "unknown.yaml").write_text(tiny + "populaton: 3\n")
    (root / "kind.yaml").write_text(
        tiny.replace("router_training: {", "router_training: {kind: lstm, ")
    )
    (root / "static-start.yaml").write_text(
        tiny.replace("router_training: {", "router_training: {kind: hidden_state, init: static, ")
    )
    (root / "nested.yaml").write_text(
        tiny.replace("router_training: {", "router_training: {nested: true, ")
    )
    (root / "recall.yaml").write_text(
        tiny.replace("window: 8", "window: 30") + "calibration_recall: 0.5\n"
    )
    (root / "recall-share.yaml").write_text(tiny + "calibration_recall: 1.5\n")
    (root / "empty.txt").write_text("")
    (root / "short.txt").write_text("Only a few words of calibration text.\n")
    (root / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (root / "empty-calibration.yaml").write_text(
        tiny.replace("calibration: builtin:pydoc", f"calibration: {root / 'empty.txt'}")
    )
    (root / "router-static-random.yaml").write_text(tiny + "router: random\n")
    (root / "gpt2").mkdir()
    (root / "gpt2/config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (root / "task.json").write_text(json.dumps({"examples": "none", "name": "wrong"}))
    _write_checkpoint(root / "other", "random:qwen2-tiny")
    corrupt = _write_checkpoint(root / "corrupt", "random:llama-tiny")
    (corrupt / "router.json").write_text("{not json")
    garbage = _write_checkpoint(root / "garbage", "random:llama-tiny")
    (garbage / "router.safetensors").write_bytes(b"\x00garbage, not safetensors")
    for name, target in (
        ("missing", root / "no-such-checkpoint"),
        ("corrupt", corrupt),
        ("garbage", garbage),
        ("other", root / "other"),
    ):
        (root / f"router-{name}.yaml").write_text(tiny + f"router: dynamic:{target}\n")
    return root


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of each starting database (``none`` has none)."""
    from search.config import build_config
    from storage import Store

    root = tmp_path_factory.mktemp("databases")
    made = {}
    for kind in ("empty", "run"):
        path = root / f"{kind}.db"
        store = Store(f"sqlite:///{path}")
        if kind == "run":
            store.create_run("r1", build_config(TINY).model_dump(), 0)
            nested = build_config(TINY, monotone=True, router_training={"nested": True})
            store.create_run("nested", nested.model_dump(), 0)
        store.close()
        made[kind] = path.read_bytes()
    made["junk"] = b"these bytes are not a SQLite database\n"
    return made


@pytest.fixture(scope="module")
def closed_url() -> str:
    """A PostgreSQL URL with a password, on a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql+psycopg://ftp:never-shown@127.0.0.1:{port}/ftp"


def snapshot(path: Path) -> Any:
    """What "unchanged" means: absent, with nothing beside it (no ``-wal``, ``-shm``), or
    the file's bytes and those of its ``-wal`` (where committed SQLite writes wait for a
    checkpoint; an empty or missing one reads as no bytes)."""
    if not path.exists():
        return ("absent", sorted(p.name for p in path.parent.glob(path.name + "-*")))
    wal = path.with_name(path.name + "-wal")
    return ("file", path.read_bytes(), wal.read_bytes() if wal.exists() else b"")


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
    case, inputs, databases, closed_url, tmp_path, monkeypatch
):
    path = tmp_path / "ftprune.db"
    if case.db != "none":
        path.write_bytes(databases[case.db])
    url = f"sqlite:///{path}"
    args = case.args.format(db=url, tiny=TINY, closed=closed_url, **{"in": inputs}).split()
    before = snapshot(path)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args, env={"FTPRUNE_DB": url})
    assert_refused(result, case)
    assert snapshot(path) == before
    assert "never-shown" not in result.output


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
