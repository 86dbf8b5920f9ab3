"""``ftprune bench eval``: the native multiple-choice scorer against lm-eval's ``HFLM`` on
the same examples and model, dense and routed (uniform schedule, static router).

Each task is written once as a local lm-eval task (a JSONL file of the examples' contexts,
choices and correct indices, and a ``multiple_choice`` YAML that reads them verbatim), so
both scorers see the same prompts and continuations. Per task and model variant a row:
task, variant (dense / routed), n, the largest log-likelihood difference between the two,
whether acc and acc_norm agree on every example, each scorer's accuracy, seconds and
examples per second (lm-eval's time is its ``simple_evaluate`` call, the local dataset load
included; its task index is built and the model warmed up on one example before timing),
and their ratio. lm-eval runs a routed
model one request per forward (see :mod:`evaluation.lmeval`); the native scorer batches.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from evaluation.tasks import ChoiceTask

YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_lmeval_task(task: ChoiceTask, directory: Path) -> Path:
    """A local lm-eval task holding ``task``'s examples verbatim, in a directory of its own
    (an include path defines only it); returns its YAML."""
    name = "ftprune_bench_" + "".join(c if c.isalnum() else "_" for c in task.name)
    directory = directory / name
    directory.mkdir()
    data = directory / f"{name}.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"context": e.context, "choices": list(e.choices), "gold": sorted(e.correct)}
            )
            + "\n"
            for e in task.examples
        )
    )
    path = directory / f"{name}.yaml"
    path.write_text(YAML.format(name=name, data=data))
    return path


def run(
    model_spec: str,
    tasks: Sequence[ChoiceTask],
    sparsity: float,
    batch_size: int,
    dtype: str = "float32",
    progress: Any = print,
) -> list[dict[str, Any]]:
    """The rows (see the module docstring)."""
    from evaluation.choice import score_choices
    from evaluation.lmeval import check_lm_tasks, lmeval_scores
    from router import load_model, route, unroute

    if dtype == "float64":  # loaded in float32, widened: agreement to 1e-6 and below
        import torch

        model, tokenizer = load_model(model_spec, "float32")
        model.to(torch.float64)
    else:
        model, tokenizer = load_model(model_spec, dtype)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftprune-bench-eval-") as tmp:
        for task in tasks:
            spec = str(write_lmeval_task(task, Path(tmp)))
            check_lm_tasks([spec])  # builds lm-eval's task index outside the timing
            score_choices(model, tokenizer, task.examples[:1], batch_size, False)  # warm-up
            for variant in ("dense", "routed"):
                if variant == "routed":
                    route(model, [sparsity] * len(model.model.layers))
                try:
                    progress(f"{task.name}, {variant}: native scorer")
                    ours = score_choices(model, tokenizer, task.examples, batch_size, False)
                    progress(f"{task.name}, {variant}: lm-eval")
                    start = time.perf_counter()
                    (theirs,) = lmeval_scores(model, tokenizer, [spec], None, batch_size)
                    lmeval_s = time.perf_counter() - start
                finally:
                    unroute(model)
                assert theirs.loglik is not None
                n = len(task.examples)
                pairs = zip(ours.loglik, theirs.loglik, strict=True)
                diff = max(
                    abs(a - b) for mine, other in pairs for a, b in zip(mine, other, strict=True)
                )
                rows.append(
                    {
                        "task": task.name,
                        "variant": variant,
                        "model": model_spec,
                        "dtype": dtype,
                        "n": n,
                        "sparsity": sparsity if variant == "routed" else 0.0,
                        "realized_sparsity": ours.realized_sparsity,
                        "max_loglik_diff": diff,
                        "acc_equal": ours.acc == theirs.metrics["acc"],
                        "acc_norm_equal": ours.acc_norm == theirs.metrics["acc_norm"],
                        "native_acc": sum(ours.acc) / n,
                        "lmeval_acc": sum(theirs.metrics["acc"]) / n,
                        "native_s": ours.seconds,
                        "lmeval_s": lmeval_s,
                        "native_examples_per_s": n / ours.seconds,
                        "lmeval_examples_per_s": n / lmeval_s,
                        "speed_ratio": lmeval_s / ours.seconds,
                    }
                )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'task':<28}{'variant':<8}{'n':>5}{'max |Δ ll|':>12}{'acc same':>9}"
        f"{'acc':>7}{'native ex/s':>12}{'lm-eval ex/s':>13}{'ratio':>7}"
    ]
    for r in rows:
        same = "yes" if r["acc_equal"] and r["acc_norm_equal"] else "NO"
        lines.append(
            f"{r['task'][:27]:<28}{r['variant']:<8}{r['n']:>5}"
            f"{r['max_loglik_diff']:>12.2e}{same:>9}{r['native_acc']:>7.3f}"
            f"{r['native_examples_per_s']:>12.2f}{r['lmeval_examples_per_s']:>13.2f}"
            f"{r['speed_ratio']:>7.2f}"
        )
    return "\n".join(lines)
