"""Every check of a run before any work starts, in one place.

:func:`preflight` takes a validated :class:`~search.config.RunConfig` and answers with a
:class:`CheckedRun` (the config, the model's facts read from its config file, and the
calibration and held-out token ids) or one of the library's one-line errors
(``ModelSpecError``, ``DataSpecError``, ``RouterSpecError``, ``CheckpointError``,
``DeviceError``, ``StorageError``, ``ConfigError``). ``launch``, ``resume``, the pipeline and
``router train`` take its result, and the pool reuses its tokens, so calibration text is
tokenized once per command.

Guarantees:

- Nothing here writes anything or loads model weights: a model's facts come from its config
  file, the tokens from its tokenizer (:func:`router.facts.token_encoder`, which needs
  neither transformers nor torch for the shipped models), a router checkpoint's metadata and
  tensor shapes from its JSON and its safetensors header.
- The checks run cheapest first: the model spec, the text source (readable, UTF-8, holding
  text), the device, the names the run will create (with a store), the model's context,
  the text's token count, and only then what needs torch (a router checkpoint's
  description). Bad input is answered before the slow steps.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from search.config import DEFAULT_LEARNED_FROM, DEFAULT_ROUTER_KIND, ConfigError, RunConfig
from search.settings import check_device, open_pool, scorer_settings

if TYPE_CHECKING:
    from router.facts import ModelFacts
    from storage import RunStore
    from workers.data import Split
    from workers.pool import EvaluationPool
    from workers.scoring import SplitSequences

MEAN_TOLERANCE = 1e-3  # |schedule mean - target| that still counts as the run's target


@dataclass(frozen=True)
class CheckedRun:
    """A run config that passed :func:`preflight`: the config, the model's facts and (unless
    the caller's pool holds its own data) each split's token ids, as the workers use them."""

    config: RunConfig
    model: ModelFacts
    tokens: dict[Split, list[list[int]]] | None = None

    def sequences(self) -> SplitSequences | None:
        """The token ids as the tensors a pool or scorer takes (None: not tokenized)."""
        if self.tokens is None:
            return None
        from workers.data import as_tensors

        return {split: as_tensors(ids) for split, ids in self.tokens.items()}

    def open_pool(self, workers: int | None = None) -> EvaluationPool:
        """The config's pool on these tokens (``workers`` overrides the worker count)."""
        return open_pool(self.config, workers, self.sequences())


def preflight(
    config: RunConfig,
    store: RunStore | None = None,
    tokenize: bool = True,
    new_runs: Sequence[str] = (),
) -> CheckedRun:
    """Check everything about ``config`` that can go wrong before work starts (see the
    module docstring): :func:`check_basics`, then :func:`complete`. With ``store`` also
    that the run's name and ``new_runs`` (other runs the command will create) are free and
    that a seed run has a generation to start from. ``tokenize=False`` skips building the
    token ids (a caller whose pool has its own)."""
    return complete(config, check_basics(config, store, new_runs), tokenize)


def check_basics(
    config: RunConfig, store: RunStore | None = None, new_runs: Sequence[str] = ()
) -> ModelFacts:
    """The checks that need neither torch nor the text's tokens: :func:`check_inputs`,
    the names (with ``store``), the model's facts from its config file and the sequence
    lengths against its context. Returns the facts."""
    from router.facts import model_facts

    check_inputs(config)
    if store is not None:
        check_names(config, store, new_runs)
    facts = model_facts(config.model)
    facts.check_fits(max(config.seq_lens + config.heldout_seq_lens), "sequence length")
    return facts


def complete(config: RunConfig, facts: ModelFacts, tokenize: bool = True) -> CheckedRun:
    """After :func:`check_basics`: the token ids (unless ``tokenize`` is False; too few
    tokens is a DataSpecError) and the router (:func:`check_router`)."""
    tokens = token_ids(config) if tokenize else None
    check_router(config.router, facts)
    return CheckedRun(config, facts, tokens)


def check_inputs(config: RunConfig) -> None:
    """The first and cheapest checks (no torch, no database): the model spec names
    something loadable, the text source reads and holds text, the device is usable."""
    from router.loading import check_model_spec
    from workers.data import check_text

    check_model_spec(config.model)
    check_text(config.calibration)
    check_device(config)


def check_names(config: RunConfig, store: RunStore, new_runs: Sequence[str] = ()) -> None:
    """Raise StorageError when the run's name or one of ``new_runs`` is taken, or the seed
    run has no finished generation to start from."""
    from storage import StorageError

    for name in [config.run_name, *new_runs]:
        if name and store.run_name_taken(name):
            raise StorageError(f"a run named {name!r} already exists")
    if config.seed_run is not None:
        if store.search_state(store.find_run(config.seed_run).id) is None:
            raise StorageError(f"run {config.seed_run!r} has no finished generation to start from")


def token_ids(config: RunConfig) -> dict[Split, list[list[int]]]:
    """Each split's token ids, as the workers would build them; DataSpecError when the text
    holds too few tokens for the sequences the config asks for."""
    from router.facts import token_encoder
    from workers.data import SPLITS, sequence_ids

    settings = scorer_settings(config)
    encode = token_encoder(config.model)
    return {split: sequence_ids(settings.data_spec(split), encode) for split in SPLITS}


def check_router(spec: str, facts: ModelFacts) -> None:
    """Raise RouterSpecError / CheckpointError unless ``spec`` names a fixed router or a
    checkpoint whose description and weight shapes check out (no weight is read) and that
    was trained for this model."""
    from router.specs import check_router_spec, checkpoint_dir

    check_router_spec(spec)
    directory = checkpoint_dir(spec)
    if directory is None:
        return
    from router.specs import META, WEIGHTS, CheckpointError, read_meta, weights_header

    meta = read_meta(directory)  # the description and the header first: no torch for them
    if meta.get("model") != facts.spec:
        raise CheckpointError(
            f"{directory}/{META}: the router was trained for model {meta['model']!r}, "
            f"not {facts.spec!r}"
        )
    if meta.get("hidden_size", facts.hidden_size) != facts.hidden_size:
        raise CheckpointError(
            f"{directory}/{META}: the router reads hidden size {meta['hidden_size']}, "
            f"{facts.spec} has {facts.hidden_size}"
        )
    weights_header(Path(directory) / WEIGHTS)
    from router.checkpoint import check_checkpoint

    check_checkpoint(directory)  # the tensor shapes against the router the description makes


def check_schedule(schedule: Sequence[float], blocks: int, what: str, nested: bool = False) -> None:
    """Raise ConfigError unless ``schedule`` has one finite sparsity in [0, 1) per decoder
    block and, for a ``nested`` router, never decreases."""
    from router.budget import non_decreasing

    if len(schedule) != blocks:
        raise ConfigError(f"{what} has {len(schedule)} entries; the model has {blocks} blocks")
    if any(not (math.isfinite(s) and 0.0 <= s < 1.0) for s in schedule):
        raise ConfigError(f"every block sparsity of {what} must lie in [0, 1)")
    if nested and not non_decreasing(schedule):
        raise ConfigError(
            f"{what} decreases, and router_training.nested routes only non-decreasing schedules"
        )


def check_training_schedule(
    schedule: Sequence[float],
    config: RunConfig,
    facts: ModelFacts,
    what: str,
    any_mean: bool = False,
) -> None:
    """:func:`check_schedule` for training the run's router, and also: the schedule's mean
    is the run's target sparsity (within :data:`MEAN_TOLERANCE`) unless ``any_mean``, and
    some block the router learns drops a token of the shortest calibration sequence (else
    training has no decision to learn from)."""
    from router.budget import keep_count

    check_schedule(schedule, facts.blocks, what, config.router_training.nested)
    mean = sum(schedule) / len(schedule)
    if not any_mean and abs(mean - config.target_sparsity) > MEAN_TOLERANCE:
        raise ConfigError(
            f"{what} has mean sparsity {mean:.3f}, the run's target is "
            f"{config.target_sparsity:.3f}: pass --any-mean to train for it anyway"
        )
    first = learned_from(config.router_training.kind)
    length = min(config.seq_lens)
    if all(keep_count(s, length) >= length for s in schedule[first:]):
        blocks = f"blocks {first} to {len(schedule) - 1}" if first else "any block"
        raise ConfigError(
            f"{what} drops no token of a {length}-token sequence in {blocks}: "
            "the router would have nothing to learn"
        )


def learned_from(kind: str) -> int:
    """The first block whose scores a router of checkpoint ``kind`` learns."""
    if kind == DEFAULT_ROUTER_KIND:  # the registry (and torch) only for another kind
        return DEFAULT_LEARNED_FROM
    from router.registry import trained_kind

    return trained_kind(kind).learned_from


def check_writable_dir(path: Path, what: str) -> None:
    """Raise ConfigError unless directory ``path`` exists or can be created, and a file can
    be written in it now (its nearest existing ancestor is probed with an unnamed temporary
    file; nothing is left behind)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {path} is not writable: {exc.strerror or exc}") from None


def check_checkpoint_dirs(config: RunConfig, run_name: str, labels: Sequence[str]) -> None:
    """Raise ConfigError unless the router checkpoints of run ``run_name`` with ``labels``
    can be written under ``artifacts_dir`` and none of them would overwrite a checkpoint
    already there (another run's, under the same name)."""
    root = Path(config.artifacts_dir) / run_name
    for label in labels:
        directory = root / label
        if (directory / "router.json").exists():
            raise ConfigError(
                f"{directory} already holds a router checkpoint: choose another run name "
                "or artifacts_dir"
            )
    check_writable_dir(root, "artifacts_dir")
