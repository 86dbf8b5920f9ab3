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
from search.coordinator import launch, resume
from search.interrupts import Interruptible, RunInterrupted, signal_of
from search.preflight import CheckedRun, check_checkpoint_dirs, preflight
from search.records import BEST, HeldoutLabel, RouterLabel
from search.settings import training_request

if TYPE_CHECKING:
    from storage import Store
    from storage.schema import HeldoutRow, RouterRow
    from workers.pool import EvaluationPool
    from workers.scoring import WindowMetrics

LOSS_SERIES = ("loss", "guide", "sparse", "distill", "lambda_guide")
MAX_ROUNDS = 100


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
class StepRun:
    """A finished search of the pipeline (step 1, or a round's step 3)."""

    run_id: int
    run_name: str
    best_schedule: list[float]


@dataclass(frozen=True)
class RoundOutcome:
    router: StoredRouter  # trained for the round's start schedule
    finetune: StepRun

    @property
    def checkpoint(self) -> Path:
        return self.router.checkpoint


@dataclass(frozen=True)
class PipelineOutcome:
    search: StepRun  # step 1
    rounds: list[RoundOutcome]


def finetune_name(run_name: str, round_: int) -> str:
    """The name of round ``round_``'s fine-tuning run (step 3) of pipeline ``run_name``."""
    return f"{run_name}-finetune-{round_}"


def check_pipeline(config: RunConfig, rounds: int) -> None:
    """Raise ConfigError for a round count or config the pipeline cannot run (before any
    check that reads a model or the database)."""
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ConfigError(f"--rounds must lie in 1..{MAX_ROUNDS}, got {rounds}")
    if config.router != "static" or config.seed_run is not None:
        raise ConfigError(
            "the pipeline's step 1 searches with the static router from "
            "scratch: leave router and seed_run unset"
        )
    if config.target_sparsity <= 0:
        raise ConfigError("the pipeline trains a router: target_sparsity must be above 0")


def check_new_pipeline(
    config: RunConfig, store: Store | None, rounds: int, tokenize: bool = True
) -> CheckedRun:
    """Every check of a new pipeline before any work: :func:`check_pipeline`, the run's
    :func:`~search.preflight.preflight`, and every name it will create (with ``store``: the
    run and its fine-tuning runs; on disk: its router checkpoints)."""
    check_pipeline(config, rounds)
    name = config.run_name
    children = [finetune_name(name, r) for r in range(1, rounds + 1)] if name else []
    checked = preflight(config, store, tokenize=tokenize, new_runs=children)
    if name:
        labels = [RouterLabel(round=r).to_json() for r in range(1, rounds + 1)]
        check_checkpoint_dirs(config, name, labels)
    return checked


def begun_rounds(store: Store, run_id: int, run_name: str) -> int:
    """How many rounds the pipeline of run ``run_name`` began: the highest round with a
    trained router or a fine-tuning run (0: none)."""
    begun = [
        label.round
        for row in store.routers(run_id)
        if (label := _round_label(row.label)) is not None and label.round is not None
    ]
    round_ = 1
    while store.run_name_taken(finetune_name(run_name, round_)):
        begun.append(round_)
        round_ += 1
    return max(begun, default=0)


def _round_label(text: str) -> RouterLabel | None:
    try:
        return RouterLabel.from_json(text)
    except ValueError:
        return None


def run_pipeline(
    run: RunConfig | CheckedRun,
    store: Store,
    rounds: int = 1,
    show_progress: bool = True,
    pool: EvaluationPool | None = None,
    echo: Callable[[str], None] = lambda line: None,
    resuming: bool = False,
) -> PipelineOutcome:
    """Steps 1-3 (2 and 3 ``rounds`` times) on one pool: ``pool`` if given (left open),
    else one opened on the checked run's tokens. Every search and every router training
    runs on the pool's workers.

    ``resuming``: the pipeline of the stored run ``run.run_name`` continues where it
    stopped: finished steps are taken from the database, an unfinished search resumes,
    and a missing step runs. An interruption raises :class:`RunInterrupted` naming
    ``ftprune pipeline --resume``."""
    if isinstance(run, CheckedRun):
        check_pipeline(run.config, rounds)
        checked = run
    elif resuming:
        check_pipeline(run, rounds)
        checked = preflight(run, tokenize=pool is None)
    else:
        checked = check_new_pipeline(run, store, rounds, tokenize=pool is None)
    name = checked.config.run_name
    try:
        with Interruptible() as signals:
            if pool is None:
                echo(pool_line(checked.config))
            workers = pool or checked.open_pool()
            signals.install()  # after the pool: ray.init replaces the SIGTERM handler
            try:
                return _steps(checked, store, rounds, show_progress, workers, echo, resuming)
            finally:
                if pool is None:
                    workers.close()
    except BaseException as exc:
        number = signal_of(exc)
        if number is None or not name:
            raise
        raise RunInterrupted(
            f"interrupted: the pipeline of run {name!r} keeps the steps it finished; "
            f"`ftprune pipeline --resume {name} --rounds {rounds}` continues it",
            number,
        ) from None


def pool_line(config: RunConfig) -> str:
    """What opening the config's pool does, in one line: the wait it announces can be long
    (Ray's start, each worker's model load, converting a GGUF on its first use)."""
    from router.loading import needs_conversion

    if config.pool == "ray":
        workers = f"{config.workers} Ray worker{'s' if config.workers != 1 else ''}"
        where = f"starting {workers}; each loads {config.model} once"
    else:
        where = f"starting the in-process worker; it loads {config.model} once"
    copy = needs_conversion(config.model)
    if copy is None:
        return where
    return f"{where} (first use: its GGUF is converted to {copy}, about half a minute)"


def checkpoint_dir(config: RunConfig, run_name: str, label: RouterLabel) -> Path:
    """Where router ``label`` of run ``run_name`` is written: ``artifacts_dir/<run>/<label>``
    (the database records the path; export and eval read the checkpoint there)."""
    return (Path(config.artifacts_dir) / run_name / label.to_json()).resolve()


def _steps(
    checked: CheckedRun,
    store: Store,
    rounds: int,
    show_progress: bool,
    pool: EvaluationPool,
    echo: Callable[[str], None],
    resuming: bool,
) -> PipelineOutcome:
    """The pipeline's steps; with ``resuming``, each one that is stored is reused."""
    from router.registry import checkpoint_spec

    config = checked.config
    echo("step 1: search with the static router")
    first = _search_step(checked, store, pool, show_progress, resuming)
    outcomes: list[RoundOutcome] = []
    parent, schedule = first.run_name, first.best_schedule
    for round_ in range(1, rounds + 1):
        label = RouterLabel(round=round_)
        echo(
            f"round {round_}, step 2: train the {config.router_training.kind} router on a "
            f"worker; its checkpoint goes to {checkpoint_dir(config, first.run_name, label)}"
        )
        stored = {r.label: r for r in store.routers(first.run_id)} if resuming else {}
        if label.to_json() in stored:
            trained = _stored_router(stored[label.to_json()])
        else:
            trained = train_router_step(
                config, store, first.run_id, first.run_name, schedule, label, pool, show_progress
            )
        held = HeldoutResult(schedule, "dynamic", trained.heldout, trained.worker, trained.train_s)
        _add_heldout(store, first.run_id, HeldoutLabel("dynamic", round_), held)
        echo(f"round {round_}, step 3: search again with the trained router")
        child = config.model_copy(
            update={
                "run_name": finetune_name(first.run_name, round_),
                "router": checkpoint_spec(trained.checkpoint),
                "seed_run": parent,
                "generations": config.finetune_generations,
            }
        )
        finetune = _search_step(child, store, pool, show_progress, resuming)
        best = [h for h in store.heldout(finetune.run_id) if h.label == BEST.to_json()][-1]
        _add_heldout(store, first.run_id, HeldoutLabel("finetuned", round_), _heldout_of(best))
        outcomes.append(RoundOutcome(trained, finetune))
        parent, schedule = finetune.run_name, finetune.best_schedule
    return PipelineOutcome(first, outcomes)


def _search_step(
    run: RunConfig | CheckedRun,
    store: Store,
    pool: EvaluationPool,
    show_progress: bool,
    resuming: bool,
) -> StepRun:
    """Launch the search, or (``resuming``) take it finished from the store or resume it."""
    config = run.config if isinstance(run, CheckedRun) else run
    name = config.run_name
    if resuming and name and store.run_name_taken(name):
        row = store.find_run(name)
        if row.status != "finished":
            resume(name, store, show_progress, pool)
            row = store.find_run(name)
        return StepRun(row.id, row.name, list(row.best_schedule or []))
    outcome = launch(run, store, show_progress, pool)
    return StepRun(outcome.run_id, outcome.run_name, outcome.search.best_schedule)


def _add_heldout(store: Store, run_id: int, label: HeldoutLabel, result: HeldoutResult) -> None:
    """Store a held-out row unless the run has one of that label (a resumed pipeline)."""
    if not any(h.label == label.to_json() for h in store.heldout(run_id)):
        store.add_heldout(run_id, label.to_json(), result)


def _heldout_of(row: HeldoutRow) -> HeldoutResult:
    """A stored held-out row as what ``Store.add_heldout`` takes."""
    from workers.scoring import WindowMetrics

    metrics = WindowMetrics(row.kl, row.top1, row.ppl, row.realized_sparsity, 0)
    return HeldoutResult(list(row.schedule), row.router, metrics, "stored", 0.0)


def _stored_router(row: RouterRow) -> StoredRouter:
    """A router the pipeline trained and recorded before it stopped."""
    from workers.scoring import WindowMetrics

    metrics = WindowMetrics(
        row.heldout_kl or 0.0,
        row.heldout_top1 or 0.0,
        row.heldout_ppl or 0.0,
        row.realized_sparsity or 0.0,
        0,
    )
    return StoredRouter(
        row.id,
        Path(row.checkpoint),
        metrics,
        str(row.config.get("worker", "")),
        str(row.config.get("device", "")),
        row.train_s or 0.0,
    )


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
    checkpoint = checkpoint_dir(config, run_name, label)
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
