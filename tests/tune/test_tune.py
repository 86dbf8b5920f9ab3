"""``ftprune tune`` on the tiny config: trial budgets shared by parallel workers on
PostgreSQL, one worker on SQLite, parallel SQLite refused before anything is touched, a
killed worker's trial failed and retried, and the best settings used by ``router train
--weights best``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from typer.testing import CliRunner

from ftprune.cli import app
from ftprune.tune import tuned_config
from ftprune.tune_report import check_study, check_verdict
from search.config import ConfigError, build_config
from storage import Store
from tests.storage.helpers import scored

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/tiny.yaml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
runner = CliRunner()


@pytest.fixture
def one_thread():
    """In-process trials on one torch thread (the tiny model only pays thread overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The command in a fresh process (workers are spawned processes of it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "ftprune.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _config(tmp_path: Path, **tuning) -> Path:
    """The tiny config with ``tuning`` settings (and longer training if asked)."""
    data = yaml.safe_load(TINY.read_text())
    steps = tuning.pop("steps", None)
    if steps:
        data["router_training"].update(steps=steps, eval_every=steps // 2)
    data["tuning"] = tuning
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check_study(url: str, name: str, trials: int) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == trials
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    first = study.trials[0]  # the paper's equal weights, from the config
    assert (
        first.params["lambda_guide"],
        first.params["lambda_sparse"],
        first.params["lambda_distill"],
    ) == (1.0, 1.0, 1.0)
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.values[0] >= 0 and "constraint" in trial.user_attrs
            assert trial.constraints["sparsity_miss"] == trial.user_attrs["constraint"]
    return study.trials


def test_parallel_workers_on_postgresql_share_the_budget(postgresql_url):
    done = _cli(
        "tune",
        "--config",
        str(TINY),
        "--trials",
        "8",
        "--workers",
        "2",
        "-q",
        "--db",
        postgresql_url,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    trials = _check_study(postgresql_url, "tune-tiny", 8)
    workers = {t.user_attrs["worker"] for t in trials if t.state in FINISHED}
    assert len(workers) == 2  # both processes ran trials
    assert "8 finished trials" in done.stdout


def test_one_worker_on_sqlite_then_status_and_check(sqlite_url, tmp_path, one_thread):
    result = runner.invoke(
        app, ["tune", "--config", str(TINY), "--trials", "8", "-q", "--db", sqlite_url]
    )
    assert result.exit_code == 0, result.output
    _check_study(sqlite_url, "tune-tiny", 8)
    status = runner.invoke(app, ["tune", "status", "--db", sqlite_url])
    assert status.exit_code == 0 and "study tune-tiny: 8 finished trials" in status.output
    again = runner.invoke(
        app, ["tune", "--config", str(TINY), "--trials", "10", "-q", "--db", sqlite_url]
    )  # resumed by name: 2 more
    assert again.exit_code == 0, again.output
    trials = _check_study(sqlite_url, "tune-tiny", 10)

    plot = tmp_path / "sensitivity.png"
    status = runner.invoke(app, ["tune", "status", "--plot", str(plot), "--db", sqlite_url])
    assert status.exit_code == 0 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = tmp_path / "check.json"
    checked = runner.invoke(
        app,
        ["tune", "check", "--seeds", "2", "--heldout-sequences", "6", "-q"]
        + ["--json", str(out), "--db", sqlite_url],
    )
    assert checked.exit_code == 0, checked.output
    rows = json.loads(out.read_text())
    summary = check_verdict(rows)
    best = min(
        (t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs["constraint"] <= 0),
        key=lambda t: (t.values[0], t.number),
    )
    assert [(r["weights"], r.get("seed")) for r in rows] == [
        ("first", 0),
        ("best", 0),
        ("first", 1),
        ("best", 1),
        ("static", None),
    ]
    *rows, static = rows
    assert static["heldout_sequences"] == 4 and summary["static"] == static["heldout_kl"]
    for row in rows:
        trial = trials[0] if row["weights"] == "first" else best
        assert row["trial"] == trial.number
        assert all(row[name] == trial.params[name] for name in trial.params)
        # 6 per length laid out, the 2 at the study's own positions dropped
        assert row["heldout_sequences"] == 4 and row["heldout_kl"] >= 0
    first = [r["heldout_kl"] for r in rows if r["weights"] == "first"]
    assert summary["first"]["min"] == min(first) and summary["first"]["max"] == max(first)
    assert summary["beyond_spread"] == (
        max(r["heldout_kl"] for r in rows if r["weights"] == "best") < min(first)
    )
    verdict = "yes" if summary["beyond_spread"] else "no"
    assert f"beyond the seed spread (every seed below every seed): {verdict}" in checked.output


def test_check_refuses_a_study_whose_best_is_its_first_trial():
    from optuna.distributions import FloatDistribution

    study = optuna.create_study()
    study.set_user_attr("config", {})
    for value in (0.1, 0.2):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 1e-3},
                distributions={"lr": FloatDistribution(1e-4, 1e-2, log=True)},
                value=value,
                system_attrs={"constraints": [-1.0]},
            )
        )
    with pytest.raises(ConfigError, match="the best trial is the first"):
        check_study(study, 2, 8)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "parallel Optuna workers need PostgreSQL"),
        (["--objectives", "latency"], "--objectives must be"),
        (["--workers", "0"], "--workers must lie in 1.."),
    ],
)
def test_bad_input_is_one_line_before_the_database(tmp_path, args, message):
    path = tmp_path / "never.db"
    result = runner.invoke(
        app, ["tune", "--config", str(TINY), "--trials", "2", *args, "--db", f"sqlite:///{path}"]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not path.exists()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_killed_worker_trial_is_failed_and_retried(postgresql_url, tmp_path):
    config = _config(tmp_path, heartbeat_interval=1, grace_period=3, steps=12)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftprune.cli",
            "tune",
            "--config",
            str(config),
            "--trials",
            "4",
            "--workers",
            "2",
            "-q",
            "--db",
            postgresql_url,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name="tune-tune", storage=postgresql_url)
            except KeyError:
                continue
            running = [
                t
                for t in study.trials
                if t.state == TrialState.RUNNING and "worker" in t.user_attrs
            ]
            if not running:
                continue
            os.kill(int(running[0].user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
            # still running after its process died: the kill hit the trial (else it had just
            # finished and the idle worker died; the parent replaces it and we try again)
            after = optuna.load_study(study_name="tune-tune", storage=postgresql_url).trials
            victim = running[0] if after[running[0].number].state == TrialState.RUNNING else None
        assert victim is not None, "no running trial was killed"
        out, err = parent.communicate(timeout=240)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, err[-2000:]
    trials = _check_study(postgresql_url, "tune-tune", 4)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    retries = [
        t
        for t in trials
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number
    ]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == killed.params


def test_best_weights_feed_router_train(sqlite_url, tmp_path, one_thread, monkeypatch):
    monkeypatch.chdir(tmp_path)  # router checkpoints go to ./ftprune-artifacts
    config = _config(tmp_path, tolerance=0.9)
    cfg = build_config(config, run_name="tuned")
    store = Store(sqlite_url)
    run = store.create_run("tuned", cfg.model_dump(), 0)
    schedule = [0.0, 0.4, 0.4, 0.4]
    store.record_generation(run.id, 0, [scored(0.1, schedule)], 0.1, schedule)
    missing = runner.invoke(
        app, ["router", "train", "--run", "tuned", "--weights", "best", "--db", sqlite_url]
    )
    assert missing.exit_code == 2 and "no tuned weights" in missing.stderr

    result = runner.invoke(
        app, ["tune", "--run", "tuned", "--trials", "3", "-q", "--db", sqlite_url]
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tune-tuned", storage=sqlite_url)
    best = min(
        (t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.values[0]
    )
    row = store.tuned_weights(run.id, cfg.model, cfg.target_sparsity)
    assert row is not None and row.trial == best.number and row.schedule == schedule
    assert row.heldout_kl == pytest.approx(best.values[0])

    trained = runner.invoke(
        app,
        [
            "router",
            "train",
            "--run",
            "tuned",
            "--weights",
            "best",
            "--steps",
            "2",
            "--quiet",
            "--db",
            sqlite_url,
        ],
        catch_exceptions=False,
    )
    assert trained.exit_code == 0, trained.output
    router = store.routers(run.id)[-1]
    assert (router.lambda_guide, router.lambda_sparse, router.lambda_distill) == (
        best.params["lambda_guide"],
        best.params["lambda_sparse"],
        best.params["lambda_distill"],
    )
    assert router.config["training"]["lr"] == best.params["lr"]
    # the pipeline's lookup (no run yet): same model and target sparsity
    tuned = tuned_config(cfg, store).router_training
    assert (tuned.lambda_guide, tuned.guide_steps, tuned.lr) == (
        best.params["lambda_guide"],
        best.params["guide_steps"],
        best.params["lr"],
    )
    bogus = runner.invoke(
        app, ["pipeline", "--config", str(config), "--weights", "tuned", "--db", sqlite_url]
    )
    assert bogus.exit_code == 2 and "--weights must be one of" in bogus.stderr


def test_two_objectives_store_the_pareto_front(sqlite_url, tmp_path, one_thread):
    config = _config(tmp_path, tolerance=0.9, sparsity=[0.2, 0.4])
    result = runner.invoke(
        app,
        [
            "tune",
            "--config",
            str(config),
            "--trials",
            "4",
            "-q",
            "--objectives",
            "quality,flops",
            "--db",
            sqlite_url,
        ],
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tune-tune", storage=sqlite_url)
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and all(0.2 <= t.params["target_sparsity"] <= 0.4 for t in complete)
    front = {t.number for t in study.best_trials}
    with Store(sqlite_url).read_engine.connect() as connection:
        stored = {
            row[0]
            for row in connection.exec_driver_sql(
                "SELECT trial FROM ftp_tuned_weights WHERE study = 'tune-tune'"
            )
        }
    assert stored == front
    for trial in complete:  # the saving grows with the sampled target sparsity
        assert trial.values[1] == pytest.approx(trial.user_attrs["flop_saving"])
        assert trial.values[1] > 0.5 * trial.params["target_sparsity"]
