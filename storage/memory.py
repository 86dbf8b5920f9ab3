"""A :class:`~storage.protocol.RunStore` kept in this process's memory: no database, no SQL.

For a search whose records need not outlive the process (tests, throwaway benchmarks). It
keeps every guarantee of :class:`~storage.protocol.RunStore`, within one process: each
write is checked whole before anything changes, under one lock (the coordinator's lease
heartbeat writes from its own thread); reads return deep copies; JSON-valued fields
(configs, schedules, search states, per-sequence sums) are stored as JSON would return
them. Rows are built by the same functions as the SQL store's (:mod:`storage.records`)
and leases follow the same rules (:mod:`storage.leases`). Nothing is kept after the
store is dropped.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Iterable, TypeVar

from storage.engine import StorageError
from storage.leases import Lease, refuse_held, refuse_lost
from storage.protocol import RunStore
from storage.records import (
    EvaluationRecord,
    RunPlan,
    Scored,
    assign,
    evaluation_values,
    generation_exists,
    heldout_values,
    name_taken,
    new_run_values,
    no_run,
    progress_values,
    run_status,
    status_values,
    unnamed_run,
    utcnow,
)

T = TypeVar("T")


@dataclass
class MemoryRun:
    """A run as :class:`MemoryStore` keeps it (a :class:`~storage.protocol.StoredRun`)."""

    id: int
    name: str
    status: str
    config: dict[str, Any]
    seed: int
    code_version: str
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    generations_done: int = 0
    best_fitness: float | None = None
    best_schedule: list[float] | None = None
    error: str | None = None
    model: str | None = None
    target_sparsity: float | None = None
    generations_planned: int | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(frozen=True)
class MemoryEvaluation:
    """An evaluation (a :class:`~storage.protocol.StoredEvaluation`)."""

    run_id: int
    generation: int
    schedule: list[float]
    router: str
    duration_s: float
    worker: str
    fitness: float | None = None
    top1: float | None = None
    ppl: float | None = None
    realized_sparsity: float | None = None
    fidelity: int | None = None
    error: str | None = None
    stage: int | None = None
    sequences: list[int] | None = None
    per_sequence: dict[str, list[float]] | None = None
    forward_tokens: int | None = None


@dataclass(frozen=True)
class MemoryHeldout:
    """A held-out row (a :class:`~storage.protocol.StoredHeldout`)."""

    run_id: int
    label: str
    schedule: list[float]
    router: str
    kl: float
    top1: float
    ppl: float
    realized_sparsity: float


def _as_json(value: T) -> T:
    """``value`` as a JSON column hands it back: tuples become lists, keys strings."""
    result: T = json.loads(json.dumps(value))
    return result


def _json_fields(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``values`` with the fields ``names`` passed through :func:`_as_json`."""
    return {key: _as_json(value) if key in names else value for key, value in values.items()}


class MemoryStore(RunStore):
    """Runs, evaluations, held-out rows, search states and leases in memory (see the module
    docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._runs: dict[int, MemoryRun] = {}
        self._evaluations: dict[int, list[MemoryEvaluation]] = {}
        self._generations: dict[int, set[int]] = {}
        self._heldout: dict[int, list[MemoryHeldout]] = {}
        self._states: dict[int, dict[str, Any]] = {}

    def close(self) -> None:
        """Nothing to release; present so the store is used like the SQL one."""

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, run_id: int) -> MemoryRun:
        run = self._runs.get(run_id)
        if run is None:
            raise no_run(run_id)
        return run

    def _fenced(self, run_id: int, lease: Lease | None) -> MemoryRun:
        """The run, after checking that ``lease`` (if given) is its lease; changes nothing."""
        run = self._run(run_id)
        if lease is not None:
            refuse_lost(run.name, run.lease_owner, lease)
        return run

    @staticmethod
    def _hold(run: MemoryRun, lease: Lease | None) -> None:
        """Make ``lease`` (if given) the run's from now."""
        if lease is not None:
            run.lease_owner, run.lease_expires_at = lease.owner, lease.expiry(utcnow())

    # -- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        name: str | None,
        config: dict[str, Any],
        seed: int,
        lease: Lease | None = None,
        plan: RunPlan | None = None,
    ) -> MemoryRun:
        with self._lock:
            if name and self.run_name_taken(name):
                raise name_taken(name)
            run_id = max(self._runs, default=0) + 1
            values = new_run_values(name or unnamed_run(run_id), _as_json(config), seed, plan)
            run = MemoryRun(id=run_id, **values)
            self._hold(run, lease)
            self._runs[run_id] = run
            self._evaluations[run_id], self._heldout[run_id] = [], []
            self._generations[run_id] = set()
            return copy.deepcopy(run)

    def run_name_taken(self, name: str) -> bool:
        with self._lock:
            return any(run.name == name for run in self._runs.values())

    def find_run(self, ref: str | int) -> MemoryRun:
        with self._lock:
            for run in self._runs.values():
                if run.name == str(ref):
                    return copy.deepcopy(run)
            if str(ref).isdigit() and int(ref) in self._runs:
                return copy.deepcopy(self._runs[int(ref)])
            raise StorageError(f"no run {ref!r} in this process's memory store")

    def record_generation(
        self,
        run_id: int,
        generation: int,
        evaluations: Iterable[Scored | EvaluationRecord],
        best_fitness: float,
        best_schedule: list[float],
        search_state: dict[str, Any] | None = None,
        lease: Lease | None = None,
    ) -> None:
        rows = [
            MemoryEvaluation(
                **_json_fields(
                    evaluation_values(run_id, generation, e),
                    ("schedule", "sequences", "per_sequence"),
                )
            )
            for e in evaluations
        ]
        progress = _json_fields(
            progress_values(generation, best_fitness, best_schedule), ("best_schedule",)
        )
        state = None if search_state is None else _as_json(search_state)
        with self._lock:
            run = self._fenced(run_id, lease)
            if generation in self._generations[run_id]:
                raise generation_exists(run.name, generation)
            self._hold(run, lease)
            self._evaluations[run_id].extend(rows)
            self._generations[run_id].add(generation)
            if state is not None:
                self._states[run_id] = state
            assign(run, progress)

    def add_heldout(
        self, run_id: int, label: str, evaluation: Scored, lease: Lease | None = None
    ) -> None:
        row = MemoryHeldout(
            **_json_fields(heldout_values(run_id, label, evaluation), ("schedule",))
        )
        with self._lock:
            run = self._fenced(run_id, lease)
            self._hold(run, lease)
            self._heldout[run_id].append(row)

    def set_status(
        self, run_id: int, status: str, error: str | None = None, lease: Lease | None = None
    ) -> None:
        with self._lock:
            run = self._fenced(run_id, lease)
            self._hold(run, lease)
            assign(run, status_values(status, error))

    # -- leases ---------------------------------------------------------------------------

    def acquire_lease(self, run_id: int, lease: Lease) -> None:
        with self._lock:
            run, now = self._run(run_id), utcnow()
            refuse_held(run.name, run.lease_owner, run.lease_expires_at, lease, now)
            self._hold(run, lease)

    def renew_lease(self, run_id: int, lease: Lease, retry: bool = True) -> None:
        with self._lock:
            self._hold(self._fenced(run_id, lease), lease)

    def release_lease(self, run_id: int, owner: str) -> None:
        with self._lock:
            run = self._run(run_id)
            if run.lease_owner == owner:
                run.lease_owner = run.lease_expires_at = None

    # -- reads ----------------------------------------------------------------------------

    def evaluations(self, run_id: int) -> list[MemoryEvaluation]:
        with self._lock:
            return copy.deepcopy(self._evaluations.get(run_id, []))

    def heldout(self, run_id: int) -> list[MemoryHeldout]:
        with self._lock:
            return copy.deepcopy(self._heldout.get(run_id, []))

    def search_state(self, run_id: int) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._states.get(run_id))

    def run_totals(self, run_id: int) -> dict[str, int]:
        with self._lock:
            rows = self._evaluations.get(run_id, [])
            tokens = sum(row.forward_tokens or 0 for row in rows)
            return {"evaluations": len(rows), "forward_tokens": tokens}

    def run_status(self, ref: str | int) -> dict[str, Any]:
        with self._lock:
            run = self.find_run(ref)
            rows = self._evaluations[run.id]
            return run_status(run, len(rows), sum(row.error is not None for row in rows))
