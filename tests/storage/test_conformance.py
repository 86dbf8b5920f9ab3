"""The conformance suite of :class:`storage.RunStore`: every guarantee its docstrings state,
checked on each backend that implements it (SQLite, PostgreSQL, the in-memory store)."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Iterator

import pytest

from storage import (
    EvaluationRecord,
    GenerationExists,
    LeaseHeld,
    LeaseLost,
    MemoryStore,
    RunPlan,
    RunStore,
    StorageError,
    Store,
)
from storage.leases import Lease, machine_key, new_owner, owner_gone
from tests.storage.helpers import Metrics, scored

BACKENDS = ("sqlite", "postgresql", "memory")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Iterator[RunStore]:
    """An empty store of each backend in turn."""
    if request.param == "memory":
        yield MemoryStore()
        return
    with Store(request.getfixturevalue(f"{request.param}_url")) as sql:
        yield sql


def _foreign(tag: str) -> str:
    """An owner id of a coordinator on another machine (never declared gone)."""
    return f"elsewhere-{tag}/1/000000000000/{tag}"


def _record(schedule: list[float], kl: float | None, error: str | None = None) -> EvaluationRecord:
    return EvaluationRecord(
        schedule=schedule,
        router="static",
        metrics=None if kl is None else Metrics(kl=kl),
        duration_s=0.2,
        worker="w:1",
        stage=1,
        sequences=[0, 3],
        per_sequence={} if kl is None else {"3": [0.5, 7, 9.25, 8, 10, 12, 64]},
        forward_tokens=0 if kl is None else 64,
        error=error,
    )


def _snapshot(store: RunStore, run_id: int) -> tuple:
    status = store.run_status(run_id)
    rows = [(e.generation, e.schedule, e.fitness) for e in store.evaluations(run_id)]
    return status["status"], status["generations"], status["lease_owner"], rows


class TestRunStore:
    """One class, run against every backend (the ``store`` fixture)."""

    def test_a_run_is_created_running_and_found_by_name_or_id(self, store: RunStore) -> None:
        run = store.create_run("alpha", {"generations": 2, "nested": {"k": [1]}}, 7)
        assert (run.name, run.status, run.seed, run.generations_done) == ("alpha", "running", 7, 0)
        assert run.best_fitness is None and run.best_schedule is None and run.error is None
        assert run.created_at is not None and run.finished_at is None
        for ref in ("alpha", run.id, str(run.id)):
            found = store.find_run(ref)
            assert (found.id, found.name) == (run.id, "alpha")
            assert found.config == {"generations": 2, "nested": {"k": [1]}}
        assert store.run_name_taken("alpha") and not store.run_name_taken("beta")

    def test_a_runs_plan_is_what_storage_reports_and_its_config_is_never_read(
        self, store: RunStore
    ) -> None:
        config = {"model": "other", "target_sparsity": 0.9, "generations": 99}
        run = store.create_run("planned", config, 0, plan=RunPlan("m", 0.3, 4))
        assert (run.model, run.target_sparsity, run.generations_planned) == ("m", 0.3, 4)
        status = store.run_status("planned")
        plan = (status["model"], status["target_sparsity"], status["generations_planned"])
        assert plan == ("m", 0.3, 4) and store.find_run("planned").config == config
        store.create_run("unplanned", config, 0)
        unplanned = store.run_status("unplanned")
        assert unplanned["model"] is None and unplanned["target_sparsity"] is None
        assert unplanned["generations_planned"] is None

    def test_unnamed_runs_are_named_after_their_id(self, store: RunStore) -> None:
        first, second = store.create_run(None, {}, 0), store.create_run(None, {}, 0)
        assert first.id != second.id
        assert (first.name, second.name) == (f"run-{first.id}", f"run-{second.id}")
        assert store.find_run(f"run-{second.id}").id == second.id

    def test_a_taken_name_and_a_missing_run_are_one_line_errors(self, store: RunStore) -> None:
        store.create_run("dup", {}, 0)
        with pytest.raises(StorageError, match="already exists"):
            store.create_run("dup", {}, 0)
        with pytest.raises(StorageError, match="no run") as missing:
            store.find_run("nope")
        assert "\n" not in str(missing.value)
        for write in (
            lambda: store.set_status(999, "finished"),
            lambda: store.record_generation(999, 0, [], 0.1, [0.1]),
            lambda: store.add_heldout(999, "best", scored(0.1, [0.1])),
            lambda: store.acquire_lease(999, Lease(new_owner(), 30.0)),
        ):
            with pytest.raises(StorageError, match="no run with id 999"):
                write()
        assert store.evaluations(999) == [] and store.search_state(999) is None

    def test_a_generation_stores_its_evaluations_progress_and_state(self, store: RunStore) -> None:
        run = store.create_run("gen", {}, 0)
        assert store.search_state(run.id) is None
        assert store.run_totals(run.id) == {"evaluations": 0, "forward_tokens": 0}
        state = {"generation": 1, "random_state": (3, (1, 2, 3), None), "seen": {1: [0.2]}}
        batch = [_record([0.2, 0.4], 0.25), scored(0.3, [0.3, 0.3])]
        store.record_generation(run.id, 0, batch, 0.25, [0.2, 0.4], state)
        store.record_generation(run.id, 1, [_record([0.1, 0.5], 0.2)], 0.2, [0.1, 0.5])
        # JSON comes back as JSON gives it; a generation without a state keeps the last one
        assert store.search_state(run.id) == {
            "generation": 1,
            "random_state": [3, [1, 2, 3], None],
            "seen": {"1": [0.2]},
        }
        assert store.run_totals(run.id) == {"evaluations": 3, "forward_tokens": 128}
        detailed, plain, last = store.evaluations(run.id)
        assert [e.generation for e in (detailed, plain, last)] == [0, 0, 1]
        assert (detailed.schedule, detailed.fitness, detailed.fidelity) == ([0.2, 0.4], 0.25, 64)
        assert (detailed.stage, detailed.sequences, detailed.forward_tokens) == (1, [0, 3], 64)
        assert detailed.per_sequence == {"3": [0.5, 7, 9.25, 8, 10, 12, 64]}
        assert (detailed.top1, detailed.ppl, detailed.realized_sparsity) == (0.9, 10.0, 0.3)
        assert (detailed.router, detailed.worker, detailed.duration_s) == ("static", "w:1", 0.2)
        assert (plain.stage, plain.sequences, plain.per_sequence, plain.forward_tokens) == (
            (None,) * 4
        )
        progress = store.find_run(run.id)
        assert progress.generations_done == 2
        assert (progress.best_fitness, progress.best_schedule) == (0.2, [0.1, 0.5])
        status = store.run_status("gen")
        assert (status["generations"], status["evaluations"], status["failed_evaluations"]) == (
            2,
            3,
            0,
        )
        assert (status["best_fitness"], status["best_schedule"]) == (0.2, [0.1, 0.5])

    def test_failed_evaluations_keep_their_reason_and_no_metrics(self, store: RunStore) -> None:
        run = store.create_run("failing", {}, 0)
        reason = "OutOfMemoryError: CUDA out of memory " + "x" * 3000
        batch = [_record([0.1, 0.5], None, reason), _record([0.3, 0.3], 0.4)]
        store.record_generation(run.id, 0, batch, 0.4, [0.3, 0.3])
        failed, ok = store.evaluations(run.id)
        assert failed.error == reason[:2000] and ok.error is None
        assert (failed.fitness, failed.top1, failed.ppl, failed.fidelity) == (None,) * 4
        assert failed.realized_sparsity is None and ok.fitness == 0.4
        status = store.run_status(run.id)
        assert (status["evaluations"], status["failed_evaluations"]) == (2, 1)

    def test_a_generation_is_recorded_once(self, store: RunStore) -> None:
        run = store.create_run("twice", {}, 0)
        store.record_generation(run.id, 0, [scored(0.5, [0.3])], 0.5, [0.3], {"g": 1})
        with pytest.raises(GenerationExists, match="already holds generation 0") as again:
            store.record_generation(run.id, 0, [scored(0.4, [0.2])], 0.4, [0.2], {"g": 2})
        assert "\n" not in str(again.value) and isinstance(again.value, StorageError)
        assert [e.fitness for e in store.evaluations(run.id)] == [0.5]
        assert store.find_run("twice").best_fitness == 0.5
        assert store.search_state(run.id) == {"g": 1}

    def test_held_out_rows_and_the_status_through_to_the_end(self, store: RunStore) -> None:
        run = store.create_run("end", {}, 0)
        store.add_heldout(run.id, "best", scored(0.35, [0.1, 0.5]))
        store.add_heldout(run.id, "uniform", scored(0.55, [0.3, 0.3]))
        best, uniform = store.heldout(run.id)
        assert (best.label, best.schedule, best.router, best.kl) == (
            "best",
            [0.1, 0.5],
            "static",
            0.35,
        )
        assert (best.top1, best.ppl, best.realized_sparsity) == (0.9, 10.0, 0.3)
        assert (uniform.label, uniform.kl) == ("uniform", 0.55)
        store.set_status(run.id, "failed", "boom " + "y" * 3000)
        failed = store.find_run(run.id)
        assert failed.status == "failed" and failed.error == ("boom " + "y" * 3000)[:2000]
        assert failed.finished_at is not None
        store.set_status(run.id, "running")
        assert store.find_run(run.id).error is None
        store.set_status(run.id, "finished")
        status = store.run_status(run.id)
        assert status["status"] == "finished" and status["finished_at"] is not None
        assert status["error"] is None and status["run"] == "end" and status["id"] == run.id

    def test_reads_are_snapshots(self, store: RunStore) -> None:
        run = store.create_run("snap", {"k": [1]}, 0)
        store.record_generation(run.id, 0, [scored(0.5, [0.3])], 0.5, [0.3], {"s": [1]})
        before, rows, state = (
            store.find_run(run.id),
            store.evaluations(run.id),
            store.search_state(run.id),
        )
        store.record_generation(run.id, 1, [scored(0.4, [0.2])], 0.4, [0.2], {"s": [2]})
        assert before.generations_done == 1 and len(rows) == 1 and state == {"s": [1]}
        before.config["k"].append(2)
        rows[0].schedule.append(9.0)
        assert state is not None
        state["s"].append(3)
        assert store.find_run(run.id).config == {"k": [1]}
        assert [e.schedule for e in store.evaluations(run.id)] == [[0.3], [0.2]]
        assert store.search_state(run.id) == {"s": [2]}

    def test_a_live_lease_refuses_a_second_owner_in_one_line_and_changes_nothing(
        self, store: RunStore
    ) -> None:
        first = Lease(_foreign("a"), 30.0)
        run = store.create_run("leased", {}, 0, first)
        store.record_generation(run.id, 0, [scored(0.5, [0.3])], 0.5, [0.3], lease=first)
        before = _snapshot(store, run.id)
        assert before[2] == first.owner
        with pytest.raises(LeaseHeld) as refused:
            store.acquire_lease(run.id, Lease(new_owner(), 30.0))
        message = str(refused.value)
        assert "\n" not in message and "elsewhere-a pid 1" in message and "'leased'" in message
        assert "s from now" in message
        assert _snapshot(store, run.id) == before

    def test_an_expired_lease_is_taken_over_and_fences_its_old_owner(self, store: RunStore) -> None:
        old = Lease(_foreign("old"), 0.5)
        run = store.create_run("expiring", {}, 0, old)
        store.record_generation(run.id, 0, [scored(0.5, [0.3])], 0.5, [0.3], lease=old)
        time.sleep(0.8)
        new = Lease(new_owner(), 30.0)
        store.acquire_lease(run.id, new)
        before = _snapshot(store, run.id)
        assert before[2] == new.owner
        with pytest.raises(LeaseLost, match="no longer driven by this coordinator"):
            store.record_generation(run.id, 1, [scored(0.4, [0.2])], 0.4, [0.2], lease=old)
        with pytest.raises(LeaseLost):
            store.renew_lease(run.id, old)
        with pytest.raises(LeaseLost):
            store.set_status(run.id, "failed", "stale coordinator", lease=old)
        with pytest.raises(LeaseLost):
            store.add_heldout(run.id, "best", scored(0.4, [0.2]), lease=old)
        store.release_lease(run.id, old.owner)  # not its lease any more: nothing changes
        assert _snapshot(store, run.id) == before and store.heldout(run.id) == []
        store.record_generation(run.id, 1, [scored(0.4, [0.2])], 0.4, [0.2], lease=new)
        assert store.run_status(run.id)["generations"] == 2

    def test_renewal_pushes_the_expiry_and_release_frees_the_run(self, store: RunStore) -> None:
        lease = Lease(new_owner(), 1.0)
        run = store.create_run("renewed", {}, 0, lease)
        first = store.run_status(run.id)["lease_expires_at"]
        time.sleep(0.05)
        store.acquire_lease(run.id, lease)  # re-acquiring one's own lease renews it
        second = store.run_status(run.id)["lease_expires_at"]
        time.sleep(0.05)
        store.renew_lease(run.id, lease)
        third = store.run_status(run.id)["lease_expires_at"]
        assert first < second < third
        with pytest.raises(LeaseHeld):
            store.acquire_lease(run.id, Lease(new_owner(), 1.0))
        store.release_lease(run.id, lease.owner)
        status = store.run_status(run.id)
        assert status["lease_owner"] is None and status["lease_expires_at"] is None
        store.acquire_lease(run.id, Lease(new_owner(), 1.0))

    def test_the_lease_of_an_exited_process_on_this_machine_is_taken_at_once(
        self, store: RunStore
    ) -> None:
        exited = subprocess.Popen(["true"])
        exited.wait()
        dead = f"{socket.gethostname()}/{exited.pid}/{machine_key()}/x"
        alive = new_owner()  # this test's own process
        assert owner_gone(dead) and not owner_gone(alive) and not owner_gone(_foreign("z"))
        run = store.create_run("orphan", {}, 0, Lease(dead, 300.0))
        store.acquire_lease(run.id, Lease(alive, 30.0))
        assert store.run_status(run.id)["lease_owner"] == alive
        with pytest.raises(LeaseHeld):
            store.acquire_lease(run.id, Lease(new_owner(), 30.0))
