"""The search engine end to end on a tiny model: stages and fidelity, the fitness cache,
a worker killed mid-generation, and a coordinator killed mid-run that resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.config import build_config
from search.coordinator import launch, run_search
from search.settings import scorer_settings
from storage import MemoryStore, RunStore, Store
from workers import Scorer
from workers.pool import LocalPool, RayPool

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"


def _rows(store: RunStore, run_id: int) -> list[tuple]:
    return sorted(
        (r.generation, r.stage, tuple(r.schedule), r.fitness) for r in store.evaluations(run_id)
    )


def test_stages_record_fidelity_and_cache_never_changes_a_result():
    config = build_config(TINY, generations=3)
    store = MemoryStore()  # bookkeeping only: what the store guarantees is tested in storage
    run = store.create_run("cache", config.model_dump(), config.seed)
    settings = scorer_settings(config)
    with LocalPool(settings) as pool:
        progress = run_search(config, store, pool, run.id, show_progress=False)
    assert progress.cache_hits > 0
    rows = store.evaluations(run.id)
    assert {r.stage for r in rows} == {0, 1}
    assert {len(r.sequences) for r in rows} == {2, 6}
    assert all(r.fidelity == len(r.sequences) * config.window for r in rows)
    # Later stages extend earlier stages' data: a record holds, and its forward tokens
    # count, exactly the sequences its candidate was never scored on before (in an earlier
    # stage or generation), sequence lengths differing so a wrong set cannot sum the same.
    fresh = Scorer(settings)
    tokens = [len(seq) - 1 for seq in fresh.comparator("calibration").sequences]
    assert len(set(tokens)) > 1
    scored: dict[tuple[float, ...], set[int]] = {}
    moved_up = 0
    for r in sorted(rows, key=lambda r: (r.generation, r.stage)):
        before = scored.setdefault(tuple(r.schedule), set())
        new = set(r.sequences) - before
        assert new and {int(i) for i in r.per_sequence} == new
        assert r.forward_tokens == sum(tokens[i] for i in new)
        moved_up += r.stage == 1 and len(new) < len(r.sequences)
        before |= new
    assert moved_up > 0  # some candidates reused their first stage's sequences
    for r in rows:
        direct = fresh.score(r.schedule, sequences=r.sequences).fitness
        assert r.fitness == pytest.approx(direct, rel=1e-4, abs=1e-7)
    keys = [(r.generation, r.stage, tuple(r.schedule)) for r in rows]
    assert len(keys) == len(set(keys))


def test_parents_skip_the_screen_so_the_best_never_gets_worse():
    """A one-sequence screen keeping two of ten candidates would drop a parent whenever two
    offspring happen to beat it there; parents compete only on the final stage's data
    (every sequence), so no generation's best is worse than the previous one's."""
    config = build_config(
        TINY,
        generations=6,
        offspring=10,
        run_name="elitism",
        stages=[{"sequences": 1, "keep": 2}, {"sequences": 6, "keep": 2}],
    )
    store = MemoryStore()
    run = store.create_run("elitism", config.model_dump(), config.seed)
    settings = scorer_settings(config)
    bests: list[list[float]] = []
    with LocalPool(settings) as pool:
        run_search(
            config,
            store,
            pool,
            run.id,
            show_progress=False,
            after_generation=lambda generation, best, tokens: bests.append(best),
        )
    scorer = Scorer(settings)
    fitness = [scorer.score(best, sequences=list(range(6))).fitness for best in bests]
    assert len(fitness) == config.generations
    assert all(
        later <= earlier + 1e-9 for earlier, later in zip(fitness, fitness[1:], strict=False)
    )


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
@pytest.mark.fault
def test_killed_worker_is_replaced_and_every_candidate_recorded_once(db_url):
    config = build_config(TINY, pool="ray", workers=2, run_name="kill-worker", generations=2)

    class KillingPool(RayPool):
        victim: int | None = None

        def evaluate(self, requests, on_result=None):
            def kill_once(result):
                if self.victim is None:
                    self.victim = self.worker_pids_at_start[0]
                    os.kill(self.victim, signal.SIGKILL)
                if on_result:
                    on_result(result)

            return super().evaluate(requests, kill_once)

    pool = KillingPool(scorer_settings(config), workers=2)
    pool.worker_pids_at_start = pool.worker_pids()
    keeps_defaults = os.environ.get("FTPRUNE_HEAP", "").lower() == "default"
    assert pool.worker_heaps() == ["default" if keeps_defaults else "tuned"] * 2
    store = Store(db_url)
    try:
        outcome = launch(config, store, show_progress=False, pool=pool)
    finally:
        pool.close()
    assert pool.replaced >= 1
    reference = Store(db_url.replace("ftprune.db", "reference.db"))
    expected = launch(config.model_copy(update={"pool": "local"}), reference, False)
    got, want = _rows(store, outcome.run_id), _rows(reference, expected.run_id)
    assert [row[:3] for row in got] == [row[:3] for row in want]  # each candidate once
    assert [row[3] for row in got] == pytest.approx([row[3] for row in want], rel=1e-5)
    assert outcome.search.best_schedule == expected.search.best_schedule


@pytest.mark.fault
def test_coordinator_killed_mid_run_resumes_to_the_identical_result(tmp_path):
    killed_db = f"sqlite:///{tmp_path / 'killed.db'}"
    command = [
        sys.executable,
        "-m",
        "ftprune.cli",
        "search",
        "launch",
        "--config",
        str(TINY),
        "--generations",
        "6",
        "--run-name",
        "crash",
        "--db",
        killed_db,
        "--quiet",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    store = None
    while time.monotonic() < deadline:
        if (tmp_path / "killed.db").exists():
            store = store or Store(killed_db, create=False)
            try:
                if store.run_status("crash")["generations"] >= 2:
                    break
            except Exception:
                pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    status = store.run_status("crash")
    assert status["status"] == "running" and 2 <= status["generations"] < 6
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftprune.cli",
            "search",
            "resume",
            "crash",
            "--db",
            killed_db,
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr

    config = build_config(TINY, generations=6, run_name="reference")
    reference = Store(f"sqlite:///{tmp_path / 'reference.db'}")
    expected = launch(config, reference, show_progress=False)
    final = store.run_status("crash")
    assert final["status"] == "finished" and final["generations"] == 6
    assert final["best_schedule"] == expected.search.best_schedule
    assert final["best_fitness"] == expected.search.best_fitness
    run_id = store.find_run("crash").id
    assert _rows(store, run_id) == _rows(reference, expected.run_id)


def test_a_search_says_what_it_is_doing_while_it_waits(capsys):
    """With progress shown, every stretch of work says what it is: Block Influence's dense
    pass, each stage's candidates, the held-out scoring of the result."""
    config = build_config(TINY, generations=1, run_name="shown")
    launch(config, MemoryStore(), show_progress=True)
    captured = capsys.readouterr()
    err = captured.out + captured.err  # tqdm.write's lines go to stdout, the bars to stderr
    assert "Block Influence of 4 blocks: one dense pass over 6 calibration sequences" in err
    assert "generation 1 stage 1" in err and "generation 1/1:" in err
    assert "held-out text: best and uniform" in err
