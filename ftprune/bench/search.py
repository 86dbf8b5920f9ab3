"""``ftprune bench search``: this engine against a plain DEAP loop at equal forward tokens.

Both methods score schedules with the same pool (same model, same calibration sequences,
same window KL) and stop once they have made the routed model read ``token_budget``
calibration tokens. The plain loop is DEAP's ``eaSimple`` on float vectors with a penalty for
missing the budget, every individual scored on every calibration sequence, no cache. Its
best individual is projected onto the budget before held-out evaluation, so both methods are
judged at exactly the target sparsity.

Rows (one per method and seed): method, seed, evaluations, forward_tokens, wall_s,
candidates_per_min, best_fitness, heldout_kl; ours also carries ``tokens_to_match``: the
forward tokens after which its best-so-far first reached the plain loop's final held-out KL.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from search.config import RunConfig
from search.ga import repair

if TYPE_CHECKING:
    from workers.pool import EvaluationPool

PENALTY = 10.0  # KL units per unit of |mean - target|


@dataclass
class _Budget:
    limit: int
    used: int = 0


def plain_deap(
    config: RunConfig, pool: EvaluationPool, token_budget: int, seed: int, population: int = 16
) -> dict[str, Any]:
    """DEAP ``eaSimple`` with a budget penalty; returns its row (before held-out KL)."""
    from deap import algorithms, base, creator, tools

    from workers.pool import ScoreRequest

    if not hasattr(creator, "FtpBenchFitness"):
        creator.create("FtpBenchFitness", base.Fitness, weights=(-1.0,))
        creator.create("FtpBenchIndividual", list, fitness=creator.FtpBenchFitness)
    n, target, s_max = pool.num_blocks, config.target_sparsity, config.max_block_sparsity
    budget = _Budget(token_budget)
    history: list[tuple[int, float, list[float]]] = []

    def evaluate_all(_evaluate: Any, individuals: list[list[float]]) -> list[tuple[float]]:
        requests = [ScoreRequest([min(s_max, max(0.0, s)) for s in ind]) for ind in individuals]
        fitnesses = []
        for ind, result in zip(individuals, pool.evaluate(requests), strict=True):
            budget.used += result.forward_tokens
            fitness = result.fitness + PENALTY * abs(sum(ind) / n - target)
            fitnesses.append((fitness,))
            history.append((budget.used, fitness, list(ind)))
        return fitnesses

    toolbox = base.Toolbox()
    toolbox.register("map", evaluate_all)
    toolbox.register("evaluate", lambda ind: None)  # scoring happens in map, batched
    toolbox.register("mate", tools.cxBlend, alpha=0.25)
    toolbox.register("mutate", tools.mutGaussian, mu=0.0, sigma=0.06, indpb=0.3)
    toolbox.register("select", tools.selTournament, tournsize=3)
    random.seed(seed)
    pop = [
        creator.FtpBenchIndividual([random.uniform(0.0, s_max) for _ in range(n)])
        for _ in range(population)
    ]
    started = time.perf_counter()
    while budget.used < budget.limit:
        pop, _ = algorithms.eaSimple(
            pop, toolbox, cxpb=0.5, mutpb=0.3, ngen=1 if history else 0, verbose=False
        )
    wall = time.perf_counter() - started
    best_tokens, best_fitness, best = min(history, key=lambda h: h[1])
    return {
        "method": "plain_deap",
        "seed": seed,
        "evaluations": len(history),
        "forward_tokens": budget.used,
        "wall_s": wall,
        "candidates_per_min": 60 * len(history) / wall,
        "best_fitness": best_fitness,
        "schedule": repair(best, target, s_max),
    }


def ours(config: RunConfig, pool: EvaluationPool, token_budget: int, seed: int) -> dict[str, Any]:
    """This engine through the real coordinator and a throwaway SQLite store."""
    from search import coordinator
    from search.settings import run_plan
    from storage import Store

    cfg = config.model_copy(update={"seed": seed, "generations": 10_000, "run_name": None})
    trajectory: list[tuple[int, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        run = store.create_run(None, cfg.model_dump(), seed, plan=run_plan(cfg))
        started = time.perf_counter()
        found = coordinator.run_search(
            cfg,
            store,
            pool,
            run.id,
            show_progress=False,
            token_budget=token_budget,
            after_generation=lambda g, schedule, used: trajectory.append((used, schedule)),
        )
        wall = time.perf_counter() - started
        store.close()
    return {
        "method": "ftprune",
        "seed": seed,
        "evaluations": found.evaluations,
        "forward_tokens": found.forward_tokens,
        "wall_s": wall,
        "candidates_per_min": 60 * found.evaluations / wall,
        "best_fitness": found.best_fitness,
        "schedule": found.best_schedule,
        "trajectory": trajectory,
    }


def run(
    config: RunConfig, token_budget: int, seeds: list[int], progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Both methods for every seed on one pool; returns the benchmark rows."""
    from search.settings import open_pool
    from workers.pool import ScoreRequest

    rows: list[dict[str, Any]] = []
    with open_pool(config) as pool:
        heldout_cache: dict[tuple[float, ...], float] = {}

        def heldout_kl(schedule: list[float]) -> float:
            key = tuple(schedule)
            if key not in heldout_cache:
                heldout_cache[key] = pool.evaluate([ScoreRequest(schedule, "heldout")])[0].fitness
            return heldout_cache[key]

        for seed in seeds:
            plain = plain_deap(config, pool, token_budget, seed)
            plain["heldout_kl"] = heldout_kl(plain.pop("schedule"))
            progress(f"seed {seed}: plain DEAP held-out KL {plain['heldout_kl']:.4f}")
            mine = ours(config, pool, token_budget, seed)
            mine["heldout_kl"] = heldout_kl(mine.pop("schedule"))
            mine["tokens_to_match"] = next(
                (
                    used
                    for used, schedule in mine.pop("trajectory")
                    if heldout_kl(schedule) <= plain["heldout_kl"]
                ),
                None,
            )
            progress(
                f"seed {seed}: ftprune held-out KL {mine['heldout_kl']:.4f}, reached the "
                f"plain loop's at {mine['tokens_to_match']} of {mine['forward_tokens']} "
                "tokens"
            )
            rows += [plain, mine]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table."""
    from ftprune.tables import Column, render

    return render(
        rows,
        [
            Column("method", "method"),
            Column("seed", "seed", "d"),
            Column("evals", "evaluations", "d"),
            Column("fwd tokens", "forward_tokens", "d"),
            Column("wall s", "wall_s", ".0f"),
            Column("cand/min", "candidates_per_min", ".1f"),
            Column("best fit", "best_fitness", ".4f"),
            Column("heldout KL", "heldout_kl", ".4f"),
            Column("match at", "tokens_to_match", "d"),
        ],
    )
