"""Learned routers behind the TokenRouter seam: budgets, mandatory tokens, block 0, factors."""

from __future__ import annotations

import pytest
import torch

from router import StaticRouter, keep_count, route
from router.attention import ROUTED_ATTENTION
from router.dynamic import FACTORS, STATIC_SHARPNESS, DynamicRouter, HiddenStateRouter
from tests.router_dynamic.conftest import ids

SCHEDULE = [0.3, 0.5, 0.6, 0.7]
LENGTH = 37


def _kept_columns(model, router, schedule=SCHEDULE, batch=2):
    """Input columns each block computed, read from the KV-cache record of a prefill."""
    routing = route(model, schedule, router)
    with torch.no_grad():
        model(ids(batch, LENGTH), use_cache=True)
    return routing, routing.last_state.record.cols


@pytest.mark.parametrize(
    "make", [lambda m: DynamicRouter(), lambda m: HiddenStateRouter(m.config.hidden_size)]
)
def test_learned_routers_keep_exactly_k_including_first_and_last(tiny_llama, make):
    model, _ = tiny_llama
    torch.manual_seed(0)
    routing, cols = _kept_columns(model, make(model))
    for block, sparsity in enumerate(SCHEDULE):
        k = keep_count(sparsity, LENGTH)
        assert cols[block].shape == (2, k)
        assert (cols[block][:, 0] == 0).all() and (cols[block][:, -1] == LENGTH - 1).all()
    assert routing.last_state.kept == [2 * keep_count(s, LENGTH) for s in SCHEDULE]


def test_block_zero_is_routed_by_position_priority(tiny_llama):
    model, _ = tiny_llama
    torch.manual_seed(0)
    _, cols = _kept_columns(model, DynamicRouter())
    k = keep_count(SCHEDULE[0], LENGTH)
    static = [0] + list(range(LENGTH - k + 1, LENGTH))
    assert cols[0].tolist() == [static, static]


def test_routers_read_attention_only_when_they_need_it(tiny_llama):
    model, _ = tiny_llama
    route(model, SCHEDULE, DynamicRouter())
    assert model.config._attn_implementation == ROUTED_ATTENTION
    route(model, SCHEDULE, HiddenStateRouter(model.config.hidden_size))
    assert model.config._attn_implementation == "sdpa"


class _Features:
    """A stand-in ForwardState whose features are given."""

    def __init__(self, features: torch.Tensor) -> None:
        self._features = features

    def features(self, block: int) -> torch.Tensor:
        return self._features


def test_a_dropped_factor_is_never_read():
    torch.manual_seed(0)
    router = DynamicRouter([f for f in FACTORS if f != "rank"])
    assert router.factors == ("position", "attention", "sparsity")
    assert router.mlp[0].in_features == 3
    features = torch.rand(1, 5, 4)
    changed = features.clone()
    changed[..., FACTORS.index("rank")] += 1.0
    hidden = torch.zeros(1, 5, 8)
    same = router.scores(1, hidden, _Features(features))
    assert torch.equal(same, router.scores(1, hidden, _Features(changed)))
    changed[..., FACTORS.index("attention")] += 1.0
    assert not torch.equal(same, router.scores(1, hidden, _Features(changed)))


def test_unknown_or_empty_factors_are_refused():
    with pytest.raises(ValueError, match="subset"):
        DynamicRouter(["position", "entropy"])
    with pytest.raises(ValueError, match="subset"):
        DynamicRouter([])


@pytest.mark.parametrize("factors", [FACTORS, ("position", "attention")])
def test_a_static_start_keeps_the_static_routers_tokens(tiny_llama, factors):
    model, _ = tiny_llama
    torch.manual_seed(0)
    router = DynamicRouter(factors).start_at_static()
    _, learned = _kept_columns(model, router)
    _, static = _kept_columns(model, StaticRouter())
    for block in range(len(SCHEDULE)):
        assert torch.equal(learned[block], static[block])
    features = torch.rand(1, 5, 4)
    scores = router.scores(1, torch.zeros(1, 5, 8), _Features(features))
    line = features[..., 0] - (features[..., 3] if "sparsity" in factors else 0.0)
    torch.testing.assert_close(scores, STATIC_SHARPNESS * line)


def test_a_static_start_needs_the_position_factor():
    with pytest.raises(ValueError, match="position"):
        DynamicRouter(["attention", "rank"]).start_at_static()
