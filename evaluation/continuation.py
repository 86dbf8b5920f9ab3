"""Continuations scored after a prompt read once, as generation reads it.

The prompt is one prefill (a routed model routes it: the prompt is what token pruning
prunes); its key/value cache is then repeated once per continuation
(:func:`router.reuse.repeat_cache`) and every continuation is fed on top of it as decode
tokens, which a routed model computes in every block (its default decode policy). So a
continuation's log-likelihood is what ``generate()`` would see, and

- ``greedy[c]`` is true exactly when greedy decoding after the prompt produces continuation
  c's tokens (every one of its tokens is the argmax given the prompt and its earlier
  tokens): greedy exact match without generating;
- the choice of highest summed log-likelihood is the multiple-choice answer.

Only the prompt's last position and the continuations' positions go through the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from evaluation.choice import SparsityMeter, TaskScores
from evaluation.suites import RetrievalGrid
from router.reuse import repeat_cache


@dataclass(frozen=True)
class Read:
    """Per continuation: summed log-likelihood and whether greedy decoding reproduces it."""

    loglik: tuple[float, ...]
    greedy: tuple[bool, ...]


@torch.inference_mode()
def read_continuations(
    model: Any, prompt: Sequence[int], continuations: Sequence[Sequence[int]], pad_id: int = 0
) -> Read:
    """Score ``continuations`` (token ids, each non-empty) after ``prompt`` (see the module
    docstring)."""
    if not prompt or not continuations or any(not c for c in continuations):
        raise ValueError("need a prompt and non-empty continuations")
    device = model.device
    ids = torch.tensor([list(prompt)], device=device)
    out = model.model(input_ids=ids, use_cache=True)
    first = _log_probs(model, out.last_hidden_state[:, -1:])[0, 0]  # predicts token 0
    n, width = len(continuations), max(len(c) for c in continuations) - 1
    rest = None
    if width > 0:
        cache = out.past_key_values
        repeat_cache(model, cache, n)
        rows = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, len(prompt) + width), dtype=torch.long)
        mask[:, : len(prompt)] = 1
        for r, c in enumerate(continuations):
            rows[r, : len(c) - 1] = torch.tensor(list(c[:-1]))
            mask[r, len(prompt) : len(prompt) + len(c) - 1] = 1
        # An explicit mask: with a cache and several new tokens, SDPA without one would crop
        # the keys (and a routed row is budgeted by its own length).
        hidden = model.model(
            input_ids=rows.to(device),
            attention_mask=mask.to(device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        rest = _log_probs(model, hidden)
    loglik, greedy = [], []
    for r, c in enumerate(continuations):
        steps = [first] + ([rest[r, j] for j in range(len(c) - 1)] if rest is not None else [])
        loglik.append(float(sum(step[t] for step, t in zip(steps, c, strict=True))))
        greedy.append(all(int(step.argmax()) == t for step, t in zip(steps, c, strict=True)))
    return Read(tuple(loglik), tuple(greedy))


def _log_probs(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.lm_head(hidden)
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


def score_retrieval(
    model: Any, tokenizer: Any, grid: RetrievalGrid, progress: bool = True
) -> list[TaskScores]:
    """One :class:`~evaluation.choice.TaskScores` per cell of ``grid`` (family, length,
    depth; :func:`cell_name`), ``grid.samples`` evaluation-stream examples each, with two
    metrics: ``exact_match`` (greedy decoding reproduces the answer) and ``acc`` (the answer
    has the highest log-likelihood among its four choices). A routed model's realized
    sparsity and FLOP saving are those of its prompt prefills."""
    from tqdm.auto import tqdm

    from evaluation.retrieval import cell_name, generate

    cells = [(f, n, d) for f in grid.families for n in grid.lengths for d in grid.depths]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with tqdm(
        total=len(cells) * grid.samples,
        desc="retrieval",
        unit="prompt",
        disable=not progress,
        leave=False,
    ) as bar:
        for family, length, depth in cells:
            meter = SparsityMeter()
            exact, acc, loglik = [], [], []
            with meter.measure(model):
                for index in range(grid.samples):
                    example = generate(tokenizer, family, length, depth, index)
                    read = read_continuations(model, example.prompt, example.choices, pad)
                    best = max(range(len(read.loglik)), key=lambda c: (read.loglik[c], -c))
                    exact.append(float(read.greedy[example.gold]))
                    acc.append(float(best == example.gold))
                    loglik.append(read.loglik)
                    bar.update()
            out.append(
                TaskScores(
                    cell_name(family, length, depth),
                    {"exact_match": exact, "acc": acc},
                    meter.realized_sparsity,
                    meter.flop_saving,
                    loglik,
                )
            )
    return out
