"""The evolutionary search keeps every schedule exactly within the budget, never repeats a
schedule, and is reproducible and resumable from its state."""

from __future__ import annotations

import json
import math
import random

import pytest

from search.ga import (
    EvolutionarySearch,
    GAParams,
    Grid,
    influence_schedule,
    is_feasible,
    move_levels,
    repair,
    repair_levels,
)


def test_repair_meets_budget_on_thousands_of_random_vectors():
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.randint(2, 64)
        s_max = rng.uniform(0.1, 0.95)
        target = rng.uniform(0.0, s_max)
        repaired = repair([rng.uniform(-1.0, 2.0) for _ in range(n)], target, s_max)
        assert abs(math.fsum(repaired) / n - target) <= 1e-9
        assert all(0.0 <= s <= s_max for s in repaired)


def test_repair_rejects_impossible_targets():
    with pytest.raises(ValueError):
        repair([0.1, 0.2], 0.9, 0.8)


@pytest.mark.parametrize(
    "blocks,target,s_max,step",
    [
        (30, 0.3, 0.8, 0.025),
        (32, 0.22, 0.9, 0.025),
        (7, 0.37, 0.6, 0.05),
        (24, 0.0, 0.5, 0.1),
        (16, 0.5, 0.5, 0.025),
    ],
)
def test_grid_schedules_hit_the_target_exactly(blocks, target, s_max, step):
    grid = Grid.for_budget(blocks, target, s_max, step)
    assert grid.max_level * grid.step <= s_max + 1e-12
    levels = grid.from_profile([target] * blocks)
    assert grid.is_valid(levels)
    assert is_feasible(grid.schedule(levels), target, s_max)


def test_operators_keep_mean_and_bounds_over_thousands_of_applications():
    rng = random.Random(11)
    for trial in range(40):
        blocks = rng.randint(2, 40)
        s_max = rng.uniform(0.3, 0.95)
        target = rng.uniform(0.0, s_max)
        grid = Grid.for_budget(blocks, target, s_max, rng.choice([0.01, 0.025, 0.05]))
        random.seed(trial)
        a = repair_levels([0] * blocks, grid)
        b = grid.from_profile([rng.uniform(0, 1) for _ in range(blocks)])
        for _ in range(100):
            a = move_levels(a, grid, random.randint(1, 5))
            mixed = [x if random.random() < 0.5 else y for x, y in zip(a, b, strict=True)]
            child = repair_levels(mixed, grid)
            b = repair_levels([level + random.randint(-3, 3) for level in child], grid)
            for levels in (a, child, b):
                assert grid.is_valid(levels)
                assert is_feasible(grid.schedule(levels), target, s_max)


def test_move_mutation_changes_exactly_two_blocks_by_one_level():
    grid = Grid.for_budget(10, 0.3, 0.8, 0.05)
    random.seed(0)
    before = grid.from_profile([0.3] * 10)
    after = move_levels(list(before), grid, moves=1)
    diffs = sorted(a - b for a, b in zip(after, before, strict=True) if a != b)
    assert diffs == [-1, 1]


def _run(params: GAParams, generations: int, fitness, search=None):
    search = search or EvolutionarySearch(params)
    history = []
    for _ in range(generations):
        candidates = search.ask()
        history.append(candidates)
        search.tell(sorted(candidates, key=fitness))
    return search, history


def test_every_candidate_feasible_and_never_repeated():
    params = GAParams(num_blocks=30, target=0.3, s_max=0.8, offspring=16, parents=2, seed=1)
    _, history = _run(params, 30, lambda s: sum((x - 0.3 * (i % 3)) ** 2 for i, x in enumerate(s)))
    offspring_seen = set()
    for generation, candidates in enumerate(history):
        assert len(candidates) == (18 if generation == 0 else 18)
        for schedule in candidates:
            assert is_feasible(schedule, 0.3, 0.8)
        new = candidates if generation == 0 else candidates[2:]
        for schedule in new:
            assert tuple(schedule) not in offspring_seen
            offspring_seen.add(tuple(schedule))


def test_initial_population_holds_uniform_profiles_and_block_influence():
    influence = [0.5] + [0.05] * 6 + [0.4]
    search = EvolutionarySearch(
        GAParams(num_blocks=8, target=0.25, s_max=0.6, offspring=10, parents=2, level_step=0.025),
        influence,
    )
    population = search.ask()
    assert population[0] == pytest.approx([0.25] * 8)
    assert len({tuple(s) for s in population}) == 12
    bi_profile = population[5]  # after uniform, two U shapes and two ramps
    assert bi_profile[0] < 0.25 and bi_profile[-1] < 0.25  # influential blocks skip less


def test_search_improves_a_simple_objective():
    goal = [0.1, 0.5, 0.2, 0.6, 0.1, 0.3]

    def distance(s):
        return sum((a - b) ** 2 for a, b in zip(s, goal, strict=True))

    params = GAParams(num_blocks=6, target=0.3, s_max=0.8, offspring=12, seed=0)
    _, history = _run(params, 25, distance)
    assert min(map(distance, history[-1])) < min(map(distance, history[0])) / 4


def test_same_seed_same_search_and_global_random_untouched():
    params = GAParams(num_blocks=10, target=0.3, s_max=0.8, offspring=8, seed=42)
    random.seed(123)
    before = random.random()
    random.seed(123)
    _, a = _run(params, 5, _tilt)
    assert random.random() == before
    _, b = _run(params, 5, _tilt)
    assert a == b
    _, c = _run(GAParams(**{**params.__dict__, "seed": 43}), 5, _tilt)
    assert a != c


def test_state_round_trips_through_json_and_resumes_identically():
    params = GAParams(num_blocks=12, target=0.3, s_max=0.8, offspring=8, seed=5)
    search, _ = _run(params, 3, _tilt)
    restored = EvolutionarySearch.from_state(json.loads(json.dumps(search.state())))
    assert restored.state() == json.loads(json.dumps(search.state()))
    _, continued = _run(params, 4, _tilt, search)
    _, resumed = _run(params, 4, _tilt, restored)
    assert continued == resumed
    _, uninterrupted = _run(params, 7, _tilt)
    assert uninterrupted[3:] == continued


def test_state_keeps_the_block_influence_allocation():
    params = GAParams(num_blocks=6, target=0.3, s_max=0.8, offspring=8, seed=1)
    influence = [0.9, 0.1, 0.2, 0.2, 0.3, 0.05]
    search = EvolutionarySearch(params, influence)
    allocation = search.state()["influence_schedule"]
    assert allocation == influence_schedule(params, influence)
    assert abs(sum(allocation) / 6 - 0.3) < 1e-9 and allocation[0] < allocation[5]
    assert allocation in search.ask()  # the population is seeded with it
    assert EvolutionarySearch(params).state()["influence_schedule"] is None


def test_tell_rejects_unknown_schedules():
    search = EvolutionarySearch(GAParams(num_blocks=4, target=0.3, s_max=0.8, offspring=4))
    with pytest.raises(ValueError):
        search.tell([[0.3, 0.3, 0.3, 0.3001]])


def _tilt(schedule):
    return schedule[0] - schedule[-1] + 0.1 * schedule[1]


def test_a_monotone_search_hands_out_only_feasible_non_decreasing_schedules():
    goal = [0.0, 0.0, 0.2, 0.3, 0.5, 0.8]  # non-decreasing, mean 0.3

    def distance(s):
        return sum((a - b) ** 2 for a, b in zip(s, goal, strict=True))

    params = GAParams(num_blocks=6, target=0.3, s_max=0.8, offspring=12, seed=0, monotone=True)
    search, history = _run(params, 25, distance)
    seen = set()
    for generation, candidates in enumerate(history):
        for schedule in candidates if generation == 0 else candidates[2:]:
            assert is_feasible(schedule, 0.3, 0.8)
            assert schedule == sorted(schedule)
            assert tuple(schedule) not in seen
            seen.add(tuple(schedule))
    assert min(map(distance, history[-1])) < min(map(distance, history[0])) / 4
    resumed = EvolutionarySearch.from_state(json.loads(json.dumps(search.state())))
    assert resumed.params.monotone and resumed.ask() == search.ask()
    free = EvolutionarySearch(GAParams(num_blocks=6, target=0.3, s_max=0.8, seed=0))
    assert any(s != sorted(s) for s in free.ask())
