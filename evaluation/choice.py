"""Multiple-choice scoring by per-choice log-likelihood, the way lm-eval scores it.

For a context c and a choice x the score is log P(x | c), summed over x's tokens, computed
exactly as lm-eval's ``HFLM.loglikelihood`` does, so the two agree on the same model:

- trailing whitespace of c moves to the start of x; ``whole = encode(c + x)``,
  ``ctx = encode(c)`` and x's tokens are ``whole[len(ctx):]`` (an empty context is the
  tokenizer's BOS token, else EOS); ``encode`` is the tokenizer's own ``encode`` with its
  default special tokens (none when the text already starts with the BOS text);
- the model reads ``(ctx + x)[:-1]``, left-truncated to its maximum length, and the
  log-softmax (float32, or the model's dtype if wider) at the last ``len(x)`` positions is
  gathered and summed.

``acc`` is 1 when the choice of highest log-likelihood is correct; ``acc_norm`` divides
each log-likelihood by its choice's length in characters first (lm-eval's ``acc_norm``;
ties go to the first choice, as ``numpy.argmax``).

All choices of one example run as one right-padded batch, and choices whose model inputs
coincide share one row (single-token choices of one context read the same input ``ctx``,
and lm-eval groups them the same way).

- A dense model reads the prefix the rows of an example share (the context, up to the first
  scored position) once, and the rows' remaining tokens on top of its key/value cache: the
  same log-likelihoods up to float rounding, with the context computed once per example
  rather than once per choice. Two forwards per batch: the batch's prefixes, then its rows.
- A routed model reads every row whole, with an attention mask, since its routing budgets
  each row by its own length (see :mod:`router.engine`); a choice's score does not depend on
  what it is batched with, up to float rounding. Its realized sparsity and FLOP saving are
  weighted over every forward (:class:`SparsityMeter`).

Several examples share a batch as long as it holds at most ``batch_size`` rows (an example
with more runs alone).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from evaluation.tasks import ChoiceExample
from router import routing_of
from router.state import ForwardState, causal_pairs, total


@dataclass(frozen=True)
class ChoiceRun:
    """Per-example results of one model on a task (same order as the examples)."""

    loglik: list[tuple[float, ...]]  # summed log-likelihood of each choice
    acc: list[float]  # 0/1
    acc_norm: list[float]  # 0/1
    realized_sparsity: float  # fraction of real (token, block) pairs skipped; 0 if dense
    flop_saving: float  # FLOP-weighted saving of the decoder blocks; 0 if dense
    tokens: int  # real input tokens of every row (a dense model reads shared prefixes once)
    seconds: float


@dataclass(frozen=True)
class TaskScores:
    """Per-example 0/1 scores of one model on one task, by metric (``acc``, ``acc_norm``),
    and a routed model's realized sparsity and FLOP saving over the task's forwards (0 for a
    dense model): what every task source (this scorer, lm-eval) reports."""

    task: str
    metrics: dict[str, list[float]]
    realized_sparsity: float = 0.0
    flop_saving: float = 0.0
    loglik: list[tuple[float, ...]] | None = None  # per example, per choice
    primary: str = "acc"  # the metric a suite summarizes

    @property
    def n(self) -> int:
        return len(next(iter(self.metrics.values())))


class SparsityMeter:
    """Accumulates a routed model's :class:`~router.state.ForwardState` over forwards.

    While the ``measure`` context is open, every prefill forward of the model that runs
    routed (routed before or inside the context) adds its kept and seen (token, block)
    pairs and its dense and saved decoder-block FLOPs; unrouted forwards add nothing, so a
    dense model's figures stay 0.
    """

    def __init__(self) -> None:
        self.kept = 0
        self.seen = 0
        self.dense_flops = 0.0
        self.saved_flops = 0.0

    def add(self, state: ForwardState) -> None:
        """Count one finished prefill forward."""
        blocks = len(state.schedule)
        dense = blocks * (
            state.flops.token * int(total(state.real, state.batch))
            + state.flops.pair * int(causal_pairs(state.real, state.batch))
        )
        self.kept += sum(state.kept)
        self.seen += sum(state.seen)
        self.dense_flops += dense
        self.saved_flops += state.flop_saving * dense

    @contextlib.contextmanager
    def measure(self, model: Any) -> Iterator["SparsityMeter"]:
        def record(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            # The routing engine hands each forward's state to the decoder stack as a
            # keyword argument; its counts are complete once the stack has run.
            state = kwargs.get("ftprune_state")
            if isinstance(state, ForwardState) and not state.past:
                self.add(state)

        handle = model.model.register_forward_hook(record, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    @property
    def realized_sparsity(self) -> float:
        return 0.0 if self.seen == 0 else 1.0 - self.kept / self.seen

    @property
    def flop_saving(self) -> float:
        return 0.0 if self.dense_flops == 0 else self.saved_flops / self.dense_flops


def encode(tokenizer: Any, text: str) -> list[int]:
    """lm-eval's ``tok_encode`` for a causal model with default settings."""
    bos = tokenizer.bos_token_id
    prefix = tokenizer.decode(bos if bos is not None else tokenizer.eos_token_id)
    if prefix and text.startswith(prefix):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-eval's ``loglikelihood`` makes them."""
    if not context:
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = tokenizer.bos_token_id
        prefix = tokenizer.eos_token_id if prefix is None else prefix
        return ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def max_length(model: Any) -> int:
    """The longest input scored: the model's ``max_position_embeddings`` (else 2048)."""
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


@dataclass(frozen=True)
class _Row:
    """One sequence the model reads and the choices scored from it. Choices whose inputs
    coincide share a row (single-token choices of one context need one forward, as lm-eval
    groups them); each choice's continuation is predicted at the last ``len(targets)``
    input positions."""

    example: int
    inputs: tuple[int, ...]
    targets: tuple[tuple[int, tuple[int, ...]], ...]  # (choice index, continuation tokens)


def rows_of(tokenizer: Any, examples: Sequence[ChoiceExample], limit: int) -> list[list[_Row]]:
    """Per example, its rows (one per distinct input), inputs left-truncated to ``limit``
    tokens; raises ValueError on a choice of no tokens or more than ``limit``."""
    out = []
    for e, example in enumerate(examples):
        rows: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
        for c, choice in enumerate(example.choices):
            ctx, cont = encode_pair(tokenizer, example.context_of(c), choice)
            if not cont or len(cont) > limit:
                raise ValueError(
                    f"example {e}: choice {choice!r} has {len(cont)} tokens; "
                    f"a choice needs 1 to {limit}"
                )
            inputs = tuple((ctx + cont)[-(limit + 1) :][:-1])
            rows.setdefault(inputs, []).append((c, tuple(cont)))
        out.append([_Row(e, inputs, tuple(targets)) for inputs, targets in rows.items()])
    return out


def _batches(groups: list[list[_Row]], batch_size: int) -> list[list[_Row]]:
    """Whole examples per batch, longest first, at most ``batch_size`` rows (or one example)."""
    order = sorted(range(len(groups)), key=lambda i: -max(len(r.inputs) for r in groups[i]))
    batches: list[list[_Row]] = []
    current: list[_Row] = []
    for index in order:
        group = groups[index]
        if current and len(current) + len(group) > batch_size:
            batches.append(current)
            current = []
        current.extend(group)
    if current:
        batches.append(current)
    return batches


def _span(row: _Row) -> int:
    return max(len(targets) for _, targets in row.targets)


def _shared_prefix(rows: list[_Row]) -> int:
    """How many leading input tokens the rows of one example share before the first scored
    position (0 for a single row: nothing to share)."""
    if len(rows) < 2:
        return 0
    first = rows[0].inputs
    shared = min(len(r.inputs) - _span(r) for r in rows)
    for r in rows[1:]:
        common = 0
        while common < shared and r.inputs[common] == first[common]:
            common += 1
        shared = common
    return shared


def _shared_prefixes(batch: list[_Row]) -> list[int]:
    """Per row of ``batch``, the prefix its example's rows share (:func:`_shared_prefix`)."""
    by_example: dict[int, list[_Row]] = {}
    for r in batch:
        by_example.setdefault(r.example, []).append(r)
    shared = {e: _shared_prefix(rows) for e, rows in by_example.items()}
    return [shared[r.example] for r in batch]


def _prefix_cache(
    model: Any, batch: list[_Row], shared: list[int], pad_id: int
) -> tuple[Any, torch.Tensor]:
    """One right-padded forward over the shared prefixes of the batch's examples (those that
    have one); its key/value cache with a row for every row of ``batch``, and the mask of
    each row's real prefix tokens (none for a row without a prefix)."""
    device = model.device
    slots: dict[int, int] = {}
    for r, n in zip(batch, shared, strict=True):
        if n:
            slots.setdefault(r.example, len(slots))
    width = max(shared)
    ids = torch.full((len(slots), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (r, n) in enumerate(zip(batch, shared, strict=True)):
        if n:
            ids[slots[r.example], :n] = torch.tensor(r.inputs[:n])
            mask[row, :n] = 1
    # no mask: a prefix's real positions never see the padding after it
    past = model.model(input_ids=ids.to(device), use_cache=True).past_key_values
    past.reorder_cache(torch.tensor([slots.get(r.example, 0) for r in batch], device=device))
    return past, mask


@torch.inference_mode()
def _loglik(model: Any, batch: list[_Row], pad_id: int) -> list[list[float]]:
    """Per row of one padded forward, the summed log-likelihood of each of its choices.

    A dense model first runs each example's shared prefix (:func:`_prefix_cache`); every
    row then reads the rest of its input on top of that cache."""
    device = model.device
    routed = routing_of(model) is not None
    shared = [0] * len(batch) if routed else _shared_prefixes(batch)
    width = max(len(r.inputs) - n for r, n in zip(batch, shared, strict=True))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    span = max(_span(r) for r in batch)
    # Row r's continuations are predicted at its last _span(r) real positions.
    where = torch.zeros((len(batch), span), dtype=torch.long)
    for row, (r, shift) in enumerate(zip(batch, shared, strict=True)):
        n, k = len(r.inputs) - shift, _span(r)
        ids[row, :n] = torch.tensor(r.inputs[shift:])
        mask[row, :n] = 1
        positions[row] = torch.arange(shift, shift + width)
        where[row, :k] = torch.arange(n - k, n)
    if any(shared):
        past, prefix_mask = _prefix_cache(model, batch, shared, pad_id)
        # the mask hides the padding between a row's prefix and its own tokens
        inputs = {
            "attention_mask": torch.cat([prefix_mask, mask], 1).to(device),
            "position_ids": positions.to(device),
            "past_key_values": past,
            "use_cache": True,
        }
    else:
        # A dense causal model needs no mask for right padding (real positions never see
        # it) and runs faster without one; a routed model needs it to budget each row by its
        # length.
        inputs = {"attention_mask": mask.to(device) if routed else None, "use_cache": False}
    hidden = model.model(input_ids=ids.to(device), **inputs).last_hidden_state
    picked = hidden.gather(1, where.to(device)[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = model.lm_head(picked)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_probs = logits.log_softmax(-1)
    out = []
    for row, r in enumerate(batch):
        k_row = _span(r)
        values = []
        for _, targets in r.targets:
            k = len(targets)
            index = torch.tensor(targets, device=device)[:, None]
            values.append(float(log_probs[row, k_row - k : k_row].gather(-1, index).sum()))
        out.append(values)
    return out


def score_choices(
    model: Any,
    tokenizer: Any,
    examples: Sequence[ChoiceExample],
    batch_size: int = 8,
    progress: bool = True,
) -> ChoiceRun:
    """Score every choice of every example with ``model`` (routed or dense; see the module
    docstring). Raises ValueError for ``batch_size < 1`` or a choice that encodes to no
    tokens."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    start = time.perf_counter()
    groups = rows_of(tokenizer, examples, max_length(model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[list[float]] = [[0.0] * len(e.choices) for e in examples]
    meter = SparsityMeter()
    batches = _batches(groups, batch_size)
    tokens = 0
    with (
        meter.measure(model),
        tqdm(
            total=len(groups), desc="examples", unit="ex", disable=not progress, leave=False
        ) as bar,
    ):
        for batch in batches:
            for row, values in zip(batch, _loglik(model, batch, pad_id), strict=True):
                for (choice, _), value in zip(row.targets, values, strict=True):
                    scores[row.example][choice] = value
            tokens += sum(len(r.inputs) for r in batch)
            bar.update(len({r.example for r in batch}))
    acc, acc_norm = [], []
    for example, lls in zip(examples, scores, strict=True):
        acc.append(float(_argmax(lls) in example.correct))
        normed = [ll / len(choice) for ll, choice in zip(lls, example.choices, strict=True)]
        acc_norm.append(float(_argmax(normed) in example.correct))
    return ChoiceRun(
        loglik=[tuple(s) for s in scores],
        acc=acc,
        acc_norm=acc_norm,
        realized_sparsity=meter.realized_sparsity,
        flop_saving=meter.flop_saving,
        tokens=tokens,
        seconds=time.perf_counter() - start,
    )


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))
