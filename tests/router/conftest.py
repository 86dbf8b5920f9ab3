"""Fixtures of the routing-engine tests."""

from __future__ import annotations

import pytest

from router import unroute


@pytest.fixture
def model_of(tiny_models):
    """``model_of(family)``: the session's tiny model of that family, unrouted before the
    test and again after it."""
    used = []

    def get(family):
        model, _ = tiny_models[family]
        unroute(model)
        used.append(model)
        return model

    yield get
    for model in used:
        unroute(model)
