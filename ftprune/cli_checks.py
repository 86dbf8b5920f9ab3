"""Checks the commands run on a run config before any work starts, beyond
:func:`search.coordinator.check_inputs`: what the model's own config says (family, context
length, decoder blocks; read without weights), whether the text source yields every
calibration and held-out sequence, and whether a router checkpoint loads and was trained
for the config's model.

Each raises one of the library's one-line errors (``ModelSpecError``, ``DataSpecError``,
``CheckpointError``, ``StorageError``, ...), which :func:`ftprune.cli_common.user_errors`
prints; nothing here writes anything. Heavy packages load inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from search.config import RunConfig
    from storage import Store


def check_run(cfg: RunConfig, store: Store | None = None) -> Any:
    """Everything about ``cfg`` that can go wrong before work starts; returns the model's
    Hugging Face config. With ``store``, also the run name and seed run (check_inputs)."""
    from router.loading import model_config
    from search.coordinator import check_inputs

    check_inputs(cfg, store)
    config = model_config(cfg.model)
    check_context(cfg.model, config, [*cfg.seq_lens, *cfg.heldout_seq_lens], "sequence length")
    check_router_checkpoint(cfg.router, cfg.model)
    check_data(cfg)
    return config


def check_context(spec: str, config: Any, lengths: Sequence[int], what: str) -> None:
    """Raise ModelSpecError if a sequence of the longest of ``lengths`` tokens does not fit
    the model's positions (``max_position_embeddings``; a config without one is not
    checked)."""
    from router.loading import ModelSpecError

    limit = getattr(config, "max_position_embeddings", None)
    longest = max(lengths)
    if isinstance(limit, int) and longest > limit:
        raise ModelSpecError(
            f"{what} {longest} exceeds the context of model {spec!r} ({limit} positions)"
        )


def check_data(cfg: RunConfig) -> None:
    """Raise DataSpecError unless the text source holds text and enough tokens for every
    calibration and held-out sequence the config asks for (tokenized as the workers will)."""
    from router.loading import load_tokenizer
    from search.settings import scorer_settings
    from workers.data import DataSpecError, documents
    from workers.scoring import build_splits

    if not any(doc.strip() for doc in documents(cfg.calibration)):
        raise DataSpecError(f"calibration file {cfg.calibration} holds no text")
    build_splits(scorer_settings(cfg), load_tokenizer(cfg.model))


def check_router_checkpoint(spec: str, model: str) -> None:
    """Raise CheckpointError unless a ``dynamic:<dir>`` router spec names a checkpoint that
    loads (JSON and safetensors, never pickle) and was trained for ``model``."""
    from router.checkpoint import META, CheckpointError, load_router
    from router.registry import checkpoint_dir

    directory = checkpoint_dir(spec)
    if directory is None:
        return
    _, meta = load_router(directory)
    if meta["model"] != model:
        raise CheckpointError(
            f"{directory}/{META}: the router was trained for model {meta['model']!r}, not {model!r}"
        )


def check_schedule(schedule: Sequence[float], blocks: int, what: str, nested: bool = False) -> None:
    """Raise ConfigError unless ``schedule`` has one sparsity in [0, 1) per decoder block
    (its mean is free: a router may be trained for any schedule) and, for a ``nested``
    router, never decreases."""
    from search.config import ConfigError

    if len(schedule) != blocks:
        raise ConfigError(f"{what} has {len(schedule)} entries; the model has {blocks} blocks")
    if any(not 0.0 <= s < 1.0 for s in schedule):
        raise ConfigError(f"every block sparsity of {what} must lie in [0, 1)")
    if nested:
        from router.engine import non_decreasing

        if not non_decreasing(schedule):
            raise ConfigError(
                f"{what} decreases, and router_training.nested routes only non-decreasing schedules"
            )
