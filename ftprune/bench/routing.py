"""``ftprune bench routing``: dense against routed prefill on the same model and inputs.

For every (batch, seq_len) the benchmark times each routed run right next to a dense run,
the order alternating between repeats and every repeat visiting every (scope, S), so drift
in a shared machine's load hits all sides alike:

- the dense model and the routed model (uniform schedule; the static router, or with
  ``router="dynamic"`` FTP's dynamic router and its attention features) at each target
  sparsity S, in two scopes: ``blocks`` (the decoder stack alone: ``model.model`` on
  precomputed embeddings) and ``end_to_end`` (``model(input_ids)``: embeddings, decoder
  stack and the LM head over every position);
- one decoder block at S = 0 without and with the attention features a dynamic router
  reads (scope ``features``).

Rows (``--json OUT`` writes the list): model, dtype, batch, seq_len, target_sparsity,
realized_sparsity, dense_ms and routed_ms (medians over the row's repeats), speedup (median
of the per-repeat dense/routed ratios), ideal_speedup, efficiency (speedup / ideal), scope,
and ``speedup_ci95`` / ``efficiency_ci95``: a distribution-free 95% confidence interval of
that median (order statistics of the ratios; the whole range when fewer than 6 repeats).

- ``blocks``: ideal = 1 / (1 - S), S the realized sparsity.
- ``end_to_end``: ideal = 1 / ((1 - c) + c (1 - S)), c = dense blocks time / dense
  end-to-end time, measured in the same run (at most 1: timing noise can invert the two
  on tiny models).
- ``features``: dense_ms is one block, routed_ms the same block measuring the attention
  received by every token and building the router features; ideal = 1. Extra fields:
  ``feature_share`` (1 / speedup - 1: the features' cost as a share of the block) and
  ``feature_ms`` (feature_share * dense_ms).

Every row also records ``clock`` ("wall", or "cpu": the process's CPU time, for shared
machines), ``threads``, ``device`` and ``heap`` (:func:`workers.heap.heap_mode`). On a
GPU every timed call is bracketed by device synchronizations, so the wall clock measures
the kernels and not their queueing.

S = 0 rows measure the engine's overhead with everything a dynamic router costs running:
they route with FTP's dynamic router (untrained weights: timing does not depend on them),
so every block measures attention features, builds the four factors, runs the MLP, top-k,
gather and scatter. A block with nothing to skip would call the plain layer, so these rows
skip one token per block, and their dense run is the plain model on the first
seq_len - 1 tokens (``dense_tokens``): both compute seq_len - 1 tokens in every block, so
the ideal is 1 and overhead = 1 / efficiency - 1 is what routing adds. (Against the plain
model on seq_len tokens, ideal 1 / (1 - 1/seq_len), the odd length would count too: on a
CPU a plain forward of 1023 or 2047 tokens takes 1.1-1.2% longer than one of 1024 or 2048.)
The end-to-end reference also embeds and projects one token fewer, under 0.03% of its
time at 1024 tokens. Rows with S > 0 route with ``RoutingBench.router``: ``static`` (what the
search scores) or ``dynamic`` (the untrained dynamic router, what a trained one costs: its
features, factors, MLP and top-k in every block); every row records which.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ftprune.bench.timing import median_ci95, paired, timed
from router import ForwardState, StaticRouter, decoder_layers, load_model, route, unroute
from router.dynamic import DynamicRouter
from router.loading import CausalLM
from workers.heap import heap_mode

SCOPES = ("blocks", "end_to_end", "features")
# wall: elapsed time. cpu: this process's CPU time, which other processes on a shared
# machine do not inflate (meaningful with one torch thread: idle threads spin).
FEATURE_REPEATS = 5  # the features row times this many times ``repeats`` pairs


@dataclass(frozen=True)
class RoutingBench:
    """What to time; see the module docstring."""

    model: str = "smollm2-135m"
    dtype: str = "float32"
    seq_lens: tuple[int, ...] = (1024, 2048)
    batches: tuple[int, ...] = (1,)
    sparsities: tuple[float, ...] = (0.0, 0.25, 0.4)
    repeats: int = 5
    warmup: int = 1
    attention_window: int | None = 64
    clock: str = "wall"
    seed: int = 0
    device: str = "cpu"
    router: str = "static"  # what rows with S > 0 route with: static or dynamic


def _routes_dynamic(bench: RoutingBench, sparsity: float) -> bool:
    """Whether the row at target ``sparsity`` routes with the dynamic router (S = 0 always
    does: it measures what a dynamic router costs)."""
    return sparsity == 0 or bench.router == "dynamic"


class _FeatureReader(StaticRouter):
    """Static decisions, but asks for attention features (what a dynamic router pays)."""

    needs_attention = True


def run(bench: RoutingBench, show_progress: bool = False) -> list[dict[str, Any]]:
    """Time every (batch, seq_len) of ``bench``; returns the rows. ``show_progress``: a
    progress bar per (batch, seq_len) and scope group on stderr."""
    model, _ = load_model(bench.model, bench.dtype, bench.device)
    rows: list[dict[str, Any]] = []
    for batch in bench.batches:
        for seq_len in bench.seq_lens:
            where = f"batch {batch}, {seq_len} tokens"
            rows += _prefill_rows(model, bench, batch, seq_len, f"{where}, forwards", show_progress)
            rows.append(
                _feature_row(model, bench, batch, seq_len, f"{where}, features", show_progress)
            )
    return rows


def _inputs(model: CausalLM, bench: RoutingBench, batch: int, seq_len: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(bench.seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=generator)
    return ids.to(bench.device)


@torch.inference_mode()
def _prefill_rows(
    model: CausalLM, bench: RoutingBench, batch: int, seq_len: int, desc: str, show_progress: bool
) -> list[dict[str, Any]]:
    ids = _inputs(model, bench, batch, seq_len)
    embeds = model.model.embed_tokens(ids)
    blocks = len(decoder_layers(model))

    def forwards(tokens: int) -> dict[str, Callable[[], Any]]:
        """The two scopes' forwards on the first ``tokens`` tokens of every row."""
        head_ids, head_embeds = ids[:, :tokens].contiguous(), embeds[:, :tokens].contiguous()
        return {
            "blocks": lambda: model.model(inputs_embeds=head_embeds, use_cache=False),
            "end_to_end": lambda: model(input_ids=head_ids, use_cache=False),
        }

    full, overhead_reference = forwards(seq_len), forwards(seq_len - 1)
    realized: dict[float, float] = {}

    def routed(sparsity: float, forward: Callable[[], Any]) -> Callable[[], float]:
        # At S = 0 every block would call the plain layer: skip one token per block instead,
        # so that the dynamic router, its features, top-k, gather and scatter all run.
        schedule = [sparsity or 1.0 / seq_len] * blocks
        router = overhead_router if _routes_dynamic(bench, sparsity) else StaticRouter()

        def call() -> float:
            routing = route(model, schedule, router, attention_window=bench.attention_window)
            try:
                elapsed = timed(forward, bench.clock, bench.device)
            finally:
                unroute(model)
            if routing.last_state is None:
                raise RuntimeError("the routed forward left no state")
            realized[sparsity] = routing.last_state.realized_sparsity
            return elapsed

        return call

    def dense(scope: str, sparsity: float) -> Callable[[], float]:
        reference = overhead_reference if sparsity == 0 else full
        return lambda: timed(reference[scope], bench.clock, bench.device)

    unroute(model)
    overhead_router = DynamicRouter().to(bench.device)
    pairs = paired(
        {
            f"{scope} {s}": (dense(scope, s), routed(s, forward))
            for scope, forward in full.items()
            for s in bench.sparsities
        },
        bench.warmup,
        bench.repeats,
        desc,
        show_progress,
    )
    return _prefill_table(model, bench, batch, seq_len, pairs, realized)


def _prefill_table(
    model: CausalLM,
    bench: RoutingBench,
    batch: int,
    seq_len: int,
    paired: dict[str, tuple[list[float], list[float]]],
    realized: dict[float, float],
) -> list[dict[str, Any]]:
    """The prefill rows of one batch and length from the paired timings (``"<scope> <S>"``:
    dense and routed times) and each S's realized sparsity, with each row's ideal speedup."""
    full = ("blocks", "end_to_end")
    # c, the blocks' share of the dense model's time, from the full-length dense runs. The
    # S = 0 rows (dense runs one token shorter) have ideal 1: with nothing else asked for,
    # c is computed from them and never used.
    full_length = [s for s in bench.sparsities if s != 0] or list(bench.sparsities)
    dense_median = {
        scope: statistics.median(t for s in full_length for t in paired[f"{scope} {s}"][0])
        for scope in full
    }
    blocks_share = min(1.0, dense_median["blocks"] / dense_median["end_to_end"])
    rows = []
    for scope in full:
        for sparsity in bench.sparsities:
            s = realized[sparsity]
            if sparsity == 0:
                ideal = 1.0  # the dense run computes as many tokens per block
            elif scope == "blocks":
                ideal = 1.0 / (1.0 - s)
            else:
                ideal = 1.0 / ((1.0 - blocks_share) + blocks_share * (1.0 - s))
            row = _row(
                model,
                bench,
                batch,
                seq_len,
                scope,
                sparsity,
                s,
                *paired[f"{scope} {sparsity}"],
                ideal,
            )
            row["dense_tokens"] = seq_len - 1 if sparsity == 0 else seq_len
            rows.append(row)
    return rows


@torch.inference_mode()
def _feature_row(
    model: CausalLM, bench: RoutingBench, batch: int, seq_len: int, desc: str, show_progress: bool
) -> dict[str, Any]:
    """One mid-stack block at S = 0, without and with the attention features."""
    ids = _inputs(model, bench, batch, seq_len)
    hidden = model.model.embed_tokens(ids)
    positions = torch.arange(seq_len, device=bench.device)[None]
    rotary = model.model.rotary_emb(hidden, positions)
    blocks = len(decoder_layers(model))
    index = blocks // 2

    def block(router: StaticRouter) -> Callable[[], float]:
        def call() -> float:
            routing = route(model, [0.0] * blocks, router, attention_window=bench.attention_window)
            state = ForwardState(
                routing.schedule,
                routing.flops,
                batch,
                seq_len,
                positions,
                None,
                track_attention=routing.needs_attention,
            )
            layer = decoder_layers(model)[index]

            def forward() -> None:
                layer(hidden, position_embeddings=rotary, ftprune_state=state)
                if routing.needs_attention:
                    state.features(index)

            try:
                return timed(forward, bench.clock, bench.device)
            finally:
                unroute(model)

        return call

    # One block is quick: repeat it more often than whole forwards.
    pairs = paired(
        {"features": (block(StaticRouter()), block(_FeatureReader()))},
        bench.warmup,
        FEATURE_REPEATS * bench.repeats,
        desc,
        show_progress,
    )
    row = _row(model, bench, batch, seq_len, "features", 0.0, 0.0, *pairs["features"], 1.0)
    row["feature_share"] = round(1.0 / row["speedup"] - 1.0, 4)
    row["feature_ms"] = round(row["feature_share"] * row["dense_ms"], 2)
    row["attention_window"] = bench.attention_window
    return row


def _row(
    model: CausalLM,
    bench: RoutingBench,
    batch: int,
    seq_len: int,
    scope: str,
    target: float,
    realized: float,
    dense: list[float],
    routed: list[float],
    ideal: float,
) -> dict[str, Any]:
    ratios = [d / r for d, r in zip(dense, routed, strict=True)]
    speedup = statistics.median(ratios)
    low, high = median_ci95(ratios)
    return {
        "model": bench.model,
        "dtype": bench.dtype,
        "batch": batch,
        "seq_len": seq_len,
        "target_sparsity": target,
        "realized_sparsity": round(realized, 6),
        "dense_ms": round(statistics.median(dense), 2),
        "routed_ms": round(statistics.median(routed), 2),
        "speedup": round(speedup, 4),
        "ideal_speedup": round(ideal, 4),
        "efficiency": round(speedup / ideal, 4),
        "speedup_ci95": [round(low, 4), round(high, 4)],
        "efficiency_ci95": [round(low / ideal, 4), round(high / ideal, 4)],
        "scope": scope,
        "router": "dynamic" if _routes_dynamic(bench, target) else "static",
        "clock": bench.clock,
        "threads": torch.get_num_threads(),
        "device": bench.device,
        "heap": heap_mode(),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table."""
    from ftprune.tables import Column, render

    return render(
        rows,
        [
            Column("scope", "scope"),
            Column("batch", "batch", "d"),
            Column("seq", "seq_len", "d"),
            Column("S", "target_sparsity", ".2f"),
            Column("real S", "realized_sparsity", ".3f"),
            Column("dense ms", "dense_ms", ".1f"),
            Column("routed ms", "routed_ms", ".1f"),
            Column("speedup", "speedup", ".3f"),
            Column("ideal", "ideal_speedup", ".3f"),
            Column("eff", "efficiency", ".3f"),
            Column("eff 95% CI", lambda r: "%.3f-%.3f" % tuple(r["efficiency_ci95"])),
        ],
    )


def report(
    bench: RoutingBench, rows: list[dict[str, Any]], load_before: float, load_after: float
) -> str:
    """What ``ftprune bench routing`` prints: the setting (device, threads, clock, heap, the
    machine's load before and after), the table, and each features row as a sentence."""
    where = (
        torch.cuda.get_device_name(bench.device)
        if bench.device != "cpu"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    lines = [
        f"{bench.model}, {bench.dtype}, {where}, {bench.clock} clock, {rows[0]['heap']} heap, "
        f"median of {bench.repeats} dense/routed pairs; 1-minute load average "
        f"{load_before:.2f} before, {load_after:.2f} after",
        format_table(rows),
    ]
    lines += [
        f"features (batch {row['batch']}, {row['seq_len']} tokens, window "
        f"{row['attention_window'] or 'all'}): {row['feature_ms']:.1f} ms "
        f"= {100 * row['feature_share']:.1f}% of a block"
        for row in rows
        if row["scope"] == "features"
    ]
    return "\n".join(lines)
