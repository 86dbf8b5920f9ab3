"""The one translation of a run config into the settings of what it drives: the workers'
scorer and pool, the genetic algorithm, and router training.

Every command, the coordinator and the pipeline derive these here and nowhere else, so a
run config field means the same thing to each of them. Heavy packages (torch, Ray) load
inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from search.config import RunConfig
from search.ga import GAParams

if TYPE_CHECKING:
    from router.training import TrainConfig
    from storage import RunPlan
    from workers.pool import EvaluationPool
    from workers.scoring import SplitSequences
    from workers.settings import ScorerSettings
    from workers.training import TrainRequest


def scorer_settings(config: RunConfig) -> ScorerSettings:
    """What every worker's scorer is built from: model, dtype, device, data and window."""
    from workers.settings import ScorerSettings

    return ScorerSettings(
        model=config.model,
        dtype=config.dtype,
        device=config.device,
        source=config.calibration,
        calibration_lens=tuple(config.seq_lens),
        calibration_per_length=config.sequences_per_length,
        calibration_recall=config.calibration_recall,
        heldout_lens=tuple(config.heldout_seq_lens),
        heldout_per_length=config.heldout_sequences_per_length,
        window=config.window,
        batch_size=config.batch_size,
        teacher_top_k=config.teacher_top_k,
    )


def run_plan(config: RunConfig) -> RunPlan:
    """What storage keeps about the run in typed columns: model, target sparsity and the
    generations planned."""
    from storage import RunPlan

    return RunPlan(config.model, config.target_sparsity, config.generations)


def check_device(config: RunConfig) -> None:
    """Raise ``workers.devices.DeviceError`` unless the config's workers can use its device
    (this process for a local pool; Ray actors with ``gpus_per_worker`` GPUs otherwise,
    on this machine unless ``ray_address`` names a cluster)."""
    from workers.devices import check_device_available

    if config.pool == "local":
        check_device_available(config.device)
    else:
        check_device_available(
            config.device, config.gpus_per_worker, remote=config.ray_address is not None
        )


def open_pool(
    config: RunConfig, workers: int | None = None, sequences: SplitSequences | None = None
) -> EvaluationPool:
    """The pool the config asks for (``workers`` overrides its worker count), on
    ``sequences`` if given (what :func:`search.preflight.preflight` tokenized), else on
    sequences it tokenizes itself."""
    from workers.pool import make_pool

    return make_pool(
        scorer_settings(config),
        config.pool,
        workers or config.workers,
        config.ray_address,
        config.cpus_per_worker,
        config.gpus_per_worker,
        config.task_timeout_s,
        config.max_retries,
        sequences=sequences,
    )


def ga_params(config: RunConfig, num_blocks: int) -> GAParams:
    """The genetic algorithm's parameters for a model of ``num_blocks`` decoder blocks."""
    return GAParams(
        num_blocks=num_blocks,
        target=config.target_sparsity,
        s_max=config.max_block_sparsity,
        level_step=config.level_step,
        offspring=config.offspring,
        parents=config.parents,
        crossover_prob=config.crossover_prob,
        max_moves=config.max_moves,
        seed=config.seed,
        monotone=config.monotone,
    )


def train_config(config: RunConfig, show_progress: bool = True) -> TrainConfig:
    """The library's ``TrainConfig`` for the config's ``router_training`` section."""
    from router.losses import LossWeights
    from router.training import TrainConfig

    settings = config.router_training
    weights = LossWeights(
        guide=settings.lambda_guide,
        guide_steps=settings.guide_steps,
        sparse=settings.lambda_sparse,
        distill=settings.lambda_distill,
    )
    return TrainConfig(
        steps=settings.steps,
        lr=settings.lr,
        batch_size=settings.batch_size,
        window=config.window,
        weights=weights,
        distill=settings.distill,
        two_sided=settings.two_sided,
        eval_every=settings.eval_every,
        seed=config.seed,
        progress=show_progress,
        key_gate=settings.key_gate,
        init=settings.init,
        nested=settings.nested,
    )


def training_request(
    config: RunConfig,
    schedule: Sequence[float],
    show_progress: bool = True,
    kind: str | None = None,
    factors: Sequence[str] | None = None,
) -> TrainRequest:
    """A pool's request to train a router for ``schedule``: the config's kind and factors
    unless ``kind`` / ``factors`` replace them (the ablation's variants)."""
    from workers.training import TrainRequest

    settings = config.router_training
    return TrainRequest(
        [float(s) for s in schedule],
        train_config(config, show_progress),
        kind or settings.kind,
        tuple(factors or settings.factors),
    )
