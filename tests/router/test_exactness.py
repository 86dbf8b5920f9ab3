"""Routed forwards against an independent dense reference, on every supported family."""

from __future__ import annotations

import random

import pytest
import torch

from router import RandomRouter, decoder_layers, keep_count, load_model, route, unroute
from router.dynamic import DynamicRouter
from tests.conftest import FAMILIES
from tests.router.reference import (
    FeatureRecorder,
    FixedRouter,
    as_masks,
    reference_logits,
    static_keep_sets,
)

SCHEDULE = [0.3, 0.5, 0.15, 0.4]


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


def _random_keep_sets(schedule, length, seed=0):
    rng = random.Random(seed)
    sets = []
    for s in schedule:
        k = keep_count(s, length)
        sets.append(sorted([0, length - 1] + rng.sample(range(1, length - 1), k - 2)))
    return sets


@pytest.mark.parametrize("attention", [False, True], ids=["static", "features"])
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_sparsity_matches_plain_model_with_and_without_padding(model_of, family, attention):
    """With a router reading attention features, the probe computes part of each attention
    call itself (unpadded) or beside SDPA (padded): the outputs stay the plain model's."""
    model = model_of(family)
    ids = _ids(3, 40)
    mask = torch.ones_like(ids)
    mask[1, 31:] = 0
    mask[2, 12:] = 0
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        plain_padded = model(ids, attention_mask=mask, use_cache=False).logits
        router = FeatureRecorder() if attention else None
        routing = route(model, [0.0] * len(decoder_layers(model)), router, attention_window=8)
        routed = model(ids, use_cache=False).logits
        routed_padded = model(ids, attention_mask=mask, use_cache=False).logits
    assert (plain - routed).abs().max().item() <= 1e-5
    real = mask.bool()
    assert (plain_padded - routed_padded)[real].abs().max().item() <= 1e-5
    assert routing.last_state.realized_sparsity == 0.0
    assert routing.last_state.seen == [int(mask.sum())] * len(SCHEDULE)


@pytest.mark.parametrize("attention", [False, True], ids=["static", "features"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_selection_matches_masked_dense_reference(model_of, family, attention):
    model = model_of(family)
    length = 24
    ids = _ids(2, length, seed=1)
    keep_sets = _random_keep_sets(SCHEDULE, length, seed=2)
    with torch.no_grad():
        expected = reference_logits(model, ids, as_masks(keep_sets, length, batch=2))
        router = FixedRouter(keep_sets)
        router.needs_attention = attention
        routing = route(model, SCHEDULE, router, attention_window=8)
        routed = model(ids, use_cache=False).logits
    assert (routed - expected).abs().max().item() <= 1e-4
    assert routing.last_state.kept == [2 * len(kept) for kept in keep_sets]
    # The reference really depends on the selection: another one gives other logits.
    other = _random_keep_sets(SCHEDULE, length, seed=3)
    with torch.no_grad():
        unroute(model)
        different = reference_logits(model, ids, as_masks(other, length, batch=2))
    assert (different - expected).abs().max().item() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padded_rows_match_each_row_alone(model_of, family):
    model = model_of(family)
    lengths = [30, 17, 5, 2]
    ids = _ids(len(lengths), max(lengths), seed=4)
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    routing = route(model, SCHEDULE)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, use_cache=False).logits
        kept, seen = routing.last_state.kept, routing.last_state.seen
        for row, n in enumerate(lengths):
            alone = model(ids[row : row + 1, :n], use_cache=False).logits
            assert (batched[row, :n] - alone[0]).abs().max().item() <= 1e-5
    # Each row keeps its own budget; padding counts as neither kept nor skipped.
    assert kept == [sum(keep_count(s, n) for n in lengths) for s in SCHEDULE]
    assert seen == [sum(lengths)] * len(SCHEDULE)


def test_padded_rows_keep_their_first_and_last_real_tokens(model_of):
    model = model_of("llama")
    ids = torch.arange(100, 124).view(2, 12)  # distinct tokens: kept rows identify columns
    mask = torch.tensor([[0, 0, 0] + [1] * 9, [1] * 7 + [0] * 5])  # left and right padding
    captured = {}
    first = decoder_layers(model)[0]
    handles = [
        first.input_layernorm.register_forward_pre_hook(
            lambda m, args: captured.update(kept=args[0])
        ),
        first.self_attn.register_forward_pre_hook(
            lambda m, args, kw: captured.update(mask=kw["attention_mask"]), with_kwargs=True
        ),
    ]
    route(model, [0.7] * 4)
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=False)
        embeddings = model.model.embed_tokens(ids)
    for handle in handles:
        handle.remove()
    k = keep_count(0.7, 12)
    assert captured["kept"].shape[1] == k
    columns = [
        [int((embeddings[row] == vector).all(-1).nonzero()) for vector in captured["kept"][row]]
        for row in range(2)
    ]
    # Row 0 (9 real) keeps 3 real tokens: first real (3), last (11), then 10; one pad slot.
    # Row 1 (7 real) keeps 2 real tokens: 0 and 6; its spare slots hold its own padding.
    assert keep_count(0.7, 9) == 3 and keep_count(0.7, 7) == 2
    assert columns[0][1:] == [3, 10, 11] and columns[0][0] in (0, 1, 2)
    assert columns[1][:2] == [0, 6] and all(c >= 7 for c in columns[1][2:])
    # Real queries never see padding: the last real query of each row sees its real keys.
    visible = captured["mask"][:, 0]
    assert int(visible[0, 3].sum()) == 3 and int(visible[1, 1].sum()) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_routing_is_exact_at_zero_and_close_to_the_reference(family):
    model, _ = load_model(f"random:{family}-tiny", dtype="bfloat16")
    ids = _ids(2, 32, seed=6)
    keep_sets = static_keep_sets(SCHEDULE, 32)
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        expected = reference_logits(model, ids, as_masks(keep_sets, 32, batch=2)).float()
        route(model, [0.0] * 4)
        assert torch.equal(model(ids, use_cache=False).logits, plain)
        route(model, SCHEDULE)
        routed = model(ids, use_cache=False).logits.float()
    scale = expected.abs().max().item()
    tolerance = 0.02 * scale
    assert routed.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert (routed - expected).abs().max().item() <= tolerance
    # The tolerance tells selections apart: the reference with one token swapped in one
    # block (its lowest-priority kept token for the best skipped one) falls outside it.
    unroute(model)
    for block in range(len(SCHEDULE)):
        wrong = [list(kept) for kept in keep_sets]
        dropped = min(j for j in wrong[block] if j != 0)
        wrong[block] = sorted([j for j in wrong[block] if j != dropped] + [dropped - 1])
        with torch.no_grad():
            swapped = reference_logits(model, ids, as_masks(wrong, 32, batch=2)).float()
        assert (swapped - expected).abs().max().item() > tolerance, block


NESTED_SCHEDULE = [0.15, 0.3, 0.3, 0.5]


def _kept_sets(model, router, ids, schedule=NESTED_SCHEDULE, mask=None):
    """Logits and the input columns each block computed, per row (from the KV record)."""
    routing = route(model, schedule, router)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, use_cache=True).logits
    cols = routing.last_state.record.cols
    return logits, [[set(row.tolist()) for row in block] for block in cols]


@pytest.mark.parametrize("family", FAMILIES)
def test_nested_selection_shrinks_block_by_block_and_matches_the_reference(model_of, family):
    """A random router draws fresh scores at every block; with nested selection each block
    keeps its k_i among what the block before it kept, and the logits are the masked dense
    reference's for those sets. Without nesting the same draws do not nest."""
    model = model_of(family)
    length = 24
    ids = _ids(2, length, seed=5)
    nested = RandomRouter(seed=7)
    nested.nested = True
    logits, sets = _kept_sets(model, nested, ids)
    for block, s in enumerate(NESTED_SCHEDULE):
        assert all(len(row) == keep_count(s, length) for row in sets[block])
        if block:
            assert all(
                now <= before for now, before in zip(sets[block], sets[block - 1], strict=True)
            )
    masks = [
        torch.stack([torch.isin(torch.arange(length), torch.tensor(sorted(row))) for row in block])
        for block in sets
    ]
    with torch.no_grad():
        unroute(model)
        expected = reference_logits(model, ids, masks)
    assert (logits - expected).abs().max().item() <= 1e-4
    _, free = _kept_sets(model, RandomRouter(seed=7), ids)
    assert any(not now <= before for now, before in zip(free[1], free[0], strict=True))


def test_nested_selection_routes_padded_rows_as_each_row_alone(model_of):
    model = model_of("llama")
    lengths = [30, 17, 5]
    ids = _ids(len(lengths), max(lengths), seed=6)
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    torch.manual_seed(0)
    router = DynamicRouter(nested=True)
    batched, batched_sets = _kept_sets(model, router, ids, mask=mask)
    for row, n in enumerate(lengths):
        alone, alone_sets = _kept_sets(model, router, ids[row : row + 1, :n])
        assert (batched[row, :n] - alone[0]).abs().max().item() <= 1e-5
        for block in range(len(NESTED_SCHEDULE)):
            assert {c for c in batched_sets[block][row] if c < n} == alone_sets[block][0]


def test_a_nested_router_refuses_a_decreasing_schedule(model_of):
    model = model_of("llama")
    router = DynamicRouter(nested=True)
    with pytest.raises(ValueError, match="non-decreasing"):
        route(model, [0.3, 0.2, 0.4, 0.4], router)
    route(model, [0.3, 0.2, 0.4, 0.4], DynamicRouter())  # without nesting, any schedule
