"""FTP's three steps, recorded in the database:

1. the evolutionary search with the static router (a run, as ``search launch`` makes);
2. training the learned router for step 1's best schedule (a router row of that run, with
   its loss weights, loss curves, held-out metrics and checkpoint);
3. the search again, seeded from step 1's final parents and scoring with the trained router
   (a child run ``<run>-finetune-<round>`` whose config names the checkpoint).

With ``rounds > 1`` steps 2 and 3 repeat: each round trains a router for the previous
round's best schedule and fine-tunes from that round's parents. The main run also gets
held-out rows ``dynamic-<round>`` (step 1's best schedule with the round's router) and
``finetuned-<round>`` (the round's best schedule with its router), next to ``best`` and
``uniform`` (static router) from step 1. Every step is an ordinary run or row, so
``search status`` and ``search resume`` work on each search, and ``export`` packages the
last round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search.config import ConfigError, RunConfig
from search.coordinator import SearchOutcome, check_inputs, launch, open_pool, scorer_settings

LOSS_SERIES = ("loss", "guide", "sparse", "distill", "lambda_guide")


@dataclass(frozen=True)
class HeldoutResult:
    """Held-out window metrics of a schedule under a router, as ``Store.add_heldout``
    takes them."""

    schedule: list[float]
    router: str
    metrics: Any  # workers.WindowMetrics


@dataclass(frozen=True)
class RoundOutcome:
    router_id: int
    checkpoint: Path
    trained_heldout: Any  # WindowMetrics of the round's start schedule with its router
    finetune: SearchOutcome


@dataclass(frozen=True)
class PipelineOutcome:
    search: SearchOutcome  # step 1
    rounds: list[RoundOutcome]


def check_pipeline(config: RunConfig, store: Any | None, rounds: int) -> None:
    """Raise a ValueError subclass for anything the pipeline would trip over later."""
    if rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    if config.router != "static" or config.seed_run is not None:
        raise ConfigError("the pipeline's step 1 searches with the static router from "
                          "scratch: leave router and seed_run unset")
    check_inputs(config, store)


def run_pipeline(config: RunConfig, store: Any, rounds: int = 1, show_progress: bool = True,
                 pool: Any | None = None,
                 echo: Callable[[str], None] = lambda line: None) -> PipelineOutcome:
    """Steps 1-3 (2 and 3 ``rounds`` times); uses ``pool`` if given, else opens one."""
    check_pipeline(config, store, rounds)
    owned = pool is None
    pool = pool or open_pool(config)
    try:
        echo("step 1: search with the static router")
        first = launch(config, store, show_progress, pool)
        scorer = training_scorer(pool, config)
        outcomes: list[RoundOutcome] = []
        parent, schedule = first.run_name, first.search.best_schedule
        for round_ in range(1, rounds + 1):
            echo(f"round {round_}, step 2: train the {config.router_training.kind} router")
            router_id, checkpoint, trained = train_router_step(
                config, store, first.run_id, first.run_name, schedule, f"round-{round_}",
                scorer, show_progress)
            store.add_heldout(first.run_id, f"dynamic-{round_}",
                              HeldoutResult(schedule, "dynamic", trained))
            echo(f"round {round_}, step 3: search again with the trained router")
            child = config.model_copy(update={
                "run_name": f"{first.run_name}-finetune-{round_}",
                "router": f"dynamic:{checkpoint}", "seed_run": parent,
                "generations": config.finetune_generations})
            finetune = launch(child, store, show_progress, pool)
            store.add_heldout(first.run_id, f"finetuned-{round_}", finetune.heldout["best"])
            outcomes.append(RoundOutcome(router_id, checkpoint, trained, finetune))
            parent, schedule = finetune.run_name, finetune.search.best_schedule
    finally:
        if owned:
            pool.close()
    return PipelineOutcome(first, outcomes)


def training_scorer(pool: Any, config: RunConfig) -> Any:
    """The scorer router training runs on, in this process: the local pool's own (its
    model and teacher outputs are already loaded), else a new one."""
    from workers import LocalPool, Scorer

    if isinstance(pool, LocalPool):
        return pool.scorer
    return Scorer(scorer_settings(config))


def train_config(config: RunConfig, show_progress: bool = True) -> Any:
    """The library's ``TrainConfig`` for a run config's ``router_training`` section."""
    from router.losses import LossWeights
    from router.training import TrainConfig

    settings = config.router_training
    weights = LossWeights(guide=settings.lambda_guide, guide_steps=settings.guide_steps,
                          sparse=settings.lambda_sparse, distill=settings.lambda_distill)
    return TrainConfig(
        steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
        window=config.window, weights=weights, distill=settings.distill,
        two_sided=settings.two_sided, eval_every=settings.eval_every, seed=config.seed,
        progress=show_progress)


def train_router_step(config: RunConfig, store: Any, run_id: int, run_name: str,
                      schedule: list[float], label: str, scorer: Any,
                      show_progress: bool = True) -> tuple[int, Path, Any]:
    """Train a router for ``schedule`` on the run's calibration data, write its checkpoint
    under ``artifacts_dir/<run>/<label>`` and record it; returns (router id, checkpoint
    directory, held-out WindowMetrics)."""
    from router.checkpoint import save_router, weights_sha256
    from workers.training import train_on_scorer

    settings = config.router_training
    trained = train_on_scorer(scorer, schedule, train_config(config, show_progress),
                              settings.kind, settings.factors)
    checkpoint = (Path(config.artifacts_dir) / run_name / label).resolve()
    save_router(checkpoint, trained.router, schedule, config.model, config.dtype)
    digest = weights_sha256(checkpoint)
    history = trained.history
    curves = {"step": list(range(settings.steps)),
              **{name: history[name] for name in LOSS_SERIES}}
    heldout_curve = {name: values for name, values in history.items()
                     if name not in LOSS_SERIES}
    router_id = store.add_router(
        run_id, label, schedule,
        {"guide": settings.lambda_guide, "sparse": settings.lambda_sparse,
         "distill": settings.lambda_distill},
        str(checkpoint), digest, curves,
        {"training": settings.model_dump(), "heldout_curve": heldout_curve},
        trained.heldout, trained.train_s)
    return router_id, checkpoint, trained.heldout


def export_run(store: Any, ref: str | int, out: str | Path) -> tuple[Path, list[float]]:
    """Write the run's deployable routed model description into ``out``: its latest
    router with the schedule that router was fine-tuned to (``finetuned-<round>``), else
    the schedule it was trained for. ``router.checkpoint.load_routed(out)`` loads it.
    Raises StorageError when the run has no router or its checkpoint changed on disk."""
    from router.checkpoint import WEIGHTS, load_router, save_router, weights_sha256
    from storage import StorageError

    run = store.find_run(ref)
    routers = store.routers(run.id)
    if not routers:
        raise StorageError(f"run {run.name!r} has no trained router: run `ftprune router "
                           f"train --run {run.name}` or the pipeline first")
    row = routers[-1]
    weights = Path(row.checkpoint) / WEIGHTS
    if not weights.is_file():
        raise StorageError(f"router checkpoint of run {run.name!r} is missing: {weights}")
    if weights_sha256(row.checkpoint) != row.checkpoint_sha256:
        raise StorageError(f"router checkpoint {weights} changed since it was recorded")
    round_label = row.label.replace("round-", "finetuned-")
    finetuned = [h for h in store.heldout(run.id) if h.label == round_label]
    schedule = finetuned[-1].schedule if finetuned else row.schedule
    router, meta = load_router(row.checkpoint)
    save_router(out, router, schedule, meta["model"], meta["dtype"], meta["decode"])
    return Path(out), schedule
