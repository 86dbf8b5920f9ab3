"""Run leases on SQLite and PostgreSQL: one coordinator per run, refusal while the lease is
live, take-over after expiry or once the owner's process here is gone, and fenced writes
from a coordinator that lost its lease."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from storage import Store
from storage.leases import Lease, machine_key, new_owner, owner_gone
from storage.store import LeaseHeld, LeaseLost
from tests.storage.helpers import scored


def _foreign(tag: str) -> str:
    """An owner id of a coordinator on another machine (never declared gone)."""
    return f"elsewhere-{tag}/1/000000000000/{tag}"


def _snapshot(store: Store, run_id: int) -> tuple:
    status = store.run_status(run_id)
    rows = [(e.generation, e.schedule, e.fitness) for e in store.evaluations(run_id)]
    return status["status"], status["generations"], status["lease_owner"], rows


def test_a_live_lease_refuses_a_second_owner_in_one_line_and_changes_nothing(db_url):
    store = Store(db_url)
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


def test_an_expired_lease_is_taken_over_and_fences_its_old_owner(db_url):
    store = Store(db_url)
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


def test_renewal_pushes_the_expiry_and_release_frees_the_run(db_url):
    store = Store(db_url)
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


def test_the_lease_of_an_exited_process_on_this_machine_is_taken_at_once(db_url):
    exited = subprocess.Popen(["true"])
    exited.wait()
    dead = f"{socket.gethostname()}/{exited.pid}/{machine_key()}/x"
    alive = new_owner()  # this test's own process
    assert owner_gone(dead) and not owner_gone(alive) and not owner_gone(_foreign("z"))
    store = Store(db_url)
    run = store.create_run("orphan", {}, 0, Lease(dead, 300.0))
    store.acquire_lease(run.id, Lease(alive, 30.0))
    assert store.run_status(run.id)["lease_owner"] == alive
    with pytest.raises(LeaseHeld):
        store.acquire_lease(run.id, Lease(new_owner(), 30.0))


def test_the_lease_environment_variable_is_validated(monkeypatch):
    from storage import StorageError
    from storage.leases import lease_seconds

    monkeypatch.setenv("FTPRUNE_LEASE_S", "2.5")
    assert lease_seconds() == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("FTPRUNE_LEASE_S", bad)
        with pytest.raises(StorageError, match="FTPRUNE_LEASE_S"):
            lease_seconds()
