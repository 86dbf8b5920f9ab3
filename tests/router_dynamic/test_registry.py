"""The router registry: every registered router round-trips spec -> router -> checkpoint ->
load, bad specs and kinds fail with one line, and the rest of ftprune asks the registry."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from router import load_model, route, unroute
from router.checkpoint import CheckpointError, load_routed, make_router, read_meta, save_router
from router.registry import (
    FIXED,
    ROUTER_SPECS,
    TRAINED,
    RouterSpecError,
    check_router_spec,
    checkpoint_dir,
    kind_of,
    new_router,
    router_kind,
)
from tests.router_dynamic.conftest import ids

SPEC = "random:llama-tiny"
SCHEDULE = [0.2, 0.5, 0.4, 0.6]


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_model(SPEC)
    return model


def _logits(model: nn.Module, router, batch: torch.Tensor) -> torch.Tensor:
    route(model, SCHEDULE, router)
    try:
        with torch.no_grad():
            return model(batch).logits
    finally:
        unroute(model)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("kind", sorted(TRAINED))
def test_every_trained_kind_round_trips_through_a_checkpoint(tmp_path, tiny, kind):
    torch.manual_seed(0)
    router = new_router(kind, tiny.config.hidden_size, ["position", "rank", "sparsity"])
    assert type(router) is TRAINED[kind].cls and kind_of(router) == kind
    with torch.no_grad():  # trained-like weights: a load that re-initializes would differ
        for param in router.parameters():
            param.add_(torch.randn_like(param))
    batch = ids(2, 24)
    expected = _logits(tiny, router, batch)

    save_router(tmp_path, router, SCHEDULE, model_spec=SPEC)
    meta = read_meta(tmp_path)
    assert meta["kind"] == kind and meta["hidden"] == router.hidden
    assert {k: meta[k] for k in TRAINED[kind].shape(router)} == TRAINED[kind].shape(router)

    spec = f"dynamic:{tmp_path}"
    check_router_spec(spec)
    assert checkpoint_dir(spec) == str(tmp_path) and router_kind(spec) == "dynamic"
    loaded = make_router(spec)
    assert type(loaded) is type(router) and not loaded.training
    assert loaded.state_dict().keys() == router.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in router.state_dict().items())
    assert torch.equal(_logits(tiny, loaded, batch), expected)
    model, _, routing = load_routed(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, expected)
    assert routing.schedule == SCHEDULE


@pytest.mark.parametrize("spec", sorted(FIXED))
def test_every_fixed_router_builds_from_its_spec(tiny, spec):
    check_router_spec(spec)
    assert checkpoint_dir(spec) is None and router_kind(spec) == spec
    batch = ids(2, 24)
    first, second = _logits(tiny, make_router(spec), batch), _logits(tiny, make_router(spec), batch)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second), "a spec names one router: the same scores every time"


def test_the_listed_specs_are_the_registered_routers():
    assert ROUTER_SPECS == (*FIXED, "dynamic:<checkpoint dir>")
    assert set(FIXED) == {"static", "random"} and set(TRAINED) == {"dynamic", "hidden_state"}


@pytest.mark.parametrize("spec", ["lstm", "Static", "dynamic:", "hidden_state:/x", ""])
def test_an_unknown_spec_is_one_line_naming_the_choices(spec):
    for call in (check_router_spec, make_router, router_kind):
        with pytest.raises(RouterSpecError) as error:
            call(spec)
        message = _one_line(error)
        assert f"unknown router {spec!r}" in message
        assert all(choice in message for choice in ROUTER_SPECS)


def test_a_spec_naming_no_checkpoint_is_one_line(tmp_path):
    with pytest.raises(RouterSpecError, match="no router.json") as error:
        check_router_spec(f"dynamic:{tmp_path / 'nowhere'}")
    _one_line(error)
    (tmp_path / "router.json").write_text(json.dumps({"format": 1, "kind": "lstm"}))
    with pytest.raises(RouterSpecError, match="field 'hidden' is missing"):
        make_router(f"dynamic:{tmp_path}")


def test_an_unknown_kind_is_one_line_naming_the_kinds(tmp_path):
    with pytest.raises(RouterSpecError) as error:
        new_router("lstm", 64, ["position"])
    assert _one_line(error) == "unknown router kind 'lstm'; choose one of dynamic, hidden_state"
    assert kind_of(nn.Linear(2, 1)) is None
    with pytest.raises(CheckpointError, match="cannot save a Linear"):
        save_router(tmp_path, nn.Linear(2, 1), SCHEDULE, model_spec=SPEC)


def test_the_run_config_and_the_scorer_ask_the_registry():
    import workers.scoring
    import workers.training
    from search.config import ConfigError, build_config

    assert workers.scoring.make_router is make_router
    assert workers.scoring.router_kind is router_kind
    assert workers.training.new_router is new_router
    assert (
        build_config(None, router_training={"kind": "hidden_state"}).router_training.kind
        == "hidden_state"
    )
    with pytest.raises(ConfigError) as error:
        build_config(None, router_training={"kind": "lstm"})
    assert "router_training.kind" in _one_line(error) and "dynamic, hidden_state" in str(
        error.value
    )
