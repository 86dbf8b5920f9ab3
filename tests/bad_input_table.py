"""The bad-input table: every row is a command line that must be refused with one line on
stderr naming the problem, exit status 2, nothing on stdout, the database exactly as it was,
and no model weights read. ``tests/test_bad_input.py`` runs each row in-process;
``scripts/bad_input_times.py`` runs each as a fresh process and reports how long it takes to
answer.

Placeholders: ``{db}`` is a SQLite URL (also ``$FTPRUNE_DB``) of a file holding what
:data:`DATABASES` says (``none``: no file at all); ``{in}`` holds the bad inputs
:func:`build_inputs` writes; ``{tiny}`` is configs/tiny.yaml; ``{closed}`` a PostgreSQL URL
(with a password) on a loopback port nothing listens on. A row with ``usage`` is a bad
option value that the command-line parser refuses (one line too): it must name the option.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
DATABASES = {
    "none": "no file",
    "empty": "ftprune's tables, no rows",
    "run": "runs r1 (no search yet), nested, done (finished), clash-finetune-1, unbounded "
    "(a stored config past today's bounds), future (stored by a newer ftprune), noart "
    "(artifacts_dir under /dev/null) and routed (one router, 'manual')",
    "junk": "a file that is no database",
    "newer": "the run database at a revision this ftprune does not know (9999)",
    "dropped": "the run database at the newest revision with ftp_routers dropped",
}


@dataclass(frozen=True)
class Case:
    name: str
    args: str  # the command line, split on spaces after formatting
    message: str  # regex the stderr line must match
    db: str = "none"  # the database {db} names before the command (see DATABASES)
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
        "--target-sparsity: Input should be less than 1",
    ),
    Case(
        "launch-sparsity-negative",
        L + " --target-sparsity -0.1",
        "--target-sparsity: Input should be greater than or equal to 0",
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
        "gpt2: family 'gpt2' is not supported",
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
        "--rounds must lie in 1..100",
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
    Case("train-steps-zero", T + " --steps 0", "--steps must lie in 1..10000000", db="run"),
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
        "gpt2: family 'gpt2'",
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
    Case(
        "tune-check-one-seed",
        "tune check --seeds 1 --db {db}",
        r"--seeds \(a spread needs two\) must lie in 2..100",
    ),
    Case(
        "tune-check-no-sequences",
        "tune check --heldout-sequences 0 --db {db}",
        "--heldout-sequences must lie in 1..100000",
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
        "gpt2: family 'gpt2'",
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
    # -- the classes of issue-sized holes: every file a user names, every bound, every name --
    # config files: empty, duplicate keys, not UTF-8, non-finite numbers
    Case("launch-empty-config", "search launch --config {in}/empty.yaml --db {db}", "is empty"),
    Case(
        "launch-comments-only-config",
        "search launch --config {in}/comments.yaml --db {db}",
        "is empty",
    ),
    Case(
        "launch-duplicate-key",
        "search launch --config {in}/duplicate.yaml --db {db}",
        r"duplicate key 'target_sparsity' at line \d+",
    ),
    Case(
        "launch-duplicate-nested-key",
        "search launch --config {in}/duplicate-nested.yaml --db {db}",
        "duplicate key 'steps'",
    ),
    Case(
        "launch-config-not-utf8",
        "search launch --config {in}/latin1.yaml --db {db}",
        "cannot read config file .*not UTF-8 text",
    ),
    Case(
        "launch-timeout-not-finite",
        "search launch --config {in}/timeout-nan.yaml --db {db}",
        "task_timeout_s: Input should be a finite number",
    ),
    Case("launch-sparsity-nan", L + " --target-sparsity nan", "Input should be a finite number"),
    Case("launch-sparsity-inf", L + " --target-sparsity inf", "Input should be a finite number"),
    # integers past what a user can mean
    Case(
        "launch-generations-absurd",
        L + " --generations 99999999999999999999",
        "generations: Input should be less than or equal to 100000",
    ),
    Case(
        "launch-generations-billion",
        L + " --generations 1000000000",
        "generations: Input should be less than or equal to 100000",
    ),
    Case(
        "launch-offspring-absurd",
        L + " --offspring 10000000",
        "offspring: Input should be less than or equal to 100000",
    ),
    Case(
        "launch-workers-absurd",
        L + " --workers 100000",
        "workers: Input should be less than or equal to 4096",
    ),
    Case("launch-seed-negative", L + " --seed -1", "seed: Input should be greater than or equal"),
    Case(
        "launch-seed-past-32-bits",
        L + " --seed 4294967296",
        "seed: Input should be less than or equal to 4294967295",
    ),
    Case(
        "launch-seq-len-absurd",
        L + " --seq-len 64 --seq-len 99999999999",
        r"--seq-len: 1: Input should be less than or equal to 1048576",
    ),
    # run names: ids, generated forms, paths, control characters, length
    Case("launch-run-name-like-an-id", L + " --run-name 1", "'1' looks like a run id"),
    Case("launch-run-name-auto-form", L + " --run-name run-7", "names given to runs without one"),
    Case(
        "launch-run-name-finetune-form",
        L + " --run-name mine-finetune-1",
        "the pipeline's fine-tuning runs",
    ),
    Case("launch-run-name-path", L + " --run-name ../up", "may hold only letters, digits"),
    Case(
        "launch-run-name-newline",
        "search launch --config {in}/newline-name.yaml --db {db}",
        "may hold only letters, digits",
    ),
    Case(
        "launch-run-name-long", L + " --run-name " + "n" * 300, "300 characters long; at most 100"
    ),
    # calibration files: not UTF-8, JSONL values, a directory
    Case(
        "launch-calibration-not-utf8",
        L + " --calibration {in}/latin1.txt",
        r"calibration file .*latin1.txt is not UTF-8 text \(byte 0xe9",
    ),
    Case(
        "launch-calibration-jsonl-not-utf8",
        L + " --calibration {in}/latin1.jsonl",
        "latin1.jsonl is not UTF-8 text",
    ),
    Case(
        "launch-calibration-jsonl-text-not-a-string",
        L + " --calibration {in}/number.jsonl",
        r"number.jsonl:1: expected a JSON object with a 'text' field",
    ),
    Case(
        "launch-calibration-is-a-directory",
        L + " --calibration {in}/folder.txt",
        "calibration file not found",
    ),
    Case(
        "launch-seed-run-unknown",
        "search launch --config {in}/seed-ghost.yaml --db {db}",
        "no run 'ghost'",
        db="run",
    ),
    # databases a writer must refuse
    Case(
        "launch-db-is-a-directory",
        "search launch --config {tiny} --db sqlite:///{in}",
        "is not writable",
    ),
    Case(
        "launch-db-is-a-text-file",
        "search launch --config {tiny} --db sqlite:///{in}/short.txt",
        "file is not a database",
    ),
    Case("launch-newer-schema", L, "revision 9999, which this ftprune does not know", db="newer"),
    Case("launch-dropped-table", L, "differs from the models", db="dropped"),
    # search resume: finished runs, stored configs that cannot be used, newer schemas
    Case(
        "resume-finished-run",
        "search resume done --db {db}",
        "run 'done' has finished.*: nothing to resume",
        db="run",
    ),
    Case(
        "resume-stored-config-out-of-bounds",
        "search resume unbounded --db {db}",
        r"run 'unbounded': its stored config \(version 1\) cannot be used: generations",
        db="run",
    ),
    Case(
        "resume-stored-config-from-a-newer-ftprune",
        "search resume future --db {db}",
        "run 'future' was stored by a newer ftprune",
        db="run",
    ),
    Case(
        "resume-malformed-device",
        "search resume r1 --device gpu --db {db}",
        "unknown device 'gpu'",
        db="run",
    ),
    Case("resume-newer-schema", "search resume r1 --db {db}", "newer ftprune", db="newer"),
    Case(
        "resume-dropped-table", "search resume r1 --db {db}", "lacks ftprune tables", db="dropped"
    ),
    Case("status-newer-schema", "search status --db {db}", "newer ftprune", db="newer"),
    Case("status-unknown-run-id", "search status 999 --db {db}", "no run '999'", db="run"),
    # pipeline: every name it will create, resume, bounds
    Case(
        "pipeline-fine-tuning-name-taken",
        "pipeline --config {tiny} --run-name clash --db {db}",
        "a run named 'clash-finetune-1' already exists",
        db="run",
    ),
    Case(
        "pipeline-checkpoint-directory-taken",
        "pipeline --config {in}/artifacts-taken.yaml --run-name clash --db {db}",
        "round-1 already holds a router checkpoint",
    ),
    Case(
        "pipeline-artifacts-not-a-directory",
        "pipeline --config {in}/artifacts-file.yaml --run-name art --db {db}",
        "short.txt is not a directory",
    ),
    Case(
        "pipeline-target-zero",
        "pipeline --config {in}/zero-target.yaml --db {db}",
        "target_sparsity must be above 0",
    ),
    Case("pipeline-rounds-absurd", "pipeline --config {tiny} --rounds 1000 --db {db}", "1..100"),
    Case("pipeline-empty-config", "pipeline --config {in}/empty.yaml --db {db}", "is empty"),
    Case(
        "pipeline-config-and-resume",
        "pipeline --config {tiny} --resume r1 --db {db}",
        "give exactly one of --config FILE and --resume RUN",
    ),
    Case(
        "pipeline-neither-config-nor-resume",
        "pipeline --db {db}",
        "give exactly one of --config FILE and --resume RUN",
    ),
    Case(
        "pipeline-resume-unknown-run",
        "pipeline --resume ghost --db {db}",
        "no run 'ghost'",
        db="run",
    ),
    Case(
        "pipeline-resume-with-a-new-name",
        "pipeline --resume r1 --run-name other --db {db}",
        "--resume continues the run with its stored config",
        db="run",
    ),
    Case("pipeline-resume-newer-schema", "pipeline --resume r1 --db {db}", "newer", db="newer"),
    Case("demo-workers-absurd", "demo --quick --workers 99999 --db {db}", "less than or equal"),
    # router train: schedules a router cannot learn from, off-target means, names
    Case(
        "train-schedule-off-target",
        T + " --schedule 0.9,0.9,0.9,0.9",
        "has mean sparsity 0.900, the run's target is 0.300: pass --any-mean",
        db="run",
    ),
    Case(
        "train-schedule-zeros",
        T + " --schedule 0,0,0,0 --any-mean",
        "drops no token of a 64-token sequence in blocks 1 to 3: .*nothing to learn",
        db="run",
    ),
    Case(
        "train-schedule-zeros-off-target",
        T + " --schedule 0,0,0,0",
        "has mean sparsity 0.000",
        db="run",
    ),
    Case(
        "train-schedule-only-the-static-block",
        T + " --schedule 0.6,0,0,0 --any-mean",
        "nothing to learn",
        db="run",
    ),
    Case(
        "train-schedule-nan",
        T + " --schedule nan,0.3,0.3,0.3",
        "--schedule must be finite numbers",
        db="run",
    ),
    Case(
        "train-schedule-inf",
        T + " --schedule inf,0.3,0.3,0.3",
        "--schedule must be finite numbers",
        db="run",
    ),
    Case(
        "train-label-path", T + " --label ../elsewhere", "--label '../elsewhere' may hold", db="run"
    ),
    Case("train-label-long", T + " --label " + "l" * 150, "--label is 150 characters", db="run"),
    Case("train-steps-absurd", T + " --steps 99999999999", "--steps must lie in", db="run"),
    Case("train-bad-weights", T + " --weights bogus", "--weights must be one of", db="run"),
    Case(
        "train-artifacts-not-a-directory",
        "router train --db {db} --run noart --schedule 0.3,0.3,0.3,0.3",
        "/dev/null is not a directory",
        db="run",
    ),
    Case(
        "train-stored-config-out-of-bounds",
        "router train --db {db} --run unbounded",
        "its stored config",
        db="run",
    ),
    Case("train-newer-schema", T, "newer ftprune", db="newer"),
    # export: where it writes, what it writes
    Case(
        "export-out-is-a-file",
        "export --run r1 --out {in}/short.txt --db {db}",
        "--out .*short.txt exists and is not a directory",
        db="run",
    ),
    Case(
        "export-out-under-a-file",
        "export --run r1 --out {in}/short.txt/model --db {db}",
        "short.txt is not a directory",
        db="run",
    ),
    Case(
        "export-out-unwritable",
        "export --run r1 --out /proc/ftprune-export --db {db}",
        "--out /proc/ftprune-export is not writable",
        db="run",
    ),
    Case(
        "export-unknown-schedule-word",
        "export --run r1 --out {in}/out --schedule best --db {db}",
        "--schedule must be one of finetuned, trained",
        db="run",
    ),
    Case(
        "export-unknown-router-label",
        "export --run routed --out {in}/out --router round-9 --db {db}",
        "run 'routed' has no router 'round-9' \\(it has: manual\\)",
        db="run",
    ),
    Case(
        "export-router-without-fine-tuned-schedule",
        "export --run routed --out {in}/out --schedule finetuned --db {db}",
        "router 'manual' of run 'routed' has no fine-tuned schedule",
        db="run",
    ),
    Case(
        "export-newer-schema",
        "export --run r1 --out {in}/out --db {db}",
        "newer ftprune",
        db="newer",
    ),
    # eval: task files, text files, words, runs, bounds
    Case(
        "eval-task-every-choice-correct",
        "eval " + M + " --sparsity 0.3 --task-file {in}/all-correct.json",
        "example 0: every choice is correct",
    ),
    Case(
        "eval-task-one-choice",
        "eval " + M + " --sparsity 0.3 --task-file {in}/one-choice.json",
        "example 0 has one choice",
    ),
    Case(
        "eval-task-nan-score",
        "eval " + M + " --sparsity 0.3 --task-file {in}/nan-score.json",
        "NaN is not a number a task can hold",
    ),
    Case(
        "eval-task-ten-thousand-choices",
        "eval " + M + " --sparsity 0.3 --task-file {in}/many-choices.json",
        "example 0 has 10000 choices; at most 256",
    ),
    Case(
        "eval-task-longer-than-the-context",
        "eval " + M + " --sparsity 0.3 --task-file {in}/long-input.json",
        r"example 0: its prompt and choice are \d+ tokens, model 'random:llama-tiny' reads "
        "at most 4096",
    ),
    Case(
        "eval-task-repeated-choice",
        "eval " + M + " --sparsity 0.3 --task-file {in}/repeated-choice.json",
        "the key 'yes' appears twice",
    ),
    Case(
        "eval-task-not-utf8",
        "eval " + M + " --sparsity 0.3 --task-file {in}/latin1.json",
        "not a JSON file",
    ),
    Case(
        "eval-text-not-utf8",
        "eval " + M + " --sparsity 0.3 --text {in}/latin1.txt",
        "latin1.txt is not UTF-8 text",
    ),
    Case(
        "eval-text-missing",
        "eval " + M + " --sparsity 0.3 --text {in}/none.txt",
        "--text file not found",
    ),
    Case(
        "eval-text-empty",
        "eval " + M + " --sparsity 0.3 --text {in}/empty.txt",
        "--text file .*empty.txt holds no text",
    ),
    Case(
        "eval-unknown-router-word",
        "eval --run r1 --router learned --db {db}",
        "--router must be one of static, random, dynamic, not 'learned'",
        db="run",
    ),
    Case(
        "eval-unknown-schedule-word",
        "eval --run r1 --schedule newest --db {db}",
        "--schedule must be one of uniform, best, finetuned",
        db="run",
    ),
    Case("eval-compare-unknown-run", "eval --compare ghost --db {db}", "no run 'ghost'", db="run"),
    Case(
        "eval-export-not-a-directory",
        "eval --export {in}/short.txt",
        "not a router checkpoint",
    ),
    Case("eval-export-empty-directory", "eval --export {in}/folder.txt", "not a router checkpoint"),
    Case(
        "eval-unknown-lm-eval-task",
        "eval " + M + " --sparsity 0.3 --tasks no_such_task_anywhere",
        "unknown lm-eval task 'no_such_task_anywhere'",
    ),
    Case(
        "eval-schedule-not-finite",
        "eval " + M + " --schedule nan,0.3,0.3,0.3",
        r"every --schedule entry must lie in \[0, 1\)",
    ),
    Case("eval-limit-absurd", "eval " + M + " --sparsity 0.3 --limit 99999999999", "--limit"),
    Case(
        "eval-resamples-absurd",
        "eval " + M + " --sparsity 0.3 --resamples 99999999999",
        "--resamples in 1..1000000",
    ),
    Case("eval-seed-negative", "eval " + M + " --sparsity 0.3 --seed -1", "--seed must lie in"),
    # tune: non-finite and absurd numbers
    Case(
        "tune-timeout-nan",
        "tune --config {tiny} --trials 2 --timeout nan --db {db}",
        "--timeout must be a number of seconds",
    ),
    Case(
        "tune-timeout-inf",
        "tune --config {tiny} --trials 2 --timeout inf --db {db}",
        "--timeout must be a number of seconds",
    ),
    Case("tune-trials-absurd", "tune --config {tiny} --trials 99999999 --db {db}", "--trials"),
    Case(
        "tune-seed-negative",
        "tune --config {tiny} --trials 2 --seed -1 --db {db}",
        "seed: Input should be greater than or equal to 0",
    ),
    Case("tune-empty-config", "tune --config {in}/empty.yaml --trials 2 --db {db}", "is empty"),
    Case("tune-run-unknown", "tune --run ghost --trials 2 --db {db}", "no run 'ghost'", db="run"),
    # db and dashboard on databases they must refuse
    Case(
        "db-upgrade-newer-schema",
        "db upgrade --db {db}",
        "written by a newer ftprune, upgrade ftprune",
        db="newer",
    ),
    Case("db-check-not-a-database", "db check --db {db}", "file is not a database", db="junk"),
    Case("dashboard-newer-schema", "dashboard --db {db}", "newer ftprune", db="newer"),
    Case("tune-check-seeds-absurd", "tune check --seeds 100000 --db {db}", "2..100, got 100000"),
    Case("tune-status-top-zero", "tune status --top 0 --db {db}", "--top must lie in 1..10000"),
    Case("bench-search-seeds-absurd", "bench search --seeds 1000000", "--seeds must lie in 1..100"),
    Case("bench-routing-batch-absurd", "bench routing --batch 10000000", "--batch must lie in"),
    Case(
        "bench-coordinator-candidates-absurd",
        "bench coordinator --candidates 99999999999",
        "--candidates must lie in",
    ),
    Case("dashboard-port-out-of-range", "dashboard --db {db} --port 70000", "1..65535", db="run"),
]


def _write_checkpoint(directory: Path, model: str) -> Path:
    from router.checkpoint import save_router
    from router.dynamic import DynamicRouter

    return save_router(directory, DynamicRouter(), [0.3] * 4, model_spec=model)


def _task(path: Path, examples: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"name": path.stem, "examples": examples}))


def build_inputs(root: Path) -> Path:
    """Write the bad inputs the table names as ``{in}/...`` into ``root``; returns it."""
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
    _more_inputs(root, tiny)
    return root


def _more_inputs(root: Path, tiny: str) -> None:
    """Config files, text files and task files of the classes the table's later rows cover."""
    (root / "empty.yaml").write_text("")
    (root / "comments.yaml").write_text("# nothing but a comment\n")
    (root / "duplicate.yaml").write_text(tiny + "target_sparsity: 0.5\n")
    (root / "duplicate-nested.yaml").write_text(
        tiny.replace("router_training: {", "router_training: {steps: 9, ")
    )
    (root / "latin1.yaml").write_bytes("model: caf\xe9\n".encode("latin-1"))
    (root / "timeout-nan.yaml").write_text(tiny + "task_timeout_s: .nan\n")
    (root / "newline-name.yaml").write_text(tiny + 'run_name: "two\\nlines"\n')
    (root / "seed-ghost.yaml").write_text(tiny + "seed_run: ghost\n")
    (root / "zero-target.yaml").write_text(
        tiny.replace("target_sparsity: 0.3", "target_sparsity: 0")
    )
    (root / "artifacts-file.yaml").write_text(tiny + f"artifacts_dir: {root / 'short.txt'}/a\n")
    (root / "artifacts-taken.yaml").write_text(tiny + f"artifacts_dir: {root / 'artifacts'}\n")
    (root / "artifacts/clash/round-1").mkdir(parents=True)
    (root / "artifacts/clash/round-1/router.json").write_text("{}")
    (root / "latin1.txt").write_bytes("Caf\xe9 au lait.\n".encode("latin-1"))
    (root / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (root / "number.jsonl").write_text('{"text": 5}\n')
    (root / "folder.txt").mkdir()
    (root / "latin1.json").write_bytes('{"examples": ["caf\xe9"]}'.encode("latin-1"))
    _task(root / "all-correct.json", [{"input": "Pick.", "target_scores": {"a": 1, "b": 1}}])
    _task(root / "one-choice.json", [{"input": "Pick.", "target_scores": {"only": 1}}])
    (root / "nan-score.json").write_text(
        '{"examples": [{"input": "Pick.", "target_scores": {"a": NaN, "b": 1}}]}'
    )
    many = {f"choice {i}": int(i == 0) for i in range(10_000)}
    _task(root / "many-choices.json", [{"input": "Pick.", "target_scores": many}])
    long = {"input": "word " * 5000, "target_scores": {"yes": 1, "no": 0}}
    _task(root / "long-input.json", [long])
    (root / "repeated-choice.json").write_text(
        '{"examples": [{"input": "Pick.", "target_scores": {"yes": 1, "no": 0, "yes": 0}}]}'
    )


def build_databases(root: Path) -> dict[str, bytes]:
    """The bytes of each starting database of :data:`DATABASES` (``none`` has none)."""
    from search.config import build_config
    from search.stored import stored_config
    from storage import Store

    made = {}
    for kind in ("empty", "run"):
        path = root / f"{kind}.db"
        store = Store(f"sqlite:///{path}")
        if kind == "run":
            tiny = build_config(TINY)
            store.create_run("r1", tiny.model_dump(), 0)
            nested = build_config(TINY, monotone=True, router_training={"nested": True})
            store.create_run("nested", nested.model_dump(), 0)
            done = store.create_run("done", stored_config(tiny), 0)
            store.set_status(done.id, "finished")
            store.create_run("clash-finetune-1", stored_config(tiny), 0)
            store.create_run("unbounded", {**tiny.model_dump(), "generations": 10**12}, 0)
            store.create_run("future", {**stored_config(tiny), "config_version": 9}, 0)
            noart = tiny.model_copy(update={"artifacts_dir": "/dev/null/artifacts"})
            store.create_run("noart", stored_config(noart), 0)
            routed = store.create_run("routed", stored_config(tiny), 0)
            store.add_router(
                routed.id,
                "manual",
                [0.3] * 4,
                {"guide": 1.0, "sparse": 1.0, "distill": 1.0},
                str(root / "no-checkpoint"),
                "0" * 64,
                {"step": [0]},
                {},
            )
        store.close()
        made[kind] = path.read_bytes()
    made["junk"] = b"these bytes are not a SQLite database\n"
    made["newer"] = _altered(
        root, made["run"], "UPDATE ftp_alembic_version SET version_num = '9999'"
    )
    made["dropped"] = _altered(root, made["run"], "DROP TABLE ftp_routers")
    return made


def _altered(root: Path, database: bytes, statement: str) -> bytes:
    path = root / "altered.db"
    path.write_bytes(database)
    with sqlite3.connect(path) as connection:
        connection.execute(statement)
    connection.close()
    altered = path.read_bytes()
    path.unlink()
    return altered


def closed_url() -> str:
    """A PostgreSQL URL with a password, on a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql+psycopg://ftp:never-shown@127.0.0.1:{port}/ftp"


def command_line(case: Case, url: str, inputs: Path, closed: str) -> list[str]:
    """The row's arguments, placeholders filled."""
    return case.args.format(db=url, tiny=TINY, closed=closed, **{"in": inputs}).split()


def snapshot(path: Path) -> Any:
    """What "unchanged" means: absent, with nothing beside it (no ``-wal``, ``-shm``), or
    the file's bytes and those of its ``-wal`` (where committed SQLite writes wait for a
    checkpoint; an empty or missing one reads as no bytes)."""
    if not path.exists():
        return ("absent", sorted(p.name for p in path.parent.glob(path.name + "-*")))
    wal = path.with_name(path.name + "-wal")
    return ("file", path.read_bytes(), wal.read_bytes() if wal.exists() else b"")
