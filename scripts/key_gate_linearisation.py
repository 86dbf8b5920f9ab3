"""How far the key gate's gradient reaches and how well it predicts admitting a token.

On held-out ``builtin:pydoc`` sequences of ``--length`` tokens, a static-start dynamic
router (``DynamicRouter().start_at_static()``, the baseline training starts from) on a
uniform schedule at ``--sparsity``; the loss is the window distillation KL (last
``--window`` positions) against the dense model, as router training computes it.

- Coverage: the share of never-computed (block, token) decisions (skipped by the block and
  by every later block, outside the window) whose ∂L/∂π is non-zero, with the residual gate
  alone and with the key gate (tests/router_dynamic/admission.py, ``gradient_coverage``).
- Linearisation: at each block of ``--blocks``, ``--tokens`` skipped tokens drawn at random
  (seeded); for each, the predicted change of L from keeping it there (∂L/∂π, sign
  included) and the actual change (the routed model re-run with it kept at that block,
  every other decision fixed); Spearman's rank correlation per block and pooled.

    .venv/bin/python scripts/key_gate_linearisation.py [--blocks 10 20] [--tokens 50]
        [--sequence 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 (the repository root is on the path now)
from scipy.stats import spearmanr  # noqa: E402

from router import load_model, route, unroute  # noqa: E402
from router.dynamic import DynamicRouter  # noqa: E402
from router.training import teacher_outputs  # noqa: E402
from tests.router_dynamic.admission import admission_effects, gradient_coverage  # noqa: E402
from workers.data import DataSpec, build_sequences  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--sequence", type=int, default=0, help="held-out sequence index")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--blocks", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--tokens", type=int, default=50, help="skipped tokens per block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    spec = DataSpec("builtin:pydoc", "heldout", (args.length,), args.sequence + 1)
    ids = build_sequences(spec, tokenizer)[args.sequence][None, :-1]
    teacher, _ = teacher_outputs(model, ids, args.window)
    schedule = [args.sparsity] * model.config.num_hidden_layers
    torch.manual_seed(args.seed)
    router = DynamicRouter().start_at_static()
    report: dict = {"model": args.model, "length": args.length, "sparsity": args.sparsity}
    for key_gate in (False, True):
        started = time.perf_counter()
        try:
            coverage = gradient_coverage(
                model, route(model, schedule, router), ids, teacher, key_gate
            )
        finally:
            unroute(model)
        name = "key_gate" if key_gate else "residual_only"
        reached, total = coverage.reached, coverage.total
        magnitudes = coverage.grads.abs()
        top = magnitudes.flatten().topk(5)
        largest = []
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            decision, _, token = torch.unravel_index(torch.tensor(flat), magnitudes.shape)
            largest.append([coverage.blocks[int(decision)], int(token), value])
        report[f"coverage_{name}"] = {"reached": reached, "pairs": total, "largest": largest}
        print(
            f"coverage, {name}: {reached}/{total} = {reached / total:.4f}, largest |grad| "
            f"(block, token, value) {largest}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    generator = torch.Generator().manual_seed(args.seed)
    kept = round((1 - args.sparsity) * args.length)
    skipped = list(range(1, args.length - kept + 1))  # the static router's skipped tokens
    pairs = []
    for block in args.blocks:
        draw = torch.randperm(len(skipped), generator=generator)[: args.tokens]
        pairs += [(block, skipped[i]) for i in draw.tolist()]
    started = time.perf_counter()
    effects = admission_effects(model, schedule, router, ids, teacher, pairs)
    print(
        f"loss {effects.loss:.6f} (engine re-run {effects.base:.6f}), "
        f"{time.perf_counter() - started:.0f} s"
    )
    rows = []
    for block in [*args.blocks, None]:
        chosen = [i for i, (b, _) in enumerate(pairs) if block is None or b == block]
        predicted, actual = effects.predicted[chosen], effects.actual[chosen]
        rho = float(spearmanr(predicted, actual).statistic)
        sign = float((predicted.sign() == actual.sign()).double().mean())
        rows.append(
            {
                "block": block,
                "tokens": len(chosen),
                "spearman": rho,
                "sign_agreement": sign,
                "actual_mean": float(actual.mean()),
                "actual_min": float(actual.min()),
                "actual_max": float(actual.max()),
            }
        )
        print(
            f"block {'all' if block is None else block}: n={len(chosen)} spearman {rho:.3f}, "
            f"sign agreement {sign:.2f}, actual change mean {actual.mean():+.2e} "
            f"[{actual.min():+.2e}, {actual.max():+.2e}]"
        )
    report["linearisation"] = rows
    report["pairs"] = [
        [b, t, p, a]
        for (b, t), p, a in zip(
            pairs, effects.predicted.tolist(), effects.actual.tolist(), strict=True
        )
    ]
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
