"""The coordinator: runs the evolutionary search against a pool of workers, records
everything, and can resume a run exactly.

Each generation, every candidate (parents and offspring) goes through the configured
stages: stage s scores the surviving candidates on the first ``sequences`` of a fresh,
seeded shuffle of the calibration sequences (so later stages extend earlier stages' data,
always at the real sequence lengths), and the best ``keep`` move on. The current parents
always move on: a screen on a few sequences never drops them, they compete only on the
final stage's data. The final stage's best become the next parents, so when the final stage
reads every calibration sequence the best fitness never gets worse from one generation to
the next.

Fitness is cached per (schedule, router, sequence): no candidate is ever scored twice on the
same data, and a candidate moving to a larger slice only computes the sequences it lacks.

The coordinator is the only writer. A generation's evaluations, the run's best-so-far and
the search state (parents, random state, seen schedules) land in one transaction at the
generation boundary; ``resume`` rebuilds the cache from stored evaluations and continues from
the last stored state, reaching the same result as an uninterrupted run with the same seed.

Faults:

- A lost database connection is retried by the store (bounded backoff, a generation never
  written twice); past the budget the run stops with one line and resumes from its last
  stored generation.
- One coordinator per run: ``launch`` and ``resume`` take the run's lease
  (:class:`storage.leases.Lease`, ``$FTPRUNE_LEASE_S`` seconds, default 60), renewed with
  every stored generation and by a heartbeat thread in between; a second coordinator is
  refused while the lease is live (:class:`storage.store.LeaseHeld`), and may take over once
  it has expired or its owner's process on this machine has exited. A coordinator that lost
  its lease writes nothing more and leaves the run's status alone.
- A candidate whose scoring fails (the worker raised, or the fitness is not finite) is
  recorded once with its reason, ranks below every scored candidate and is never scored
  again in the run; a stage in which no candidate could be scored fails the run
  (:class:`SearchFailure`) rather than going on without data.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from search.config import RunConfig, StageConfig
from search.fitness import FitnessCache, minibatch_order, score_stage, stats_from_json
from search.ga import EvolutionarySearch, is_feasible
from search.interrupts import Interruptible, RunInterrupted, signal_of
from search.leasing import LeaseKeeper
from search.preflight import CheckedRun, check_names, preflight
from search.records import BEST, UNIFORM, HeldoutLabel
from search.settings import ga_params, run_plan
from search.stored import load_run_config, stored_config

if TYPE_CHECKING:  # storage (SQLAlchemy) and workers (torch) load lazily: the CLI starts fast
    from storage import EvaluationRecord, RunStore
    from storage.leases import Lease
    from workers.pool import EvaluationPool
    from workers.scoring import Evaluation

log = logging.getLogger(__name__)


class SearchFailure(RuntimeError):
    """The search cannot go on: no candidate of a stage could be scored, or a held-out
    evaluation failed; the message gives the generation and the first reason."""


class RunFinished(ValueError):
    """``resume`` of a run that has finished: its result is stored, nothing runs again."""


@dataclass(frozen=True)
class SearchProgress:
    """Where a run's search stands after :func:`run_search`."""

    best_schedule: list[float]
    best_fitness: float  # on the last generation's final-stage sequences (inf: none yet)
    evaluations: int  # stored evaluation records of the run
    forward_tokens: int  # calibration tokens the routed model read for the run
    cache_hits: int  # (schedule, sequence) scores served from the cache in this call


@dataclass(frozen=True)
class SearchOutcome:
    run_id: int
    run_name: str
    search: SearchProgress
    heldout: dict[HeldoutLabel, Evaluation]  # BEST and UNIFORM, on the held-out split


def launch(
    run: RunConfig | CheckedRun,
    store: RunStore,
    show_progress: bool = True,
    pool: EvaluationPool | None = None,
) -> SearchOutcome:
    """Create a run, search, then evaluate the best and the uniform schedule on held-out
    text. ``run`` is a config (checked here: :func:`search.preflight.preflight`) or a
    :class:`CheckedRun` (its names are checked against ``store`` again). Uses ``pool`` if
    given (left open), else opens one on the checked run's tokens and closes it."""
    from storage.leases import Lease, lease_seconds, new_owner

    if isinstance(run, CheckedRun):
        check_names(run.config, store)
        checked = run
    else:
        checked = preflight(run, store, tokenize=pool is None)
    config = checked.config
    lease = Lease(new_owner(), lease_seconds())
    row = store.create_run(
        config.run_name, stored_config(config), config.seed, lease, plan=run_plan(config)
    )
    return _drive(checked, store, row.id, row.name, pool, show_progress, lease)


def prepare_resume(
    ref: str | int, store: RunStore, device: str | None = None, tokenize: bool = True
) -> CheckedRun:
    """The checked config of a stored run to resume (``device`` overrides the stored
    config's for this process's workers; the stored config is left as it was).

    Raises :class:`RunFinished` for a run that has finished (its result is stored, nothing
    runs again), and the config's and preflight's one-line errors."""
    from workers.devices import check_device_spec

    run = store.find_run(ref)
    if run.status == "finished":
        best = (
            ""
            if run.best_fitness is None
            else f" (best calibration window KL {run.best_fitness:.4g})"
        )
        raise RunFinished(
            f"run {run.name!r} has finished{best}: nothing to resume; "
            f"`ftprune search status {run.name}` shows its result"
        )
    config = load_run_config(run)
    if device is not None:
        check_device_spec(device)
        config = config.model_copy(update={"device": device})
    return preflight(config, tokenize=tokenize)


def resume(
    ref: str | int,
    store: RunStore,
    show_progress: bool = True,
    pool: EvaluationPool | None = None,
    device: str | None = None,
    checked: CheckedRun | None = None,
) -> SearchOutcome:
    """Continue a stored run from its last generation boundary, with ``checked`` (from
    :func:`prepare_resume`) or after preparing it here.

    Raises :class:`RunFinished`, changing nothing, for a run that has finished, and
    :class:`storage.store.LeaseHeld`, changing nothing, while another coordinator's lease
    on the run is live."""
    from storage.leases import Lease, lease_seconds, new_owner

    run = store.find_run(ref)
    checked = checked or prepare_resume(ref, store, device, tokenize=pool is None)
    lease = Lease(new_owner(), lease_seconds())
    store.acquire_lease(run.id, lease)
    store.set_status(run.id, "running", lease=lease)
    return _drive(checked, store, run.id, run.name, pool, show_progress, lease)


def _drive(
    checked: CheckedRun,
    store: RunStore,
    run_id: int,
    run_name: str,
    pool: EvaluationPool | None,
    show_progress: bool,
    lease: Lease,
) -> SearchOutcome:
    """Search, score the held-out split and finish the run, holding ``lease`` throughout
    (released at the end). Held-out rows the run already has are not stored again.

    An interruption (SIGINT, SIGTERM, Ray's job stop) marks the run ``interrupted`` and
    raises :class:`RunInterrupted` naming ``ftprune search resume``; any other failure
    marks it ``failed`` with the reason. Either way the lease is released."""
    from storage.engine import DatabaseUnavailable

    try:
        with Interruptible() as signals, LeaseKeeper(store, run_id, lease):
            workers = pool or checked.open_pool()
            signals.install()  # after the pool: ray.init replaces the SIGTERM handler
            try:
                progress = run_search(
                    checked.config, store, workers, run_id, show_progress, lease=lease
                )
                heldout = _score_heldout(
                    checked.config, workers, progress.best_schedule, show_progress
                )
            finally:
                if pool is None:
                    workers.close()
            stored = {(h.label, tuple(h.schedule)) for h in store.heldout(run_id)}
            for label, evaluation in heldout.items():
                if (label.to_json(), tuple(evaluation.schedule)) not in stored:
                    store.add_heldout(run_id, label.to_json(), evaluation, lease=lease)
            store.set_status(run_id, "finished", lease=lease)
            store.release_lease(run_id, lease.owner)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(
            f"{exc}; run {run_name!r} keeps its last stored generation: "
            f"`ftprune search resume {run_name}` continues it"
        ) from None
    except BaseException as exc:
        number = signal_of(exc)
        if number is None:
            _record_end(store, run_id, lease, "failed", exc)
            raise
        _record_end(store, run_id, lease, "interrupted", exc)
        raise RunInterrupted(
            f"interrupted: run {run_name!r} keeps its last stored generation; "
            f"`ftprune search resume {run_name}` continues it",
            number,
        ) from None
    return SearchOutcome(run_id, run_name, progress, heldout)


def _score_heldout(
    config: RunConfig, pool: EvaluationPool, best: list[float], show_progress: bool = False
) -> dict[HeldoutLabel, Evaluation]:
    """The best and the uniform schedule on the held-out split (a progress bar with
    ``show_progress``); SearchFailure if either could not be scored."""
    from tqdm.auto import tqdm

    from workers.pool import ScoreRequest

    uniform = [config.target_sparsity] * pool.num_blocks
    requests = [
        ScoreRequest(best, "heldout", config.router),
        ScoreRequest(uniform, "heldout", config.router),
    ]
    with tqdm(
        total=len(requests),
        desc="held-out text: best and uniform",
        unit="schedule",
        disable=not show_progress,
        leave=False,
    ) as bar:
        results = pool.evaluate(requests, on_result=lambda _: bar.update())
    heldout = {BEST: results[0], UNIFORM: results[1]}
    for label, evaluation in heldout.items():
        if evaluation.error is not None:
            raise SearchFailure(
                f"held-out scoring of the {label.to_json()} schedule failed: {evaluation.error}"
            )
    return heldout


def _record_end(
    store: RunStore, run_id: int, lease: Lease, status: str, exc: BaseException
) -> None:
    """Mark the run ``status`` (failed, interrupted) with the reason and release its lease,
    unless the lease is lost (the run is another coordinator's now); a database that fails
    here too is only logged, so the original error is what the caller sees."""
    from storage import StorageError
    from storage.store import LeaseLost

    if isinstance(exc, LeaseLost):
        return
    reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    try:
        store.set_status(run_id, status, reason, lease=lease)
        store.release_lease(run_id, lease.owner)
    except StorageError as other:
        log.warning("could not record that the run %s: %s", status, other)


def run_search(
    config: RunConfig,
    store: RunStore,
    pool: EvaluationPool,
    run_id: int,
    show_progress: bool = True,
    token_budget: int | None = None,
    after_generation: Callable[[int, list[float], int], None] | None = None,
    lease: Lease | None = None,
) -> SearchProgress:
    """The generation loop, from the run's stored state if it has one.

    Stops after ``config.generations`` generations, or after the first generation that
    brings the forward tokens read by the routed model to ``token_budget``.
    ``after_generation(generation, best schedule, forward tokens so far)`` runs after each
    generation is stored. With ``lease`` every generation is stored only while the lease is
    the run's (and renews it).
    """
    from tqdm.auto import tqdm

    num_sequences = pool.num_sequences["calibration"]
    stages = config.resolved_stages()
    cache, failed = _stored_scores(store, run_id)
    search = _start_search(config, store, pool, run_id, show_progress)
    run = store.find_run(run_id)
    best_schedule = run.best_schedule or []
    best_fitness = math.inf if run.best_fitness is None else run.best_fitness
    tokens_used = store.run_totals(run_id)["forward_tokens"]
    for generation in range(search.generation, config.generations):
        if token_budget is not None and tokens_used >= token_budget:
            break
        started = time.perf_counter()
        order = minibatch_order(config.seed, generation, num_sequences)
        scored = _Generation(config, stages, pool, cache, failed, generation, show_progress)
        best_schedule, best_fitness = scored.run(search, order)
        store.record_generation(
            run_id, generation, scored.records, best_fitness, best_schedule, search.state(), lease
        )
        tokens = sum(r.forward_tokens for r in scored.records)
        tokens_used += tokens
        if show_progress:
            tqdm.write(
                f"generation {generation + 1}/{config.generations}: "
                f"{len(scored.records)} evaluations, {tokens} forward tokens, best window KL "
                f"{best_fitness:.4f} on {stages[-1].sequences} sequences "
                f"({time.perf_counter() - started:.0f} s)"
            )
        if after_generation:
            after_generation(generation, best_schedule, tokens_used)
    totals = store.run_totals(run_id)
    return SearchProgress(
        best_schedule, best_fitness, totals["evaluations"], totals["forward_tokens"], cache.hits
    )


def _stored_scores(
    store: RunStore, run_id: int
) -> tuple[FitnessCache, dict[tuple[float, ...], str]]:
    """The run's stored evaluations as a fitness cache, and the schedules that failed once
    (never scored again) with their reasons."""
    cache = FitnessCache()
    failed: dict[tuple[float, ...], str] = {}
    for row in store.evaluations(run_id):
        if row.error is not None:
            failed[tuple(row.schedule)] = row.error
        elif row.per_sequence is not None:
            cache.add(row.schedule, row.router, stats_from_json(row.per_sequence))
    return cache, failed


def _start_search(
    config: RunConfig, store: RunStore, pool: EvaluationPool, run_id: int, show_progress: bool
) -> EvolutionarySearch:
    """The run's search: from its stored state, else new (seeded from ``seed_run``'s
    parents, or with a Block-Influence profile). SearchFailure if the search keeps a
    budget other than the config's."""
    stored_state = store.search_state(run_id)
    if stored_state is not None:
        search = EvolutionarySearch.from_state(stored_state)
    elif config.seed_run is not None:
        seed_state = store.search_state(store.find_run(config.seed_run).id)
        assert seed_state is not None  # preflight refused a seed run without one
        parents = EvolutionarySearch.from_state(seed_state).parents
        search = EvolutionarySearch(ga_params(config, pool.num_blocks), seed_parents=parents)
    else:
        influence = None
        if config.block_influence_profile:
            if show_progress:
                from tqdm.auto import tqdm

                tqdm.write(
                    f"Block Influence of {pool.num_blocks} blocks: one dense pass over "
                    f"{pool.num_sequences['calibration']} calibration sequences"
                )
            influence = pool.block_influence()
        search = EvolutionarySearch(ga_params(config, pool.num_blocks), influence)
    params = search.params  # the budget every candidate keeps: the one the GA searches
    if (params.target, params.s_max) != (config.target_sparsity, config.max_block_sparsity):
        raise SearchFailure(
            f"the run's stored search targets sparsity {params.target} (at most "
            f"{params.s_max} per block), its config {config.target_sparsity} (at most "
            f"{config.max_block_sparsity}): the config changed since the run started"
        )
    return search


@dataclass
class _Generation:
    """One generation's multi-fidelity selection: each stage scores the survivors on more
    calibration sequences and keeps the best; the current parents skip the screens."""

    config: RunConfig
    stages: Sequence[StageConfig]
    pool: EvaluationPool
    cache: FitnessCache
    failed: dict[tuple[float, ...], str]
    generation: int
    show_progress: bool
    records: list[EvaluationRecord] = field(default_factory=list)

    def run(self, search: EvolutionarySearch, order: list[int]) -> tuple[list[float], float]:
        """Ask, score every stage, tell: the generation's best schedule and its fitness."""
        params = search.params
        candidates = search.ask()
        if not all(is_feasible(s, params.target, params.s_max) for s in candidates):
            raise RuntimeError("the search produced a schedule that breaks the budget")
        failed = self.failed
        incumbents = [s for s in candidates if s in search.parents]
        survivors, best_fitness = candidates, math.inf
        stages = self.stages
        for index, stage in enumerate(stages):
            data = sorted(order[: stage.sequences])
            survivors, best_fitness = self._stage(index, stage.keep, data, survivors)
            if index < len(stages) - 1:
                survivors += [
                    s for s in incumbents if s not in survivors and tuple(s) not in failed
                ]
        # Parents come from the final stage's ranking; only when too few candidates survive
        # (failures) do screened-out ones, then failed ones, fill the places.
        search.tell(
            survivors
            + [s for s in candidates if s not in survivors and tuple(s) not in failed]
            + [s for s in candidates if tuple(s) in failed]
        )
        return survivors[0], best_fitness

    def _stage(
        self, index: int, keep: int, data: list[int], survivors: list[list[float]]
    ) -> tuple[list[list[float]], float]:
        """Stage ``index`` on calibration sequences ``data``: the best ``keep`` scored
        survivors and the best fitness; SearchFailure if none could be scored."""
        fitness = score_stage(
            self.pool,
            self.cache,
            self.failed,
            survivors,
            self.config.router,
            data,
            self.generation,
            index,
            self.records,
            self.show_progress,
        )
        ranked = sorted(survivors, key=lambda s: fitness[tuple(s)])
        scored = [s for s in ranked if tuple(s) not in self.failed]
        if not scored:
            reasons = sorted({self.failed[tuple(s)] for s in ranked})
            raise SearchFailure(
                f"generation {self.generation + 1}, stage {index + 1}: none of the "
                f"{len(ranked)} candidates could be scored ({'; '.join(reasons[:3])})"
            )
        kept = scored[:keep]
        return kept, fitness[tuple(kept[0])]
