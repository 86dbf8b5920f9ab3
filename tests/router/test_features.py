"""Attention features measured in the routed pass, against eager attention maps."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from router import StaticRouter, decoder_layers, route, unroute
from router.attention import ROUTED_ATTENTION, AttentionProbe, routed_sdpa
from tests.router.reference import FeatureRecorder, as_masks, reference_logits, static_keep_sets

SCHEDULE = [0.3, 0.5, 0.2, 0.4]
LENGTH = 20


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def llama(tiny_llama):
    model, _ = tiny_llama
    yield model
    model.config._attn_implementation = "sdpa"


def _reference_tables(model, ids, window):
    """Latest-attention table before each block, from eager attention probabilities."""
    batch, length = ids.shape
    computed = as_masks(static_keep_sets(SCHEDULE, length), length, batch)
    probs = []
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        reference_logits(model, ids, computed, capture=probs)
    model.config._attn_implementation = "sdpa"
    table = torch.zeros(batch, length)
    before = []
    for comp, p in zip(computed, probs, strict=True):
        before.append(table.clone())
        for row in range(batch):
            queries = comp[row].nonzero().flatten()
            if window is not None:
                queries = queries[-window:]
            for j in comp[row].nonzero().flatten():
                seeing = queries[queries >= j]
                table[row, j] = p[row][:, seeing, j].sum() / (p.shape[1] * len(seeing))
    return before


def _rank(table):
    order = table.argsort(dim=1, stable=True)
    rank = torch.empty_like(table).scatter_(
        1, order, torch.arange(table.shape[1], dtype=table.dtype).expand_as(table)
    )
    return rank / (table.shape[1] - 1)


@pytest.mark.parametrize("window", [None, 3])
def test_features_match_eager_attention_maps(llama, window):
    ids = _ids(2, LENGTH, seed=1)
    expected = _reference_tables(llama, ids, window)
    recorder = FeatureRecorder()
    route(llama, SCHEDULE, recorder, attention_window=window)
    with torch.no_grad():
        llama(ids, use_cache=False)
    positions = torch.arange(LENGTH) / (LENGTH - 1)
    for block, table in enumerate(expected):
        features = recorder.features[block]
        assert features.shape == (2, LENGTH, 4)
        assert torch.allclose(features[..., 0], positions.expand(2, -1))
        assert torch.allclose(features[..., 1], table, atol=1e-5)
        assert torch.allclose(features[..., 3], torch.full((2, LENGTH), SCHEDULE[block]))
        if block > 0:
            assert torch.equal(features[..., 2], _rank(table))
    assert expected[-1].max() > 0.01  # the comparison is not between zeros


def test_padded_rows_get_the_features_they_get_alone(llama):
    lengths = [LENGTH, 13]
    ids = _ids(2, LENGTH, seed=2)
    mask = torch.tensor([[1] * n + [0] * (LENGTH - n) for n in lengths])
    recorder = FeatureRecorder()
    route(llama, SCHEDULE, recorder, attention_window=None)
    with torch.no_grad():
        llama(ids, attention_mask=mask, use_cache=False)
        batched = dict(recorder.features)
        llama(ids[1:, :13], use_cache=False)
    for block in range(1, len(SCHEDULE)):
        alone = recorder.features[block][0]
        assert torch.allclose(batched[block][1, :13], alone, atol=1e-5)


def test_the_static_router_pays_nothing_for_features(llama):
    routing = route(llama, SCHEDULE, StaticRouter())
    assert llama.config._attn_implementation == "sdpa"
    with torch.no_grad():
        llama(_ids(1, LENGTH), use_cache=False)
    assert routing.last_state.attention is None
    with pytest.raises(RuntimeError, match="needs_attention"):
        routing.last_state.features(1)
    route(llama, SCHEDULE, FeatureRecorder())
    assert llama.config._attn_implementation == ROUTED_ATTENTION
    unroute(llama)
    assert llama.config._attn_implementation == "sdpa"


def test_feature_router_decodes_like_the_static_router(llama):
    prompt = _ids(1, 16, seed=3)
    outputs = []
    for router in (StaticRouter(), FeatureRecorder()):
        route(llama, SCHEDULE, router, decode="threshold")
        with torch.no_grad():
            outputs.append(
                llama.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=255)
            )
    assert torch.equal(outputs[0], outputs[1])
    # The decode token's features were measured in the blocks that computed it.
    last = outputs[1].shape[1] - 2
    features = llama._ftprune_routing.last_state.features(len(decoder_layers(llama)) - 1)
    assert features.shape == (1, 1, 4) and features[0, 0, 0] == 1.0
    assert 0.0 < features[0, 0, 1] <= 1.0 and last > 0


@pytest.mark.model
def test_pretrained_attention_sink_ranks_first():
    """On SmolLM2, token 0 (the attention sink) receives the most attention, once the first
    few blocks have formed the sink."""
    from router import load_model
    from workers import DataSpec
    from workers.data import build_sequences

    model, tokenizer = load_model("smollm2-135m")
    ids = build_sequences(DataSpec("builtin:pydoc", "heldout", (128,), 1), tokenizer)[0][None]
    recorder = FeatureRecorder()
    blocks = len(decoder_layers(model))
    route(model, [0.25] * blocks, recorder, attention_window=None)
    with torch.no_grad():
        model(ids, use_cache=False)
    for block in (blocks // 3, blocks // 2, blocks - 1):
        rank = recorder.features[block][0, :, 2]
        assert rank[0] == 1.0
    unroute(model)


class _Attention(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 3


@pytest.mark.parametrize("window,chunk", [(None, 4), (7, 3), (7, 256), (30, 8), (19, 5)])
def test_fused_probe_matches_sdpa_and_the_explicit_mask_path(window, chunk):
    """Unpadded causal input: the probe computes its window's rows itself. Output and
    gradients must equal plain SDPA's, the measurement the general masked path's."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 6, LENGTH, 8, generator=generator, requires_grad=True)
    key = torch.randn(2, 2, LENGTH, 8, generator=generator, requires_grad=True)
    value = torch.randn(2, 2, LENGTH, 8, generator=generator, requires_grad=True)
    module, kwargs = _Attention(), {"dropout": 0.0, "scaling": 0.3}
    causal = torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril().expand(2, 1, -1, -1)
    fused, general = AttentionProbe(window, None, chunk), AttentionProbe(window, None, chunk)
    assert fused.fuses(module, query, key, None, kwargs)
    assert not fused.fuses(module, query, key, causal, kwargs)
    output, _ = routed_sdpa(module, query, key, value, None, ftprune_probe=fused, **kwargs)
    expected, _ = sdpa_attention_forward(module, query, key, value, None, **kwargs)
    assert output.shape == expected.shape == (2, LENGTH, 6, 8)
    assert torch.allclose(output, expected, atol=1e-6)
    weights = torch.randn(output.shape, generator=generator)
    fused_grads = torch.autograd.grad((output * weights).sum(), (query, key, value))
    plain_grads = torch.autograd.grad((expected * weights).sum(), (query, key, value))
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    general.measure(query, key, causal, 0.3)
    assert fused.received.grad_fn is None
    assert torch.allclose(fused.received, general.received, atol=1e-6)
    assert general.received.min() > 0  # every key is seen by some query of the window
