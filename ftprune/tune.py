"""Optuna tuning of the router's training settings (λ_g, λ_s, λ_d, the guide's decay length
``guide_steps`` and the learning rate) on the project's own database.

One trial trains a fresh router for a fixed schedule on the calibration sequences with
sampled settings and returns the held-out window KL (the scorer's held-out comparator, as
router training's held-out evaluation measures it). The schedule is a run's best schedule
(``--run``) or, for a config (``--config``), the uniform schedule at its target sparsity
(no search is run: with the static router uniform is where the search ends on running
text). Guarantees:

- The study lives in the database ftprune uses (Optuna's ``RDBStorage`` on the same URL; its
  tables beside ftprune's ``ftp_`` tables). Parallel workers need PostgreSQL:
  :func:`check_workers` refuses parallel SQLite before anything is touched.
- The first trial of a new study is the config's own ``router_training`` values (the
  paper's equal weights); the sampler is TPE (multivariate, constant liar, seeded: worker w
  uses seed + w). Held-out KL is reported at every evaluation of training and a median
  pruner stops bad trials (single-objective studies; Optuna cannot prune multi-objective).
- Feasibility: the router's own achieved sparsity (1 - mean keep probability of its learned
  blocks on the held-out sequences; top-k keeps the budget exact whatever the router says,
  so this is what λ_s controls) must lie within ``tuning.tolerance`` of the target. The
  constraint (<= 0 feasible) is set on the trial (``Trial.set_constraint``, which TPE reads)
  and kept as user attribute ``constraint``; only feasible trials are stored as best.
- ``--trials N`` is the study's total of finished (complete or pruned) trials: workers share
  it, a resumed study continues to N, and a trial created beyond N by a race between workers
  is failed at once with user attribute ``surplus`` (no training runs for it).
- A trial whose worker died (no heartbeat for ``tuning.grace_period`` s) is marked failed by
  the next worker that looks and re-queued with the same parameters, up to
  ``tuning.max_retry`` times; the parent replaces workers that die.
- Two objectives (``quality,flops`` or ``quality,latency``) also sample the target sparsity
  (``tuning.sparsity``; the schedule scaled to it) and maximize the FLOP-weighted saving or
  minimize the routed held-out prefill time; the Pareto front is stored.

This module holds the study's settings, checks and results; :mod:`ftprune.tune_trials`
runs the trials (the objective and the worker processes).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import ConfigError, RunConfig
from search.stored import load_config

if TYPE_CHECKING:
    from storage import Store

OBJECTIVES: dict[str, Literal["minimize", "maximize"]] = {
    "quality": "minimize",
    "flops": "maximize",
    "latency": "minimize",
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WEIGHT_CHOICES = ("config", "best")
SETTINGS = ("lambda_guide", "lambda_sparse", "lambda_distill", "guide_steps", "lr")
MAX_TRIALS = 100_000
MAX_TUNE_WORKERS = 1024


@dataclass(frozen=True)
class TuneSpec:
    """Everything a worker process needs (plain data)."""

    url: str
    study: str
    trials: int
    config: dict[str, Any]  # search.stored.stored_config
    schedule: list[float] | None  # None: uniform at the target sparsity
    objectives: tuple[str, ...]
    deadline: float | None = None  # time.time() after which no trial starts
    threads: int | None = None

    @property
    def run_config(self) -> RunConfig:
        return load_config(self.config, f"study {self.study!r}")


def parse_objectives(text: str) -> tuple[str, ...]:
    """``quality``, ``quality,flops`` or ``quality,latency``; ConfigError otherwise."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if (
        not names
        or names[0] != "quality"
        or len(names) > 2
        or (len(names) == 2 and names[1] not in ("flops", "latency"))
    ):
        raise ConfigError(
            f"--objectives must be quality, quality,flops or quality,latency; got {text!r}"
        )
    return names


def check_workers(url: str, workers: int, trials: int) -> None:
    """Raise for a worker count or trial budget the database cannot serve."""
    if not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"--trials must lie in 1..{MAX_TRIALS}")
    if not 1 <= workers <= MAX_TUNE_WORKERS:
        raise ConfigError(f"--workers must lie in 1..{MAX_TUNE_WORKERS}")
    if workers > 1 and url.startswith("sqlite"):
        raise ConfigError(
            "parallel Optuna workers need PostgreSQL (SQLite serializes and "
            "drops heartbeats): use --workers 1 or a postgresql+psycopg:// --db"
        )


def sparsity_range(config: RunConfig) -> tuple[float, float]:
    """The target sparsities a two-objective study samples."""
    if config.tuning.sparsity is not None:
        low, high = config.tuning.sparsity
        return float(low), float(high)
    target = config.target_sparsity
    return max(0.01, target - 0.1), min(config.max_block_sparsity, target + 0.1)


def check_tuning(config: RunConfig, objectives: Sequence[str]) -> None:
    """The sampled ranges must hold the config's own values (the first, equal-weights trial)."""
    training = config.router_training
    for name in SETTINGS:
        low, high = setting_bounds(config, name)
        value = getattr(training, name)
        if not low <= value <= high:
            raise ConfigError(
                f"tuning.{name} [{low}, {high}] must contain router_training."
                f"{name} = {value} (the first trial)"
            )
    if len(objectives) > 1:
        low, high = sparsity_range(config)
        if not 0 < low <= config.target_sparsity <= high <= config.max_block_sparsity:
            raise ConfigError(
                f"tuning.sparsity [{low}, {high}] must contain target_sparsity "
                f"and stay within max_block_sparsity"
            )


def setting_bounds(config: RunConfig, name: str) -> tuple[Any, Any]:
    if name == "guide_steps":
        low, high = config.tuning.guide_steps or [1, config.router_training.steps]
        return int(low), int(high)
    low, high = getattr(config.tuning, name)
    return float(low), float(high)


def trial_schedule(
    base: Sequence[float], target: float, sampled: float, ceiling: float
) -> list[float]:
    """``base`` (mean ``target``) scaled to mean ``sampled``, each entry at most ``ceiling``."""
    if abs(sampled - target) < 1e-12:
        return [float(s) for s in base]
    return [min(ceiling, float(s) * sampled / target) for s in base]


def open_study(spec: TuneSpec, worker: int = 0) -> optuna.Study:
    """The study with this worker's own storage engine, heartbeat, sampler and pruner."""
    from storage.engine import optuna_url

    config = spec.run_config
    tuning = config.tuning
    with warnings.catch_warnings():  # heartbeats and multivariate TPE are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            optuna_url(spec.url),
            heartbeat_interval=tuning.heartbeat_interval,
            grace_period=tuning.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=tuning.max_retry
            ),
        )
        sampler = optuna.samplers.TPESampler(multivariate=True, seed=config.seed + worker)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if len(spec.objectives) == 1:
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=tuning.pruner_startup_trials, n_warmup_steps=tuning.pruner_warmup_steps
        )
    return optuna.create_study(
        storage=storage,
        study_name=spec.study,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
        directions=[OBJECTIVES[name] for name in spec.objectives],
    )


def prepare_study(spec: TuneSpec, run_id: int | None) -> optuna.Study:
    """Create the study (first trial: the config's own settings) or check that the one
    found under the name tunes the same thing; raises ConfigError on a mismatch."""
    config = spec.run_config
    setup = {
        "objectives": list(spec.objectives),
        "model": config.model,
        "target_sparsity": config.target_sparsity,
        "schedule": spec.schedule,
        "run_id": run_id,
    }
    study = open_study(spec)
    if not study.user_attrs and not study.trials:
        for key, value in {**setup, "config": spec.config}.items():
            study.set_user_attr(key, value)
        first: dict[str, Any] = {name: getattr(config.router_training, name) for name in SETTINGS}
        if len(spec.objectives) > 1:
            first["target_sparsity"] = config.target_sparsity
        study.enqueue_trial(first)
        return study
    stored = {key: study.user_attrs.get(key) for key in setup}
    if stored != setup:
        changed = ", ".join(key for key in setup if stored[key] != setup[key])
        raise ConfigError(
            f"study {spec.study!r} tunes something else ({changed} differ): choose another --study"
        )
    return study


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible complete trials: the best (single objective) or the Pareto front."""
    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(value <= 0 for value in t.constraints.values())
    ]
    if not feasible:
        return []
    if len(study.directions) == 1:
        return [min(feasible, key=lambda t: (t.values[0], t.number))]
    front = [t for t in feasible if not any(_dominates(o, t, study) for o in feasible)]
    return sorted(front, key=lambda t: t.values[0])


def _dominates(a: FrozenTrial, b: FrozenTrial, study: optuna.Study) -> bool:
    signs = [1 if d == optuna.study.StudyDirection.MINIMIZE else -1 for d in study.directions]
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def tuned_rows(study: optuna.Study, objectives: Sequence[str], model: str) -> list[dict]:
    """``Store.set_tuned_weights`` rows of the study's best trials."""
    return [
        {
            "trial": t.number,
            "model": model,
            "target_sparsity": float(t.user_attrs["target_sparsity"]),
            "schedule": t.user_attrs["schedule"],
            **{name: t.params[name] for name in SETTINGS},
            "heldout_kl": t.values[0],
            "objectives": dict(zip(objectives, t.values, strict=True)),
        }
        for t in best_trials(study)
    ]


def tuned_config(config: RunConfig, store: Store, run_id: int | None = None) -> RunConfig:
    """``config`` with the best tuned router-training settings (:meth:`Store.tuned_weights`
    for the run, else for the config's model and target sparsity); StorageError if none."""
    from storage import StorageError

    row = store.tuned_weights(run_id, config.model, config.target_sparsity)
    if row is None:
        raise StorageError(
            f"no tuned weights for {config.model} at target sparsity "
            f"{config.target_sparsity}: run `ftprune tune` first"
        )
    update = {name: getattr(row, name) for name in SETTINGS}
    return config.model_copy(
        update={"router_training": config.router_training.model_copy(update=update)}
    )


def check_weights(choice: str) -> None:
    if choice not in WEIGHT_CHOICES:
        raise ConfigError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, not {choice!r}")
