"""One database for the whole dashboard suite, filled once: a real tiny FTP pipeline (search
with the static router, router training, fine-tuning search) on the tiny random model, then
what the tiny path does not produce itself: a failed run, a run still running, task results
and routing benchmark rows (the values a real `ftprune eval` / `ftprune bench routing` row
has), and two Optuna studies (one and two objectives) beside ftprune's tables."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from ftprune.cli import app
from storage import RunPlan, Store
from tests.storage.conftest import postgres, postgresql_url  # noqa: F401
from tests.storage.helpers import scored

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/tiny.yaml"
BLOCKS = 4  # random:llama-tiny


@dataclass(frozen=True)
class Filled:
    url: str
    path: Path
    run: str  # the pipeline's main run
    child: str  # its fine-tuning run
    failed: str
    running: str
    pipeline_output: str  # what `ftprune pipeline` printed (on the original file's URL)
    pipeline_url: str


def _objective(trial: optuna.Trial) -> float:
    guide = trial.suggest_float("lambda_guide", 0.1, 2.0)
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return (guide - 1.0) ** 2 + abs(lr - 1e-3)


def _pareto(trial: optuna.Trial) -> tuple[float, float]:
    sparsity = trial.suggest_float("target_sparsity", 0.2, 0.4)
    return sparsity**2 + trial.suggest_float("lambda_sparse", 0.0, 1.0) / 10, sparsity


@pytest.fixture(scope="package")
def filled(tmp_path_factory) -> Filled:
    root = tmp_path_factory.mktemp("dashboard")
    config = yaml.safe_load(TINY.read_text())
    config.update(
        generations=2,
        finetune_generations=1,
        router_training={**config["router_training"], "steps": 2, "eval_every": 1},
    )
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    path = root / "ftprune.db"
    url = f"sqlite:///{path}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result = CliRunner().invoke(
            app,
            [
                "pipeline",
                "--config",
                str(root / "tiny.yaml"),
                "--run-name",
                "tiny",
                "--db",
                url,
                "--quiet",
            ],
        )
    assert result.exit_code == 0, result.output
    store = Store(url, create=False)
    try:
        main = store.find_run("tiny")
        failed = store.create_run(
            "broken",
            {"model": "random:llama-tiny", "target_sparsity": 0.4, "generations": 3},
            0,
            plan=RunPlan("random:llama-tiny", 0.4, 3),
        )
        store.set_status(failed.id, "failed", "RuntimeError: every Ray worker died")
        running = store.create_run(
            "live",
            {"model": "random:qwen2-tiny", "target_sparsity": 0.2, "generations": 5},
            0,
            plan=RunPlan("random:qwen2-tiny", 0.2, 5),
        )
        store.record_generation(
            running.id,
            0,
            [scored(0.02, [0.2] * BLOCKS), scored(0.03, [0.1, 0.2, 0.2, 0.3])],
            0.02,
            [0.2] * BLOCKS,
        )
        store.add_eval_results(
            main.id,
            "best",
            "static",
            [
                {
                    "task": "bigbench:understanding_fables",
                    "metric": "acc",
                    "dense": 0.5,
                    "routed": 0.45,
                    "samples": 120,
                    "ci_low": 0.8,
                    "ci_high": 1.0,
                    "realized_sparsity": 0.3,
                    "flop_saving": 0.32,
                },
                {
                    "task": "text:builtin:pydoc",
                    "metric": "top1_agreement",
                    "dense": 1.0,
                    "routed": 0.9,
                    "samples": 4,
                },
                {
                    "task": "text:builtin:pydoc",
                    "metric": "window_kl",
                    "dense": 0.0,
                    "routed": 0.01,
                    "samples": 4,
                },
            ],
        )
        store.add_benchmark_rows(
            "routing",
            [
                {
                    "model": "random:llama-tiny",
                    "seq_len": seq_len,
                    "batch": 1,
                    "target_sparsity": s,
                    "realized_sparsity": s,
                    "ideal_speedup": 1 / (1 - s),
                    "speedup": 1 + s * 0.8,
                    "efficiency": (1 + s * 0.8) * (1 - s),
                    "scope": "blocks",
                }
                for seq_len in (512, 1024)
                for s in (0.25, 0.4)
            ],
        )
    finally:
        store.close()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name="tune-tiny", storage=storage).optimize(_objective, n_trials=6)
    optuna.create_study(
        study_name="tune-tiny-pareto", storage=storage, directions=["minimize", "maximize"]
    ).optimize(_pareto, n_trials=6)
    storage.engine.dispose()
    return Filled(
        url=_quiet_copy(path, root / "dashboard.db"),
        path=root / "dashboard.db",
        run="tiny",
        child="tiny-finetune-1",
        failed="broken",
        running="live",
        pipeline_output=result.stdout,
        pipeline_url=url,
    )


def _quiet_copy(source: Path, target: Path) -> str:
    """A WAL-mode copy of ``source`` that no connection of this process holds open, so that
    nothing but the tests' readers ever touches it (writers left open by the commands run
    in-process could otherwise checkpoint into it when collected)."""
    gc.collect()
    with contextlib.closing(sqlite3.connect(source)) as connection:
        connection.execute("VACUUM INTO ?", (str(target),))
    with contextlib.closing(sqlite3.connect(target)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    return f"sqlite:///{target}"
