"""The coordinator: runs the GA against a pool of workers and records everything.

It is the only writer of search results. Per generation it scores the schedules not scored
before in this run (an exact-schedule cache), then writes that generation's evaluations and
the run's best-so-far in one transaction, so a crash loses at most the generation in flight.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Any

from search.config import RunConfig
from search.ga import GAParams, GeneticSearch, is_feasible


@dataclass(frozen=True)
class SearchOutcome:
    run_id: int
    run_name: str
    best_schedule: list[float]
    best_fitness: float
    evaluations: int
    heldout: dict[str, Any]  # label -> workers.Evaluation on the held-out split


def scorer_settings(config: RunConfig) -> Any:
    """The workers' settings derived from a run config."""
    from workers import ScorerSettings

    return ScorerSettings(
        model=config.model, dtype=config.dtype, source=config.calibration,
        calibration_lens=tuple(config.seq_lens),
        calibration_per_length=config.sequences_per_length,
        heldout_lens=tuple(config.heldout_seq_lens),
        heldout_per_length=config.heldout_sequences_per_length,
        window=config.window, batch_size=config.batch_size)


def check_inputs(config: RunConfig, store: Any | None = None) -> None:
    """Everything that can be checked before any work starts; raises ValueError subclasses."""
    from router import check_model_spec
    from workers import check_source

    check_model_spec(config.model)
    check_source(config.calibration)
    if store is not None and config.run_name and store.run_name_taken(config.run_name):
        from storage import StorageError
        raise StorageError(f"a run named {config.run_name!r} already exists")


def launch(config: RunConfig, store: Any, show_progress: bool = True) -> SearchOutcome:
    """Create a run, search, evaluate best and uniform schedules on held-out text."""
    from workers import make_pool

    check_inputs(config, store)
    run = store.create_run(config.run_name, config.model_dump(), config.seed)
    try:
        with make_pool(scorer_settings(config), config.pool, config.workers,
                       config.ray_address, config.cpus_per_worker,
                       config.gpus_per_worker) as pool:
            best, fitness, count = run_search(config, store, pool, run.id, show_progress)
            uniform = [config.target_sparsity] * pool.num_blocks
            results = pool.evaluate([best, uniform], split="heldout")
        heldout = {"best": results[0], "uniform": results[1]}
        for label, evaluation in heldout.items():
            store.add_heldout(run.id, label, evaluation)
        store.set_status(run.id, "finished")
    except BaseException as exc:
        store.set_status(run.id, "failed", "".join(
            traceback.format_exception_only(type(exc), exc)).strip())
        raise
    return SearchOutcome(run.id, run.name, best, fitness, count, heldout)


def run_search(config: RunConfig, store: Any, pool: Any, run_id: int,
               show_progress: bool = True) -> tuple[list[float], float, int]:
    """The generation loop; returns (best schedule, its fitness, evaluations made)."""
    from tqdm.auto import tqdm

    ga = GeneticSearch(GAParams(
        num_blocks=pool.num_blocks, target=config.target_sparsity,
        s_max=config.max_block_sparsity, population=config.population,
        crossover_prob=config.crossover_prob, mutation_prob=config.mutation_prob,
        mutation_sigma=config.mutation_sigma, elite=config.elite,
        tournament=config.tournament, seed=config.seed))
    fitness_of: dict[tuple[float, ...], float] = {}
    best: tuple[float, list[float]] = (math.inf, [])
    for generation in range(config.generations):
        population = ga.ask()
        if not all(is_feasible(s, config.target_sparsity, config.max_block_sparsity)
                   for s in population):
            raise RuntimeError("the GA produced a schedule that breaks the sparsity budget")
        fresh = list({tuple(s): s for s in population if tuple(s) not in fitness_of}.values())
        with tqdm(total=len(fresh), desc=f"generation {generation + 1}/{config.generations}",
                  unit="cand", disable=not show_progress, leave=False) as bar:
            results = pool.evaluate(fresh, on_result=lambda _: bar.update())
        for evaluation in results:
            fitness_of[tuple(evaluation.schedule)] = evaluation.fitness
            best = min(best, (evaluation.fitness, evaluation.schedule))
        store.record_generation(run_id, generation, results, best[0], best[1])
        if show_progress:
            tqdm.write(f"generation {generation + 1}: {len(results)} new schedules, "
                       f"best window KL {best[0]:.4f}")
        if generation + 1 < config.generations:
            ga.tell([fitness_of[tuple(s)] for s in population])
    return best[1], best[0], len(fitness_of)
