"""The storage seam of a search: :class:`RunStore`, the interface every store implements;
its docstrings state the guarantees and what each method raises. What it hands back are
the read-only shapes of :mod:`storage.records`."""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

from storage.leases import Lease
from storage.records import (
    EvaluationRecord,
    RunPlan,
    Scored,
    StoredEvaluation,
    StoredHeldout,
    StoredRun,
)


class RunStore(Protocol):
    """The storage a search runs against: what :mod:`search` depends on, whatever keeps
    the data (:class:`storage.store.Store` on SQLite or PostgreSQL,
    :class:`storage.memory.MemoryStore` in one process's memory). One conformance suite
    (``tests/storage/test_conformance.py``) checks every guarantee on every backend.

    Guarantees of every implementation:

    - Each write is one transaction: it lands whole or not at all, and a write that raises
      has changed nothing.
    - Runs are addressed by id or by unique name; a run named ``run-<id>`` is one created
      without a name.
    - Reads return snapshots (see the module docstring) in the order the rows were written.
    - A write given a :class:`storage.leases.Lease` lands only while that lease is the run's
      (:func:`storage.leases.refuse_lost`), and renews it; otherwise it raises
      :class:`storage.leases.LeaseLost` and writes nothing.
    - Messages of the errors raised are one line, without passwords.

    Every method may raise :class:`storage.engine.StorageError`; a store that reaches its
    data over a network raises :class:`storage.engine.DatabaseUnavailable` (a
    ``StorageError``), having written nothing, once its retry budget is spent.
    """

    def create_run(
        self,
        name: str | None,
        config: dict[str, Any],
        seed: int,
        lease: Lease | None = None,
        plan: RunPlan | None = None,
    ) -> StoredRun:
        """Insert a run in status ``running`` with ``config`` (kept whole, never read) and
        ``seed``, holding ``lease`` if given, and return it; ``plan`` is what the run's
        ``model``, ``target_sparsity`` and ``generations_planned`` say (None where not
        given). A run without ``name`` is named ``run-<id>``. Raises :class:`StorageError`
        if ``name`` is taken."""
        ...

    def run_name_taken(self, name: str) -> bool:
        """Whether a run is named ``name``."""
        ...

    def find_run(self, ref: str | int) -> StoredRun:
        """The run named ``ref``, else the run with id ``ref``; :class:`StorageError` if
        there is none."""
        ...

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
        """Store generation ``generation`` of the run at once: its evaluations (a failed one
        with its reason and no metrics), the run's progress (``generations_done`` becomes
        ``generation + 1``, the best fitness and schedule) and, if given, the search state
        to resume from (replacing the last one). Raises :class:`GenerationExists` if the run
        already holds that generation, :class:`StorageError` if there is no such run, and
        with ``lease`` :class:`LeaseLost`, writing nothing in each case."""
        ...

    def add_heldout(
        self, run_id: int, label: str, evaluation: Scored, lease: Lease | None = None
    ) -> None:
        """Store the held-out window metrics of ``evaluation``'s schedule under ``label``
        (with ``lease``, only while it is the run's)."""
        ...

    def set_status(
        self, run_id: int, status: str, error: str | None = None, lease: Lease | None = None
    ) -> None:
        """Set the run's status and error (cut to :data:`storage.records.MESSAGE_CHARS`;
        None clears it); any status but ``running`` also sets ``finished_at``. With
        ``lease``, only while it is the run's."""
        ...

    def acquire_lease(self, run_id: int, lease: Lease) -> None:
        """Make ``lease`` the run's, expiring ``lease.duration_s`` from now; re-acquiring
        one's own lease renews it. Raises :class:`LeaseHeld` (one line: who, until when)
        while another owner's lease is live (:func:`storage.leases.refuse_held`)."""
        ...

    def renew_lease(self, run_id: int, lease: Lease, retry: bool = True) -> None:
        """Push the lease's expiry ``lease.duration_s`` past now; :class:`LeaseLost` if the
        run's lease is no longer ``lease.owner``'s. ``retry=False``: a store that retries
        lost connections tries once (a heartbeat tries again at its next beat)."""
        ...

    def release_lease(self, run_id: int, owner: str) -> None:
        """Clear the run's lease if ``owner`` holds it; otherwise change nothing."""
        ...

    def evaluations(self, run_id: int) -> Sequence[StoredEvaluation]:
        """The run's evaluations, in the order recorded."""
        ...

    def heldout(self, run_id: int) -> Sequence[StoredHeldout]:
        """The run's held-out rows, in the order recorded."""
        ...

    def search_state(self, run_id: int) -> dict[str, Any] | None:
        """The search state stored with the run's last generation; None before one."""
        ...

    def run_totals(self, run_id: int) -> dict[str, int]:
        """``evaluations``: the run's stored evaluations; ``forward_tokens``: what they
        cost (0 where not recorded)."""
        ...

    def run_status(self, ref: str | int) -> dict[str, Any]:
        """The status summary of the run ``ref`` (:func:`storage.records.run_status`), as
        ``ftprune search status --json`` prints it; :class:`StorageError` if none."""
        ...
