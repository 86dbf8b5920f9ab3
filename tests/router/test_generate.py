"""KV-cache decoding on routed models against a cache-free reference of the same policy.

The reference re-runs the whole sequence densely at every step: block i computes the
prompt tokens it kept at prefill (frozen) and the decoded tokens the policy computes there,
and attends only to those (see ``tests.router.reference``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig

from router import decoder_layers, keep_count, route, unroute
from router.engine import routing_of
from tests.conftest import FAMILIES
from tests.router.reference import DecodeRouter, as_masks, reference_logits, static_keep_sets

SCHEDULE = [0.3, 0.5, 0.15, 0.4]


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


def _generate(model, prompt, steps, **kwargs):
    out = model.generate(
        prompt,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=255,
        **kwargs,
    )
    return out.sequences[:, prompt.shape[1] :], torch.stack(out.logits, dim=1), out.past_key_values


def _reference_decode(model, prompt, steps, schedule, keep=None):
    """Greedy decoding without a cache: prefill keep sets frozen, decoded tokens per ``keep``
    (None: every decoded token in every block)."""
    keep = keep or (lambda block, row, col: True)
    batch, length = prompt.shape
    prefill = as_masks(static_keep_sets(schedule, length), length, batch)
    sequence, logits = prompt, []
    for _ in range(steps):
        total = sequence.shape[1]
        computed = []
        for block, mask in enumerate(prefill):
            grown = torch.zeros(batch, total, dtype=torch.bool)
            grown[:, :length] = mask
            for row in range(batch):
                for col in range(length, total):
                    grown[row, col] = keep(block, row, col)
            computed.append(grown)
        last = reference_logits(model, sequence, computed)[:, -1]
        logits.append(last)
        sequence = torch.cat([sequence, last.argmax(-1, keepdim=True)], dim=1)
    return sequence[:, length:], torch.stack(logits, dim=1)


def _generate_matches_reference(model, prompt, steps, keep=None):
    """Route ``model`` (static at prefill; with ``keep``, the threshold decode policy that
    follows it), greedy-generate, and check tokens and logits against the cache-free
    reference. Returns the routing handle and the generated cache."""
    if keep is None:
        routing = route(model, SCHEDULE)
    else:
        routing = route(model, SCHEDULE, DecodeRouter(keep), decode="threshold")
    with torch.no_grad():
        tokens, logits, cache = _generate(model, prompt, steps)
        unroute(model)
        ref_tokens, ref_logits = _reference_decode(model, prompt, steps, SCHEDULE, keep)
    assert torch.equal(tokens, ref_tokens)
    assert (logits - ref_logits).abs().max().item() <= 1e-4
    return routing, cache


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_matches_cache_free_reference(model_of, family):
    model = model_of(family)
    prompt, steps = _ids(1, 16, seed=1), 8
    routing, cache = _generate_matches_reference(model, prompt, steps)
    # Decode tokens run in every block; the cache holds only the kept prompt tokens.
    assert routing.last_state.kept == [1] * 4 and routing.last_state.realized_sparsity == 0.0
    assert routing.last_state.flop_saving > 0.0
    fed = steps - 1
    sizes = [layer.keys.shape[-2] for layer in cache.layers]
    assert sizes == [keep_count(s, 16) + fed for s in SCHEDULE]


def test_kv_cache_shrinks_by_the_prefill_skip_fraction(model_of):
    model = model_of("llama")
    routing = route(model, SCHEDULE)
    with torch.no_grad():
        out = model(_ids(2, 50, seed=2), use_cache=True)
    entries = sum(layer.keys.shape[-2] for layer in out.past_key_values.layers)
    dense_entries = 50 * len(SCHEDULE)
    assert entries / dense_entries == pytest.approx(1.0 - routing.last_state.realized_sparsity)
    assert entries < 0.7 * dense_entries


def test_threshold_policy_skips_decode_tokens_and_writes_no_kv(model_of):
    model = model_of("llama")
    prompt, steps = _ids(1, 14, seed=3), 7

    def keep(block, row, col):
        return block != 1 and not (block == 3 and col % 2 == 0)

    _, cache = _generate_matches_reference(model, prompt, steps, keep)
    fed = range(14, 14 + steps - 1)
    sizes = [layer.keys.shape[-2] for layer in cache.layers]
    expected = [
        keep_count(s, 14) + sum(keep(block, 0, col) for col in fed)
        for block, s in enumerate(SCHEDULE)
    ]
    assert sizes == expected and sizes[1] == keep_count(SCHEDULE[1], 14)


def test_threshold_policy_with_rows_that_disagree(model_of):
    model = model_of("qwen2")
    prompt, steps = _ids(2, 12, seed=4), 6

    def keep(block, row, col):
        return not (block == 2 and row == 0) and not (block == 0 and row == 1 and col % 3 == 0)

    _generate_matches_reference(model, prompt, steps, keep)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_generate_matches_each_row_alone(model_of, family):
    model = model_of(family)
    lengths, steps = [15, 10, 6], 5
    width = max(lengths)
    ids = _ids(len(lengths), width, seed=5)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    route(model, SCHEDULE)
    with torch.no_grad():
        tokens, logits, _ = _generate(model, ids, steps, attention_mask=mask)
        for row, n in enumerate(lengths):
            alone_tokens, alone_logits, _ = _generate(model, ids[row : row + 1, width - n :], steps)
            assert torch.equal(tokens[row], alone_tokens[0])
            assert (logits[row] - alone_logits[0]).abs().max().item() <= 1e-4


def test_manual_decode_loop_needs_no_positions_or_mask(model_of):
    """Default positions come from the cache record, not from layer 0's (shorter) cache."""
    model = model_of("mistral")
    prompt = _ids(1, 18, seed=6)
    route(model, [0.6, 0.1, 0.3, 0.5])
    with torch.no_grad():
        cache = model(prompt, use_cache=True).past_key_values
        step = model(torch.tensor([[7]]), past_key_values=cache, use_cache=True).logits[:, -1]
        unroute(model)
        sequence = torch.cat([prompt, torch.tensor([[7]])], dim=1)
        computed = as_masks(static_keep_sets([0.6, 0.1, 0.3, 0.5], 18), 18)
        computed = [torch.cat([c, torch.ones(1, 1, dtype=torch.bool)], dim=1) for c in computed]
        expected = reference_logits(model, sequence, computed)[:, -1]
    assert (step - expected).abs().max().item() <= 1e-4


def test_cropped_cache_is_refused(model_of):
    model = model_of("llama")
    route(model, SCHEDULE)
    with torch.no_grad():
        cache = model(_ids(1, 20), use_cache=True).past_key_values
        cache.crop(-1)
        with pytest.raises(RuntimeError, match="cannot be cropped"):
            model(torch.tensor([[3]]), past_key_values=cache, use_cache=True)


def test_sliding_window_model_matches_reference_in_prefill_and_generation():
    config = MistralConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=258,
        max_position_embeddings=256,
        sliding_window=6,
        attn_implementation="sdpa",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    prompt, steps = _ids(1, 16, seed=7), 6
    with torch.no_grad():
        plain = model(prompt, use_cache=False).logits
        expected = reference_logits(model, prompt, as_masks(static_keep_sets(SCHEDULE, 16), 16))
        route(model, [0.0] * 4)
        assert (model(prompt, use_cache=False).logits - plain).abs().max().item() <= 1e-5
        route(model, SCHEDULE)
        assert (model(prompt, use_cache=False).logits - expected).abs().max().item() <= 1e-4
        tokens, logits, cache = _generate(model, prompt, steps)
        assert routing_of(model) is not None
        unroute(model)
        ref_tokens, ref_logits = _reference_decode(model, prompt, steps, SCHEDULE)
    assert torch.equal(tokens, ref_tokens)
    assert (logits - ref_logits).abs().max().item() <= 1e-4
    # A sliding-window cache layer keeps at most window - 1 entries.
    assert max(layer.keys.shape[-2] for layer in cache.layers) <= 5
    assert len(decoder_layers(model)) == 4


def test_other_cache_types_are_refused(model_of):
    from transformers import StaticCache

    model = model_of("llama")
    route(model, SCHEDULE)
    cache = StaticCache(config=model.config, max_cache_len=32)
    with pytest.raises(ValueError, match="DynamicCache"):
        model(_ids(1, 8), past_key_values=cache, use_cache=True)


def test_nested_threshold_policy_never_brings_a_skipped_decode_token_back(model_of):
    """Block 1 skips every decoded token; with nested selection blocks 2 and 3 skip them
    too (the reference computes decoded tokens in block 0 only), and write no K/V."""
    model = model_of("llama")
    prompt, steps, schedule = _ids(1, 14, seed=5), 5, [0.2, 0.3, 0.3, 0.5]
    router = DecodeRouter(lambda block, row, col: block != 1)
    router.nested = True
    route(model, schedule, router, decode="threshold")
    with torch.no_grad():
        tokens, logits, cache = _generate(model, prompt, steps)
        unroute(model)
        expected = _reference_decode(model, prompt, steps, schedule, lambda b, r, c: b == 0)
    assert torch.equal(tokens, expected[0])
    assert (logits - expected[1]).abs().max().item() <= 1e-4
    sizes = [layer.keys.shape[-2] for layer in cache.layers]
    assert sizes[1:] == [keep_count(s, 14) for s in schedule[1:]]
    assert sizes[0] == keep_count(schedule[0], 14) + steps - 1
