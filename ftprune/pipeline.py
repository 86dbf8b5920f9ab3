"""FTP's three steps, recorded in the database:

1. the evolutionary search with the static router (a run, as ``search launch`` makes);
2. training the learned router for step 1's best schedule (a router row of that run, with
   its loss weights, loss curves, held-out metrics and checkpoint);
3. the search again, seeded from step 1's final parents and scoring with the trained router
   (a child run ``<run>-finetune-<round>`` whose config names the checkpoint).

With ``rounds > 1`` steps 2 and 3 repeat: each round trains a router for the previous
round's best schedule and fine-tunes from that round's parents. The main run also gets
held-out rows ``dynamic-<round>`` (the round's start schedule with the round's router) and
``finetuned-<round>`` (the round's best schedule with its router), next to ``best`` and
``uniform`` (static router) from step 1 (labels: :mod:`search.records`). Every step is an
ordinary run or row, so ``search status`` and ``search resume`` work on each search, and
``export`` packages the last round.

All three steps run on one pool: searches score on its workers and router training runs on
one of them (the local pool's in-process scorer, or a Ray actor and its GPU), so this
process never loads a model of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from search.config import ConfigError, RunConfig
from search.coordinator import SearchOutcome, check_inputs, launch
from search.records import BEST, HeldoutLabel, RouterLabel
from search.settings import open_pool, training_request

if TYPE_CHECKING:
    from storage import Store
    from workers.pool import EvaluationPool
    from workers.scoring import WindowMetrics

LOSS_SERIES = ("loss", "guide", "sparse", "distill", "lambda_guide")


@dataclass(frozen=True)
class HeldoutResult:
    """Held-out window metrics of a schedule under a router, as ``Store.add_heldout``
    takes them."""

    schedule: list[float]
    router: str
    metrics: WindowMetrics
    worker: str  # host:pid that measured it
    duration_s: float  # the router training that ended with this measurement


@dataclass(frozen=True)
class StoredRouter:
    """A router trained on a pool worker and recorded: its row id, checkpoint directory,
    final held-out metrics, and the worker (host:pid) and device it trained on."""

    router_id: int
    checkpoint: Path
    heldout: WindowMetrics
    worker: str
    device: str
    train_s: float


@dataclass(frozen=True)
class RoundOutcome:
    router: StoredRouter  # trained for the round's start schedule
    finetune: SearchOutcome

    @property
    def checkpoint(self) -> Path:
        return self.router.checkpoint


@dataclass(frozen=True)
class PipelineOutcome:
    search: SearchOutcome  # step 1
    rounds: list[RoundOutcome]


def check_pipeline(config: RunConfig, store: Store | None, rounds: int) -> None:
    """Raise a ValueError subclass for anything the pipeline would trip over later."""
    if rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    if config.router != "static" or config.seed_run is not None:
        raise ConfigError(
            "the pipeline's step 1 searches with the static router from "
            "scratch: leave router and seed_run unset"
        )
    check_inputs(config, store)


def run_pipeline(
    config: RunConfig,
    store: Store,
    rounds: int = 1,
    show_progress: bool = True,
    pool: EvaluationPool | None = None,
    echo: Callable[[str], None] = lambda line: None,
) -> PipelineOutcome:
    """Steps 1-3 (2 and 3 ``rounds`` times) on one pool: ``pool`` if given (left open),
    else one opened from the config. Every search and every router training runs on the
    pool's workers."""
    from router.registry import checkpoint_spec

    check_pipeline(config, store, rounds)
    workers = pool or open_pool(config)
    try:
        echo("step 1: search with the static router")
        first = launch(config, store, show_progress, workers)
        outcomes: list[RoundOutcome] = []
        parent, schedule = first.run_name, first.search.best_schedule
        for round_ in range(1, rounds + 1):
            echo(f"round {round_}, step 2: train the {config.router_training.kind} router")
            trained = train_router_step(
                config,
                store,
                first.run_id,
                first.run_name,
                schedule,
                RouterLabel(round=round_),
                workers,
                show_progress,
            )
            store.add_heldout(
                first.run_id,
                HeldoutLabel("dynamic", round_).to_json(),
                HeldoutResult(
                    schedule, "dynamic", trained.heldout, trained.worker, trained.train_s
                ),
            )
            echo(f"round {round_}, step 3: search again with the trained router")
            child = config.model_copy(
                update={
                    "run_name": f"{first.run_name}-finetune-{round_}",
                    "router": checkpoint_spec(trained.checkpoint),
                    "seed_run": parent,
                    "generations": config.finetune_generations,
                }
            )
            finetune = launch(child, store, show_progress, workers)
            store.add_heldout(
                first.run_id, HeldoutLabel("finetuned", round_).to_json(), finetune.heldout[BEST]
            )
            outcomes.append(RoundOutcome(trained, finetune))
            parent, schedule = finetune.run_name, finetune.search.best_schedule
    finally:
        if pool is None:
            workers.close()
    return PipelineOutcome(first, outcomes)


def train_router_step(
    config: RunConfig,
    store: Store,
    run_id: int,
    run_name: str,
    schedule: list[float],
    label: RouterLabel,
    pool: EvaluationPool,
    show_progress: bool = True,
) -> StoredRouter:
    """Train a router for ``schedule`` on a worker of ``pool`` (the run's calibration data,
    measured on its held-out data), write its checkpoint under
    ``artifacts_dir/<run>/<label>`` and record it with its curves and provenance."""
    from router.checkpoint import save_router, weights_sha256

    settings = config.router_training
    trained = pool.train(training_request(config, schedule, show_progress))
    checkpoint = (Path(config.artifacts_dir) / run_name / label.to_json()).resolve()
    save_router(checkpoint, trained.router(), schedule, config.model, config.dtype)
    history = trained.history
    curves: dict[str, Sequence[float]] = {
        "step": list(range(settings.steps)),
        **{name: history[name] for name in LOSS_SERIES},
    }
    heldout_curve = {name: values for name, values in history.items() if name not in LOSS_SERIES}
    router_id = store.add_router(
        run_id,
        label.to_json(),
        schedule,
        {
            "guide": settings.lambda_guide,
            "sparse": settings.lambda_sparse,
            "distill": settings.lambda_distill,
        },
        str(checkpoint),
        weights_sha256(checkpoint),
        curves,
        {
            "training": settings.model_dump(),
            "heldout_curve": heldout_curve,
            "worker": trained.worker,
            "device": trained.device,
        },
        trained.heldout,
        trained.train_s,
    )
    return StoredRouter(
        router_id, checkpoint, trained.heldout, trained.worker, trained.device, trained.train_s
    )


def export_run(store: Store, ref: str | int, out: str | Path) -> tuple[Path, list[float]]:
    """Write the run's deployable routed model description into ``out``: its latest
    router with the schedule that router was fine-tuned to (``finetuned-<round>``), else
    the schedule it was trained for. ``router.checkpoint.load_routed(out)`` loads it.
    Raises StorageError when the run has no router or its checkpoint changed on disk."""
    from router.checkpoint import WEIGHTS, load_router, save_router, weights_sha256
    from storage import StorageError

    run = store.find_run(ref)
    routers = store.routers(run.id)
    if not routers:
        raise StorageError(
            f"run {run.name!r} has no trained router: run `ftprune router "
            f"train --run {run.name}` or the pipeline first"
        )
    row = routers[-1]
    weights = Path(row.checkpoint) / WEIGHTS
    if not weights.is_file():
        raise StorageError(f"router checkpoint of run {run.name!r} is missing: {weights}")
    if weights_sha256(row.checkpoint) != row.checkpoint_sha256:
        raise StorageError(f"router checkpoint {weights} changed since it was recorded")
    wanted = RouterLabel.from_json(row.label).finetuned
    finetuned = [
        h for h in store.heldout(run.id) if wanted is not None and h.label == wanted.to_json()
    ]
    schedule = finetuned[-1].schedule if finetuned else row.schedule
    router, meta = load_router(row.checkpoint)
    save_router(out, router, schedule, meta["model"], meta["dtype"], meta["decode"])
    return Path(out), schedule
