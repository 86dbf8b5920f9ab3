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
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Sequence

from search.config import RunConfig
from search.ga import EvolutionarySearch, is_feasible
from search.records import BEST, UNIFORM, HeldoutLabel
from search.settings import check_device, ga_params, open_pool, run_plan

if TYPE_CHECKING:  # storage (SQLAlchemy) and workers (torch) load lazily: the CLI starts fast
    from storage import EvaluationRecord, RunStore
    from storage.leases import Lease
    from workers.pool import EvaluationPool
    from workers.scoring import Evaluation, WindowStats

Key = tuple[tuple[float, ...], str, int]  # (schedule, router, sequence index)
log = logging.getLogger(__name__)


class SearchFailure(RuntimeError):
    """The search cannot go on: no candidate of a stage could be scored, or a held-out
    evaluation failed; the message gives the generation and the first reason."""


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


@dataclass
class FitnessCache:
    """Per-sequence window statistics keyed by (schedule, router, sequence); counts hits."""

    stats: dict[Key, WindowStats] = field(default_factory=dict)
    hits: int = 0

    def missing(self, schedule: Sequence[float], router: str, data: Sequence[int]) -> list[int]:
        key = tuple(schedule)
        missing = [i for i in data if (key, router, i) not in self.stats]
        self.hits += len(data) - len(missing)
        return missing

    def add(
        self, schedule: Sequence[float], router: str, per_sequence: dict[int, WindowStats]
    ) -> None:
        key = tuple(schedule)
        for index, stats in per_sequence.items():
            self.stats[(key, router, index)] = stats

    def merged(self, schedule: Sequence[float], router: str, data: Sequence[int]) -> WindowStats:
        from workers.scoring import merge_stats

        key = tuple(schedule)
        return merge_stats([self.stats[(key, router, i)] for i in data])


def check_inputs(config: RunConfig, store: RunStore | None = None) -> None:
    """Everything that can be checked before any work starts (model, data, router, device,
    and with a store the run name and seed run); raises ValueError subclasses."""
    from router.loading import check_model_spec

    check_model_spec(config.model)  # before anything imports torch: a bad model is quick
    from router.registry import check_router_spec
    from storage import StorageError
    from workers import check_source

    check_source(config.calibration)
    check_router_spec(config.router)
    check_device(config)
    if store is not None and config.run_name and store.run_name_taken(config.run_name):
        raise StorageError(f"a run named {config.run_name!r} already exists")
    if store is not None and config.seed_run is not None:
        if store.search_state(store.find_run(config.seed_run).id) is None:
            raise StorageError(f"run {config.seed_run!r} has no finished generation to start from")


def launch(
    config: RunConfig,
    store: RunStore,
    show_progress: bool = True,
    pool: EvaluationPool | None = None,
) -> SearchOutcome:
    """Create a run, search, then evaluate the best and the uniform schedule on held-out
    text. Uses ``pool`` if given (left open), else opens and closes one from the config."""
    from storage.leases import Lease, lease_seconds, new_owner

    check_inputs(config, store)
    lease = Lease(new_owner(), lease_seconds())
    run = store.create_run(
        config.run_name, config.model_dump(), config.seed, lease, plan=run_plan(config)
    )
    return _drive(config, store, run.id, run.name, pool, show_progress, lease)


def resume(
    ref: str | int,
    store: RunStore,
    show_progress: bool = True,
    pool: EvaluationPool | None = None,
    device: str | None = None,
) -> SearchOutcome:
    """Continue a stored run from its last generation boundary (``device`` overrides the
    stored config's for this process's workers; the stored config is left as it was).

    Raises :class:`storage.store.LeaseHeld`, changing nothing, while another coordinator's
    lease on the run is live."""
    from storage.leases import Lease, lease_seconds, new_owner
    from workers.devices import check_device_spec

    run = store.find_run(ref)
    config = RunConfig(**run.config)
    if device is not None:
        check_device_spec(device)
        config = config.model_copy(update={"device": device})
    check_inputs(config)
    lease = Lease(new_owner(), lease_seconds())
    store.acquire_lease(run.id, lease)
    store.set_status(run.id, "running", lease=lease)
    return _drive(config, store, run.id, run.name, pool, show_progress, lease)


def _drive(
    config: RunConfig,
    store: RunStore,
    run_id: int,
    run_name: str,
    pool: EvaluationPool | None,
    show_progress: bool,
    lease: Lease,
) -> SearchOutcome:
    """Search, score the held-out split and finish the run, holding ``lease`` throughout
    (released at the end). Held-out rows the run already has (a finished run resumed) are
    not stored again."""
    from storage.engine import DatabaseUnavailable
    from workers.pool import ScoreRequest

    owned = pool is None
    try:
        with LeaseKeeper(store, run_id, lease):
            workers = pool or open_pool(config)
            try:
                progress = run_search(config, store, workers, run_id, show_progress, lease=lease)
                uniform = [config.target_sparsity] * workers.num_blocks
                results = workers.evaluate(
                    [
                        ScoreRequest(progress.best_schedule, "heldout", config.router),
                        ScoreRequest(uniform, "heldout", config.router),
                    ]
                )
            finally:
                if owned:
                    workers.close()
            heldout = {BEST: results[0], UNIFORM: results[1]}
            stored = {(h.label, tuple(h.schedule)) for h in store.heldout(run_id)}
            for label, evaluation in heldout.items():
                if evaluation.error is not None:
                    raise SearchFailure(
                        f"held-out scoring of the {label.to_json()} schedule failed: "
                        f"{evaluation.error}"
                    )
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
        _record_failure(store, run_id, lease, exc)
        raise
    return SearchOutcome(run_id, run_name, progress, heldout)


def _record_failure(store: RunStore, run_id: int, lease: Lease, exc: BaseException) -> None:
    """Mark the run failed with the reason and release its lease, unless the lease is lost
    (the run is another coordinator's now); a database that fails here too is only logged,
    so the original error is what the caller sees."""
    from storage import StorageError
    from storage.store import LeaseLost

    if isinstance(exc, LeaseLost):
        return
    reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    try:
        store.set_status(run_id, "failed", reason, lease=lease)
        store.release_lease(run_id, lease.owner)
    except StorageError as other:
        log.warning("could not record that the run failed: %s", other)


class LeaseKeeper:
    """Renews a run's lease from a daemon thread every third of its duration while the
    block runs, so a long generation never lets it lapse; a renewal that fails (database
    away) is logged and tried again at the next beat, and a lost lease stops the beats
    (the next stored generation then raises :class:`storage.store.LeaseLost`)."""

    def __init__(self, store: RunStore, run_id: int, lease: Lease) -> None:
        self.store, self.run_id, self.lease = store, run_id, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ftprune-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        from storage.store import LeaseLost

        while not self._stop.wait(self.lease.duration_s / 3):
            try:
                self.store.renew_lease(self.run_id, self.lease, retry=False)
            except LeaseLost as exc:
                log.warning("%s", exc)
                return
            except Exception as exc:  # a heartbeat outlives a database outage
                log.warning("lease renewal failed, trying again at the next beat: %s", exc)


def minibatch_order(seed: int, generation: int, num_sequences: int) -> list[int]:
    """The generation's shuffle of calibration sequence indices (depends on nothing else)."""
    order = list(range(num_sequences))
    random.Random(f"ftprune:{seed}:{generation}").shuffle(order)
    return order


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
    stored_state = store.search_state(run_id)
    cache = FitnessCache()
    failed: dict[tuple[float, ...], str] = {}  # schedules that failed once: never scored again
    for row in store.evaluations(run_id):
        if row.error is not None:
            failed[tuple(row.schedule)] = row.error
        elif row.per_sequence is not None:
            cache.add(row.schedule, row.router, _stats_from_json(row.per_sequence))
    if stored_state is None:
        params = ga_params(config, pool.num_blocks)
        if config.seed_run is not None:
            seed_state = store.search_state(store.find_run(config.seed_run).id)
            assert seed_state is not None  # check_inputs refused a seed run without one
            parents = EvolutionarySearch.from_state(seed_state).parents
            search = EvolutionarySearch(params, seed_parents=parents)
        else:
            influence = pool.block_influence() if config.block_influence_profile else None
            search = EvolutionarySearch(params, influence)
    else:
        search = EvolutionarySearch.from_state(stored_state)
    run = store.find_run(run_id)
    best_schedule = run.best_schedule or []
    best_fitness = math.inf if run.best_fitness is None else run.best_fitness
    tokens_used = store.run_totals(run_id)["forward_tokens"]
    for generation in range(search.generation, config.generations):
        if token_budget is not None and tokens_used >= token_budget:
            break
        candidates = search.ask()
        if not all(
            is_feasible(s, config.target_sparsity, config.max_block_sparsity) for s in candidates
        ):
            raise RuntimeError("the search produced a schedule that breaks the budget")
        order = minibatch_order(config.seed, generation, num_sequences)
        records: list[EvaluationRecord] = []
        survivors = candidates
        parents = search.parents
        incumbents = [s for s in candidates if s in parents]
        started = time.perf_counter()
        for index, stage in enumerate(stages):
            data = sorted(order[: stage.sequences])
            fitness = _score_stage(
                pool,
                cache,
                failed,
                survivors,
                config.router,
                data,
                generation,
                index,
                records,
                show_progress,
            )
            ranked = sorted(survivors, key=lambda s: fitness[tuple(s)])
            scored = [s for s in ranked if tuple(s) not in failed]
            if not scored:
                reasons = sorted({failed[tuple(s)] for s in ranked})
                raise SearchFailure(
                    f"generation {generation + 1}, stage {index + 1}: none of the "
                    f"{len(ranked)} candidates could be scored ({'; '.join(reasons[:3])})"
                )
            survivors = scored[: stage.keep]
            if index < len(stages) - 1:
                survivors += [
                    s for s in incumbents if s not in survivors and tuple(s) not in failed
                ]
            best_fitness = fitness[tuple(survivors[0])]
        # Parents come from the final stage's ranking; only when too few candidates survive
        # (failures) do screened-out ones, then failed ones, fill the places.
        search.tell(
            survivors
            + [s for s in candidates if s not in survivors and tuple(s) not in failed]
            + [s for s in candidates if tuple(s) in failed]
        )
        best_schedule = survivors[0]
        store.record_generation(
            run_id, generation, records, best_fitness, best_schedule, search.state(), lease
        )
        tokens_used += sum(r.forward_tokens for r in records)
        if show_progress:
            tqdm.write(
                f"generation {generation + 1}/{config.generations}: "
                f"{len(records)} evaluations, {sum(r.forward_tokens for r in records)} "
                f"forward tokens, best window KL {best_fitness:.4f} on "
                f"{stages[-1].sequences} sequences "
                f"({time.perf_counter() - started:.0f} s)"
            )
        if after_generation:
            after_generation(generation, best_schedule, tokens_used)
    totals = store.run_totals(run_id)
    return SearchProgress(
        best_schedule, best_fitness, totals["evaluations"], totals["forward_tokens"], cache.hits
    )


def _score_stage(
    pool: EvaluationPool,
    cache: FitnessCache,
    failed: dict[tuple[float, ...], str],
    candidates: list[list[float]],
    router_spec: str,
    data: list[int],
    generation: int,
    stage: int,
    records: list[EvaluationRecord],
    show_progress: bool,
) -> dict[tuple[float, ...], float]:
    """Score ``candidates`` on ``data`` through the cache; append a record per candidate
    that needed new work (a failure with its reason, added to ``failed``); return each
    candidate's fitness on ``data`` (infinite for a failed one, which is never requested
    again)."""
    from tqdm.auto import tqdm

    from router import router_kind
    from storage import EvaluationRecord
    from workers.pool import ScoreRequest

    router = router_kind(router_spec)  # one router per run: its kind keys the cache
    requests, owners = [], []
    for schedule in candidates:
        if tuple(schedule) in failed:
            continue
        missing = cache.missing(schedule, router, data)
        if missing:
            requests.append(ScoreRequest(schedule, "calibration", router_spec, tuple(missing)))
            owners.append(schedule)
    with tqdm(
        total=len(requests),
        desc=f"generation {generation + 1} stage {stage + 1}",
        unit="cand",
        disable=not show_progress,
        leave=False,
    ) as bar:
        results = pool.evaluate(requests, on_result=lambda _: bar.update())
    for schedule, result in zip(owners, results, strict=True):
        if result.error is not None:
            failed[tuple(schedule)] = result.error
        else:
            cache.add(schedule, router, result.per_sequence)
        records.append(
            EvaluationRecord(
                schedule=schedule,
                router=router,
                metrics=(
                    None
                    if result.error is not None
                    else cache.merged(schedule, router, data).metrics()
                ),
                duration_s=result.duration_s,
                worker=result.worker,
                stage=stage,
                sequences=data,
                forward_tokens=result.forward_tokens,  # 0 for a failure: its work was lost
                per_sequence={str(i): s.to_json() for i, s in result.per_sequence.items()},
                error=result.error,
            )
        )
    return {
        tuple(s): math.inf if tuple(s) in failed else cache.merged(s, router, data).metrics().kl
        for s in candidates
    }


def _stats_from_json(per_sequence: dict[str, list[float]]) -> dict[int, WindowStats]:
    from workers.scoring import WindowStats

    return {int(i): WindowStats.from_json(values) for i, values in per_sequence.items()}
