"""How long a lease lasts (what a lease guarantees on every store is checked in
test_conformance.py)."""

from __future__ import annotations

import pytest


def test_the_lease_environment_variable_is_validated(monkeypatch):
    from storage import StorageError
    from storage.leases import lease_seconds

    monkeypatch.setenv("FTPRUNE_LEASE_S", "2.5")
    assert lease_seconds() == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("FTPRUNE_LEASE_S", bad)
        with pytest.raises(StorageError, match="FTPRUNE_LEASE_S"):
            lease_seconds()
