"""A DEAP genetic algorithm over block-wise sparsity schedules, in ask/tell form.

A schedule is a plain list of floats (s_1..s_N), one sparsity per decoder block. Every
schedule this module returns is feasible: its mean equals the target sparsity within 1e-9
and every entry lies in [0, s_max]. The algorithm never scores anything itself: the caller
scores what :meth:`GeneticSearch.ask` returns and hands the fitnesses back through
:meth:`GeneticSearch.tell`. It imports no Ray, SQL or web code.

DEAP's operators draw from Python's global ``random`` module; this class swaps its own
random state in around every call, so a search is reproducible from its seed whatever else
uses ``random`` in the process.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import Iterator, Sequence

from deap import base, tools

MEAN_TOLERANCE = 1e-9


class _Fitness(base.Fitness):
    weights = (-1.0,)  # minimize KL


class _Individual(list):
    """A schedule with a DEAP fitness attached (never leaves this module)."""

    def __init__(self, values: Sequence[float], fitness: float | None = None) -> None:
        super().__init__(values)
        self.fitness = _Fitness()
        if fitness is not None:
            self.fitness.values = (fitness,)


def repair(values: Sequence[float], target: float, s_max: float) -> list[float]:
    """The feasible schedule closest to ``values`` (Euclidean projection, then exact fix-up).

    Finds the shift t with mean(clip(v - t, 0, s_max)) = target by bisection, then moves the
    remaining float error onto entries with room, so the mean is exact to ~1e-15.
    """
    if not 0.0 <= target <= s_max:
        raise ValueError(f"target {target} outside [0, {s_max}]")
    n = len(values)
    goal = target * n
    lo, hi = min(values) - s_max - 1.0, max(values) + 1.0

    def total(shift: float) -> float:
        return math.fsum(min(s_max, max(0.0, v - shift)) for v in values)

    for _ in range(200):
        mid = (lo + hi) / 2
        if total(mid) > goal:
            lo = mid
        else:
            hi = mid
    shift = (lo + hi) / 2
    repaired = [min(s_max, max(0.0, v - shift)) for v in values]
    residual = goal - math.fsum(repaired)
    for i in sorted(range(n), key=lambda i: -min(repaired[i], s_max - repaired[i])):
        if residual == 0.0:
            break
        step = max(-repaired[i], min(s_max - repaired[i], residual))
        repaired[i] += step
        residual = goal - math.fsum(repaired)
    return repaired


def is_feasible(schedule: Sequence[float], target: float, s_max: float) -> bool:
    """Whether ``schedule`` meets the budget: exact mean (1e-9) and bounds [0, s_max]."""
    return (abs(math.fsum(schedule) / len(schedule) - target) <= MEAN_TOLERANCE
            and all(0.0 <= s <= s_max for s in schedule))


@dataclass(frozen=True)
class GAParams:
    """The algorithm's knobs (see ``search.config.RunConfig`` for the user-facing names)."""

    num_blocks: int
    target: float
    s_max: float
    population: int = 16
    crossover_prob: float = 0.7
    mutation_prob: float = 0.4
    mutation_sigma: float = 0.06
    elite: int = 2
    tournament: int = 3
    seed: int = 0


class GeneticSearch:
    """Elitist generational GA: tournament selection, blend crossover followed by
    :func:`repair`, and transfer mutation (sparsity moved from one block to another).

    ``ask()`` returns the current population (the initial one first); ``tell(fitnesses)``
    takes one fitness per schedule of the last ``ask()`` and breeds the next population.
    Duplicates inside a population are re-mutated (a few attempts) so each generation
    explores as many distinct schedules as it can.
    """

    def __init__(self, params: GAParams) -> None:
        self.params = params
        self._random_state = random.Random(params.seed).getstate()
        self._population = self._initial_population()

    def ask(self) -> list[list[float]]:
        return [list(ind) for ind in self._population]

    def tell(self, fitnesses: Sequence[float]) -> None:
        if len(fitnesses) != len(self._population):
            raise ValueError("one fitness per schedule of the last ask() is required")
        scored = [_Individual(ind, f) for ind, f in zip(self._population, fitnesses)]
        with self._rng():
            self._population = self._breed(scored)

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        outside = random.getstate()
        random.setstate(self._random_state)
        try:
            yield
        finally:
            self._random_state = random.getstate()
            random.setstate(outside)

    def _feasible(self, values: Sequence[float]) -> list[float]:
        return repair(values, self.params.target, self.params.s_max)

    def _initial_population(self) -> list[list[float]]:
        """Uniform first; then linear ramps across depth and a dense-first-block profile
        (structured guesses); then transfer-mutated copies of uniform; a few random ones."""
        p = self.params
        n, target = p.num_blocks, p.target
        depth = [i / max(1, n - 1) - 0.5 for i in range(n)]
        profiles = [[target] * n]
        for slope in (0.2, -0.2, 0.4, -0.4):
            profiles.append(self._feasible([target + slope * target * 2 * d for d in depth]))
        profiles.append(self._feasible([0.0] + [target * n / (n - 1)] * (n - 1)))
        population: list[list[float]] = []
        for profile in profiles:
            if len(population) < p.population and profile not in population:
                population.append(profile)
        random_from = p.population - max(1, p.population // 8)
        with self._rng():
            while len(population) < p.population:
                if len(population) < random_from:
                    candidate = self._transfer(list(population[0]), moves=random.randint(1, 4))
                else:
                    candidate = self._feasible([random.uniform(0.0, p.s_max) for _ in range(n)])
                if candidate not in population:
                    population.append(candidate)
        return population

    def _transfer(self, schedule: list[float], moves: int) -> list[float]:
        """Move sparsity from one block to another ``moves`` times; the sum never changes."""
        p = self.params
        for _ in range(moves):
            give, take = random.sample(range(p.num_blocks), 2)
            amount = min(random.uniform(0.0, 2 * p.mutation_sigma), schedule[give],
                         p.s_max - schedule[take])
            schedule[give] -= amount
            schedule[take] += amount
        return self._feasible(schedule)

    def _breed(self, scored: list[_Individual]) -> list[list[float]]:
        p = self.params
        elites = [list(ind) for ind in tools.selBest(scored, p.elite)]
        parents = [_Individual(ind) for ind in
                   tools.selTournament(scored, p.population - p.elite, p.tournament)]
        for first, second in zip(parents[::2], parents[1::2]):
            if random.random() < p.crossover_prob:
                tools.cxBlend(first, second, alpha=0.25)
        children: list[list[float]] = []
        for parent in parents:
            candidate = self._feasible(parent)
            if random.random() < p.mutation_prob:
                candidate = self._transfer(candidate, moves=random.randint(1, 3))
            for _ in range(5):
                if candidate not in elites and candidate not in children:
                    break
                candidate = self._transfer(candidate, moves=1)
            children.append(candidate)
        return elites + children
