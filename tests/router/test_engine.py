"""The routing engine: selection, gather/scatter, accounting, and its input checks."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import pytest
import torch

from router import (
    RandomRouter,
    StaticRouter,
    decoder_layers,
    keep_count,
    load_model,
    route,
    routing_of,
    unroute,
)
from router.loading import ModelSpecError


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "sparsity,length", [(0.0, 10), (0.3, 10), (0.5, 7), (0.99, 50), (0.25, 2), (0.05, 100)]
)
def test_keep_count(sparsity, length):
    expected = min(length, max(2, int((1 - sparsity) * length + 0.5)))
    assert keep_count(sparsity, length) == expected


def _capture_kept(model):
    """Record, per block, the full input and the hidden states the layer really computed."""
    seen = []
    handles = []
    for layer in decoder_layers(model):
        record = {}
        seen.append(record)
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, args, kw, r=record: r.update(
                    full=(args[0] if args else kw["hidden_states"])
                ),
                with_kwargs=True,
            )
        )
        handles.append(
            layer.input_layernorm.register_forward_pre_hook(
                lambda m, args, r=record: r.update(kept=args[0])
            )
        )
    return seen, handles


def test_static_router_keeps_ftp_priority_order(tiny_llama):
    model, _ = tiny_llama
    schedule = [0.5, 0.3, 0.0, 0.8]
    length = 20
    route(model, schedule, StaticRouter())
    seen, handles = _capture_kept(model)
    with torch.no_grad():
        model(_ids(1, length), use_cache=False)
    for handle in handles:
        handle.remove()
    for record, sparsity in zip(seen, schedule, strict=True):
        k = keep_count(sparsity, length)
        # FTP order: token 0, the last token, then backwards from L-2.
        priority = [0, length - 1] + list(range(length - 2, 0, -1))
        expected = sorted(priority[:k])
        assert record["kept"].shape[1] == k
        assert torch.equal(record["kept"], record["full"][:, expected])


def test_routed_block_runs_on_k_tokens(tiny_llama):
    model, _ = tiny_llama
    schedule = [0.25, 0.5, 0.75, 0.1]
    batch, length = 3, 32
    shapes = []
    handles = [
        layer.mlp.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape))
        for layer in decoder_layers(model)
    ]
    routing = route(model, schedule)
    with torch.no_grad():
        model(_ids(batch, length), use_cache=False)
    for handle in handles:
        handle.remove()
    expected = [keep_count(s, length) for s in schedule]
    assert [tuple(s) for s in shapes] == [(batch, k, model.config.hidden_size) for k in expected]
    assert routing.last_state.kept == [batch * k for k in expected]
    assert routing.last_state.realized_sparsity == pytest.approx(
        1 - sum(expected) / (len(expected) * length)
    )


def test_skipped_tokens_pass_through_unchanged(tiny_llama):
    model, _ = tiny_llama
    route(model, [0.6, 0.0, 0.0, 0.0])
    captured = {}
    layer = decoder_layers(model)[0]
    handle_in = layer.register_forward_pre_hook(
        lambda m, args, kw: captured.update(inp=args[0] if args else kw["hidden_states"]),
        with_kwargs=True,
    )
    handle_out = layer.register_forward_hook(lambda m, a, out: captured.update(out=out))
    with torch.no_grad():
        model(_ids(1, 20), use_cache=False)
    handle_in.remove()
    handle_out.remove()
    k = keep_count(0.6, 20)
    kept = [0] + list(range(20 - k + 1, 20))
    skipped = [j for j in range(20) if j not in kept]
    assert torch.equal(captured["out"][:, skipped], captured["inp"][:, skipped])
    assert not torch.equal(captured["out"][:, kept], captured["inp"][:, kept])


def test_random_router_always_keeps_first_and_last(tiny_llama):
    model, _ = tiny_llama
    route(model, [0.9] * 4, RandomRouter(seed=3))
    seen, handles = _capture_kept(model)
    with torch.no_grad():
        model(_ids(2, 30), use_cache=False)
    for handle in handles:
        handle.remove()
    for record in seen:
        assert record["kept"].shape[1] == keep_count(0.9, 30)
        assert torch.equal(record["kept"][:, 0], record["full"][:, 0])
        assert torch.equal(record["kept"][:, -1], record["full"][:, -1])


def test_unroute_restores_plain_model(tiny_llama):
    model, _ = tiny_llama
    ids = _ids(1, 16)
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        route(model, [0.5] * 4)
        assert not torch.allclose(model(ids, use_cache=False).logits, plain)
        unroute(model)
        assert routing_of(model) is None
        assert torch.equal(model(ids, use_cache=False).logits, plain)


def test_schedule_validation(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="4 decoder blocks"):
        route(model, [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        route(model, [0.1, 0.2, 1.0, 0.0])


@pytest.mark.parametrize(
    "spec", ["nonsense", "random:gpt2-tiny", "/no/such/model.gguf", "./missing-dir"]
)
def test_unknown_model_specs_are_clear_errors(spec):
    with pytest.raises(ModelSpecError):
        load_model(spec)


def test_keep_counts_agree_with_keep_count():
    from router.engine import keep_counts

    lengths = torch.arange(1, 300)
    for sparsity in (0.0, 0.05, 0.25, 0.3, 0.5, 0.7, 0.99):
        expected = [keep_count(sparsity, int(n)) for n in lengths]
        assert keep_counts(sparsity, lengths).tolist() == expected


def test_flop_saving_counts_projections_mlp_and_quadratic_attention(tiny_llama):
    model, _ = tiny_llama
    schedule, batch, length = [0.25, 0.5, 0.75, 0.1], 2, 40
    routing = route(model, schedule)
    with torch.no_grad():
        model(_ids(batch, length), use_cache=False)
    state = routing.last_state
    # Tiny llama: hidden 64, 4 heads of 16, 2 KV heads, MLP 128.
    per_token = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128)
    per_pair = 4 * 4 * 16
    keeps = [keep_count(s, length) for s in schedule]
    done = sum(per_token * k + per_pair * k * (k + 1) / 2 for k in keeps)
    dense = len(schedule) * (per_token * length + per_pair * length * (length + 1) / 2)
    assert state.flop_saving == pytest.approx(1 - done / dense)
    assert state.flop_saving > state.realized_sparsity  # attention shrinks quadratically


# Tensor methods and torch functions that read a tensor's values back to the host: each
# synchronizes a GPU stream (boolean-mask indexing too, see _HostReads).
_READ_METHODS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "nonzero",
    "masked_select",
    "unique",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
)
_READ_FUNCTIONS = ("nonzero", "masked_select", "unique", "repeat_interleave")


class _HostReads:
    """Records host reads made by the routing package's own code while active, as
    ``"file:line name"``: a read counts when the innermost calling frame outside torch is
    in ``router/`` (reads that transformers' unchanged layers or mask code make are theirs,
    and a plain model makes them too)."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.reads: list[str] = []
        self._patch = patch

    def __enter__(self) -> list[str]:
        for name in _READ_METHODS:
            self._patch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
        for name in _READ_FUNCTIONS:
            self._patch.setattr(torch, name, self._counted(getattr(torch, name)))
        getitem = torch.Tensor.__getitem__

        def masked_getitem(tensor, index):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                self._record("boolean-mask indexing")
            return getitem(tensor, index)

        self._patch.setattr(torch.Tensor, "__getitem__", masked_getitem)
        return self.reads

    def __exit__(self, *exc: object) -> None:
        self._patch.undo()

    def _counted(self, original):
        def read(*args, **kwargs):
            self._record(original.__name__)
            return original(*args, **kwargs)

        return read

    def _record(self, name: str) -> None:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None and Path(frame.f_code.co_filename).is_relative_to(_TORCH):
            frame = frame.f_back
        if frame is not None and Path(frame.f_code.co_filename).is_relative_to(_ROUTER):
            self.reads.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {name}")


_TORCH = Path(torch.__file__).parent
_ROUTER = Path(decoder_layers.__code__.co_filename).parent


def test_routing_reads_nothing_back_to_the_host_but_a_padding_mask(tiny_llama):
    """The scoring path (equal-length rows, no mask) makes no host read at all, so it never
    synchronizes a GPU; with padding the engine reads the mask back exactly once (the one
    read its docstring allows), which also shows the recorder sees reads."""
    model, _ = tiny_llama
    ids = _ids(2, 30)
    padded = torch.ones_like(ids)
    padded[1, 21:] = 0
    schedule = [0.5, 0.3, 0.7, 0.1]
    for router in (StaticRouter(), RandomRouter(seed=1)):
        routing = route(model, schedule, router)
        with torch.no_grad():
            with _HostReads(pytest.MonkeyPatch()) as reads:
                model(ids, use_cache=False, logits_to_keep=4)
            assert reads == []
            with _HostReads(pytest.MonkeyPatch()) as reads:
                model(ids, attention_mask=padded, use_cache=False, logits_to_keep=4)
            assert len(reads) == 1 and reads[0].startswith("engine.py:")
        assert routing.last_state.kept == [keep_count(s, 30) + keep_count(s, 21) for s in schedule]


def test_unsupported_architectures_are_clear_errors():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ValueError, match="'gpt2'.*llama, qwen2, mistral"):
        route(gpt2, [0.1, 0.1])


def test_non_sdpa_attention_is_refused(tiny_llama):
    model, _ = tiny_llama
    model.config._attn_implementation = "eager"
    try:
        with pytest.raises(ValueError, match="SDPA"):
            route(model, [0.1] * 4)
    finally:
        model.config._attn_implementation = "sdpa"


def test_bad_routing_options_are_refused(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="decode"):
        route(model, [0.1] * 4, decode="sometimes")
    with pytest.raises(ValueError, match="attention_window"):
        route(model, [0.1] * 4, attention_window=0)
    route(model, [0.1] * 4)
    with pytest.raises(ValueError, match="2D attention_mask"):
        model(_ids(1, 8), attention_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool))


class _CountingStaticRouter(StaticRouter):
    def __init__(self, position_only: bool) -> None:
        self.position_only = position_only
        self.calls = 0

    def scores(self, block, hidden_states, state):
        self.calls += 1
        return super().scores(block, hidden_states, state)


def test_position_only_router_selects_once_per_sparsity(tiny_llama):
    model, _ = tiny_llama
    schedule = [0.5, 0.3, 0.5, 0.3]
    ids = _ids(2, 16)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # a padded row exercises the per-row budgets too
    logits = {}
    for position_only in (True, False):
        router = _CountingStaticRouter(position_only)
        routing = route(model, schedule, router)
        with torch.no_grad():
            logits[position_only] = model(ids, attention_mask=mask, use_cache=False).logits
        assert router.calls == (2 if position_only else 4)
        assert routing.last_state.kept == [8 + 6, 11 + 8, 8 + 6, 11 + 8]
    unroute(model)
    assert torch.equal(logits[True], logits[False])
