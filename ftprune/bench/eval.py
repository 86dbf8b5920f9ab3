"""``ftprune bench eval``: the native multiple-choice scorer against lm-eval's ``HFLM`` on
the same examples and model, dense and routed (uniform schedule, static router).

Each task is written once as a local lm-eval task. An ``olmo:<task>`` source whose prompt is
lm-eval's own (ARC, HellaSwag, WinoGrande, MMLU, BoolQ, SciQ: see :mod:`evaluation.olmo`)
becomes lm-eval's stock task reading the same rows (the local YAML includes the stock one),
so the comparison checks the prompt, the continuations and the metrics as well as the
scores. Any other task becomes a JSONL file of the examples' contexts, choices and correct
indices with a ``multiple_choice`` YAML that reads them verbatim, so both scorers see the
same prompts and continuations. Per task and model variant a row:
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
from typing import TYPE_CHECKING, Any, Callable, Sequence

from evaluation.choice import TaskScores
from evaluation.tasks import ChoiceTask, TaskError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from router.loading import CausalLM

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


def lmeval_files(spec: str, task: ChoiceTask, directory: Path) -> list[tuple[Path, list[int]]]:
    """The local lm-eval tasks that hold ``task`` (from ``spec``) and the indices of its
    examples each holds, in order: lm-eval's stock task where the source has one, else the
    examples verbatim."""
    from evaluation import olmo

    if spec.startswith(olmo.PREFIX):
        source = olmo.SOURCES[olmo.check_name(spec)]
        if source.stock is not None:
            from evaluation.lmeval import stock_tasks

            rows = olmo.load_rows(spec, len(task.examples))
            return stock_tasks(source.stock, rows, directory)
    if any(e.contexts for e in task.examples):
        raise TaskError(f"{task.name}: examples with one context per choice need a stock task")
    return [(write_lmeval_task(task, directory), list(range(len(task.examples))))]


def lmeval_run(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    files: list[tuple[Path, list[int]]],
    n: int,
    batch_size: int,
) -> TaskScores:
    """lm-eval's scores of the tasks in ``files``, reassembled in the examples' order."""
    from evaluation.lmeval import lmeval_scores

    loglik: list[tuple[float, ...]] = [()] * n
    metrics: dict[str, list[float]] = {}
    sparsity = saving = 0.0
    for path, indices in files:
        (part,) = lmeval_scores(model, tokenizer, [str(path)], None, batch_size)
        assert part.loglik is not None
        for metric, values in part.metrics.items():
            column = metrics.setdefault(metric, [0.0] * n)
            for i, v in zip(indices, values, strict=True):
                column[i] = v
        for i, ll in zip(indices, part.loglik, strict=True):
            loglik[i] = ll
        sparsity += part.realized_sparsity * len(indices) / n
        saving += part.flop_saving * len(indices) / n
    return TaskScores("lm-eval", metrics, sparsity, saving, loglik)


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
    tasks: Sequence[tuple[str, ChoiceTask]],
    sparsity: float,
    batch_size: int,
    dtype: str = "float32",
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """The rows of every (spec, task) pair (see the module docstring)."""
    from evaluation.choice import score_choices
    from evaluation.lmeval import check_lm_tasks
    from router import load_model

    if dtype == "float64":  # loaded in float32, widened: agreement to 1e-6 and below
        import torch

        model, tokenizer = load_model(model_spec, "float32")
        model.to(torch.float64)
    else:
        model, tokenizer = load_model(model_spec, dtype)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ftprune-bench-eval-") as tmp:
        for spec, task in tasks:
            directory = Path(tmp) / f"task{len(rows)}"
            directory.mkdir()
            files = lmeval_files(spec, task, directory)
            check_lm_tasks([str(p) for p, _ in files])  # builds the index outside the timing
            score_choices(model, tokenizer, task.examples[:1], batch_size, False)  # warm-up
            for variant in ("dense", "routed"):
                row = _compare(
                    model, tokenizer, task, files, variant, sparsity, batch_size, progress
                )
                rows.append({"model": model_spec, "dtype": dtype, **row})
    return rows


def _compare(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    task: ChoiceTask,
    files: list[tuple[Path, list[int]]],
    variant: str,
    sparsity: float,
    batch_size: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Both scorers on one task and model variant (dense, or routed at ``sparsity``)."""
    from evaluation.choice import score_choices
    from router import route, unroute

    if variant == "routed":
        route(model, [sparsity] * len(model.model.layers))
    try:
        progress(f"{task.name}, {variant}: native scorer")
        ours = score_choices(model, tokenizer, task.examples, batch_size, False)
        progress(f"{task.name}, {variant}: lm-eval")
        start = time.perf_counter()
        theirs = lmeval_run(model, tokenizer, files, len(task.examples), batch_size)
        lmeval_s = time.perf_counter() - start
    finally:
        unroute(model)
    assert theirs.loglik is not None
    n = len(task.examples)
    pairs = zip(ours.loglik, theirs.loglik, strict=True)
    diff = max(abs(a - b) for mine, other in pairs for a, b in zip(mine, other, strict=True))
    mine = {"acc": ours.acc, "acc_norm": ours.acc_norm}
    return {
        "task": task.name,
        "lmeval_task": "stock"
        if len(files) > 1 or "ftprune_stock_" in files[0][0].name
        else "verbatim",
        "variant": variant,
        "n": n,
        "sparsity": sparsity if variant == "routed" else 0.0,
        "realized_sparsity": ours.realized_sparsity,
        "max_loglik_diff": diff,
        "acc_equal": ours.acc == theirs.metrics["acc"],
        "acc_norm_equal": all(mine[m] == theirs.metrics[m] for m in theirs.metrics),
        "metrics": ",".join(theirs.metrics),
        "native_acc": sum(ours.acc) / n,
        "lmeval_acc": sum(theirs.metrics["acc"]) / n,
        "native_s": ours.seconds,
        "lmeval_s": lmeval_s,
        "native_examples_per_s": n / ours.seconds,
        "lmeval_examples_per_s": n / lmeval_s,
        "speed_ratio": lmeval_s / ours.seconds,
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    from ftprune.tables import Column, render

    return render(
        rows,
        [
            Column("task", "task"),
            Column("variant", "variant"),
            Column("lm-eval task", "lmeval_task"),
            Column("n", "n", "d"),
            Column("max |Δ ll|", "max_loglik_diff", ".2e"),
            Column("acc same", lambda r: bool(r["acc_equal"] and r["acc_norm_equal"])),
            Column("acc", "native_acc", ".3f"),
            Column("native ex/s", "native_examples_per_s", ".2f"),
            Column("lm-eval ex/s", "lmeval_examples_per_s", ".2f"),
            Column("ratio", "speed_ratio", ".2f"),
        ],
    )
