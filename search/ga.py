"""A DEAP evolutionary search over block-wise sparsity schedules, in ask/tell form.

Schedules live on a grid: block i skips ``levels[i] * step`` of its tokens, with
``0 <= levels[i] <= max_level`` and ``sum(levels) == total``, where ``step`` is chosen so that
``total * step == target * num_blocks``. Every schedule this module hands out therefore has
mean exactly the target (within float rounding, far below 1e-9) and entries in [0, s_max],
and every operator preserves that:

- mutation moves one level from one block to another (EvoPress), so the sum never changes;
- crossover (DEAP's uniform crossover on levels) is followed by a repair that moves single
  levels until the sum is exact again, never leaving the bounds;
- a schedule handed out once is never handed out again (duplicates are rejected);
- with ``monotone``, every schedule is sorted into non-decreasing order as it is admitted
  (sparsity never falls with depth: the schedules a nested router can route). Sorting
  keeps the sum and the bounds, so the constraint costs the other guarantees nothing.

The search is (mu + lambda): each generation's candidates are the current parents plus new
offspring; the caller scores them however it likes (e.g. on growing data in stages) and
tells the ranking back; the best ``parents`` become the next parents. The algorithm never
scores anything and imports no Ray, SQL or web code.

DEAP's operators draw from Python's global ``random``; this class swaps its own random state
in around every call, so a search is reproducible from its seed (and resumable from
:meth:`EvolutionarySearch.state`) whatever else uses ``random`` in the process.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from deap import tools

MEAN_TOLERANCE = 1e-9


def repair(values: Sequence[float], target: float, s_max: float) -> list[float]:
    """The feasible float schedule closest to ``values`` (Euclidean projection).

    Finds the shift t with mean(clip(v - t, 0, s_max)) = target by bisection, then moves the
    remaining float error onto entries with room, so the mean is exact to ~1e-15.
    """
    if not 0.0 <= target <= s_max:
        raise ValueError(f"target {target} outside [0, {s_max}]")
    n = len(values)
    goal = target * n
    lo, hi = min(values) - s_max - 1.0, max(values) + 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if math.fsum(min(s_max, max(0.0, v - mid)) for v in values) > goal:
            lo = mid
        else:
            hi = mid
    repaired = [min(s_max, max(0.0, v - (lo + hi) / 2)) for v in values]
    residual = goal - math.fsum(repaired)
    for i in sorted(range(n), key=lambda i: -min(repaired[i], s_max - repaired[i])):
        if residual == 0.0:
            break
        repaired[i] += max(-repaired[i], min(s_max - repaired[i], residual))
        residual = goal - math.fsum(repaired)
    return repaired


def is_feasible(schedule: Sequence[float], target: float, s_max: float) -> bool:
    """Whether ``schedule`` meets the budget: exact mean (1e-9) and bounds [0, s_max]."""
    return abs(math.fsum(schedule) / len(schedule) - target) <= MEAN_TOLERANCE and all(
        0.0 <= s <= s_max + MEAN_TOLERANCE for s in schedule
    )


@dataclass(frozen=True)
class Grid:
    """The lattice of feasible schedules for one budget (see the module docstring)."""

    num_blocks: int
    step: float
    max_level: int
    total: int

    @classmethod
    def for_budget(
        cls, num_blocks: int, target: float, s_max: float, step: float = 0.025
    ) -> "Grid":
        """The grid whose step is the one closest to ``step`` that hits ``target`` exactly
        and can still reach it under ``s_max`` (a finer step when the target is near it)."""
        if not 0.0 <= target <= s_max:
            raise ValueError(f"target {target} outside [0, {s_max}]")
        total = round(target * num_blocks / step)
        if total == 0:
            return cls(num_blocks, step, math.floor(s_max / step + 1e-9), 0)
        while True:
            step = target * num_blocks / total
            max_level = math.floor(s_max / step + 1e-9)
            if total <= max_level * num_blocks:
                return cls(num_blocks, step, max_level, total)
            total += 1

    def schedule(self, levels: Sequence[int]) -> list[float]:
        return [level * self.step for level in levels]

    def is_valid(self, levels: Sequence[int]) -> bool:
        return (
            len(levels) == self.num_blocks
            and sum(levels) == self.total
            and all(0 <= level <= self.max_level for level in levels)
        )

    def from_profile(self, values: Sequence[float]) -> list[int]:
        """The grid point nearest a float profile: project onto the budget, then round by
        largest remainders (never past ``max_level``)."""
        floats = repair(
            values, self.total * self.step / self.num_blocks, self.max_level * self.step
        )
        units = [v / self.step for v in floats]
        levels = [min(self.max_level, math.floor(u + 1e-9)) for u in units]
        by_remainder = sorted(range(self.num_blocks), key=lambda i: levels[i] - units[i])
        for i in by_remainder:
            if sum(levels) >= self.total:
                break
            if levels[i] < self.max_level:
                levels[i] += 1
        return levels


def influence_profile(target: float, block_influence: Sequence[float]) -> list[float]:
    """A float profile with mean ``target`` before projection that skips less where
    ShortGPT's Block Influence is high: s_i ∝ sqrt(mean BI / BI_i)."""
    mean_bi = sum(block_influence) / len(block_influence)
    return [target * math.sqrt(mean_bi / max(bi, 1e-6)) for bi in block_influence]


def influence_schedule(params: GAParams, block_influence: Sequence[float]) -> list[float]:
    """The feasible schedule nearest the Block-Influence profile (the allocation the search
    seeds its population with, and that comparisons put beside the searched one)."""
    grid = Grid.for_budget(params.num_blocks, params.target, params.s_max, params.level_step)
    return grid.schedule(grid.from_profile(influence_profile(params.target, block_influence)))


def move_levels(levels: list[int], grid: Grid, moves: int) -> list[int]:
    """Move one level from a random block to another, ``moves`` times (sum unchanged)."""
    for _ in range(moves):
        donors = [i for i, level in enumerate(levels) if level > 0]
        takers = [i for i, level in enumerate(levels) if level < grid.max_level]
        if not donors or not takers:
            break
        give = random.choice(donors)
        take = random.choice([i for i in takers if i != give] or [give])
        levels[give] -= 1
        levels[take] += 1
    return levels


def repair_levels(levels: list[int], grid: Grid) -> list[int]:
    """Clip to the bounds, then add or remove single levels at random blocks until the sum
    is the grid's total."""
    levels = [min(grid.max_level, max(0, level)) for level in levels]
    while sum(levels) > grid.total:
        levels[random.choice([i for i, level in enumerate(levels) if level > 0])] -= 1
    while sum(levels) < grid.total:
        levels[random.choice([i for i, level in enumerate(levels) if level < grid.max_level])] += 1
    return levels


@dataclass(frozen=True)
class GAParams:
    """The algorithm's knobs (see ``search.config.RunConfig`` for the user-facing names)."""

    num_blocks: int
    target: float
    s_max: float
    level_step: float = 0.025
    offspring: int = 16
    parents: int = 2
    crossover_prob: float = 0.5
    max_moves: int = 3
    seed: int = 0
    monotone: bool = False


class EvolutionarySearch:
    """(mu + lambda) search on a :class:`Grid`; see the module docstring.

    ``ask()`` returns this generation's candidates (parents first); ``tell(ranked)`` takes
    candidates ordered best first (at least ``parents`` of them) and breeds the next
    generation. The first generation is the initial population: uniform, U-shaped profiles,
    depth ramps, an optional Block-Influence-informed profile, then random feasible points.
    """

    def __init__(
        self,
        params: GAParams,
        block_influence: Sequence[float] | None = None,
        seed_parents: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """A fresh search. With ``seed_parents`` (distinct schedules on this grid, e.g. the
        final parents of an earlier search) the first generation is those parents plus
        offspring bred from them, with this search's own random state and no memory of the
        earlier search's candidates; otherwise it is the initial population."""
        self.params = params
        self.grid = Grid.for_budget(
            params.num_blocks, params.target, params.s_max, params.level_step
        )
        self.generation = 0
        # The allocation the Block-Influence profile seeds (kept for reports; None without one).
        self.influence_schedule = (
            influence_schedule(params, block_influence) if block_influence else None
        )
        self._random_state = random.Random(params.seed).getstate()
        self._seen: set[tuple[int, ...]] = set()
        self._parents: list[list[int]] = []
        if seed_parents is None:
            with self._rng():
                self._candidates = self._initial_population(block_influence)
            return
        for schedule in seed_parents:
            levels = [round(s / self.grid.step) for s in schedule]
            if not self._admit(levels, self._parents):
                raise ValueError(
                    "seed parents must be distinct schedules on the search grid"
                    + (" once sorted" if params.monotone else "")
                )
        with self._rng():
            self._candidates = self._parents + self._offspring()

    def ask(self) -> list[list[float]]:
        return [self.grid.schedule(levels) for levels in self._candidates]

    def tell(self, ranked: Sequence[Sequence[float]]) -> None:
        """Take candidates of the last ``ask()``, best first; breed the next generation."""
        by_schedule = {tuple(self.grid.schedule(c)): c for c in self._candidates}
        try:
            best = [by_schedule[tuple(s)] for s in ranked[: self.params.parents]]
        except KeyError:
            raise ValueError("tell() takes schedules from the last ask()") from None
        if len(best) < min(self.params.parents, len(self._candidates)):
            raise ValueError(f"tell() needs the best {self.params.parents} candidates")
        self._parents = best
        with self._rng():
            self._candidates = self._parents + self._offspring()
        self.generation += 1

    @property
    def parents(self) -> list[list[float]]:
        return [self.grid.schedule(levels) for levels in self._parents]

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this search exactly (JSON-serializable)."""
        version, internal, gauss = self._random_state
        return {
            "params": asdict(self.params),
            "generation": self.generation,
            "random_state": [version, list(internal), gauss],
            "seen": sorted(list(s) for s in self._seen),
            "parents": self._parents,
            "candidates": self._candidates,
            "influence_schedule": self.influence_schedule,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "EvolutionarySearch":
        search = cls.__new__(cls)
        search.params = GAParams(**state["params"])
        search.grid = Grid.for_budget(
            search.params.num_blocks,
            search.params.target,
            search.params.s_max,
            search.params.level_step,
        )
        search.generation = state["generation"]
        search.influence_schedule = state.get("influence_schedule")  # absent in older states
        version, internal, gauss = state["random_state"]
        search._random_state = (version, tuple(internal), gauss)
        search._seen = {tuple(s) for s in state["seen"]}
        search._parents = [list(p) for p in state["parents"]]
        search._candidates = [list(c) for c in state["candidates"]]
        return search

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        outside = random.getstate()
        random.setstate(self._random_state)
        try:
            yield
        finally:
            self._random_state = random.getstate()
            random.setstate(outside)

    def _admit(self, levels: list[int], into: list[list[int]]) -> bool:
        if self.params.monotone:
            levels = sorted(levels)
        key = tuple(levels)
        if key in self._seen or not self.grid.is_valid(levels):
            return False
        self._seen.add(key)
        into.append(levels)
        return True

    def _initial_population(self, block_influence: Sequence[float] | None) -> list[list[int]]:
        p, grid = self.params, self.grid
        n, size = p.num_blocks, p.offspring + p.parents
        depth = [i / max(1, n - 1) for i in range(n)]  # 0 .. 1 through the stack
        profiles = [[p.target] * n]
        for edge in (2, 4):  # U shapes: the first and last blocks kept denser
            profiles.append([p.target * min(1.0, 0.5 + min(i, n - 1 - i) / edge) for i in range(n)])
        for slope in (0.5, -0.5):
            profiles.append([p.target * (1 + slope * (d - 0.5)) for d in depth])
        if block_influence:
            profiles.append(influence_profile(p.target, block_influence))
        population: list[list[int]] = []
        for profile in profiles:
            if len(population) < size:
                self._admit(grid.from_profile(profile), population)
        attempts = 0
        while len(population) < size and attempts < 100 * size:
            attempts += 1
            self._admit(repair_levels([0] * n, grid), population)
        return population

    def _offspring(self) -> list[list[int]]:
        p = self.params
        children: list[list[int]] = []
        attempts = 0
        while len(children) < p.offspring and attempts < 100 * p.offspring:
            attempts += 1
            child = list(random.choice(self._parents))
            if len(self._parents) > 1 and random.random() < p.crossover_prob:
                other = list(random.choice(self._parents))
                child, _ = tools.cxUniform(child, other, indpb=0.5)
                child = repair_levels(list(child), self.grid)
            child = move_levels(child, self.grid, random.randint(1, p.max_moves))
            self._admit(child, children)
        return children
