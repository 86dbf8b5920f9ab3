"""The rows ``ftprune eval`` reports (the evaluation rows of DESIGN.md; see
:mod:`ftprune.eval`), computed from per-example scores, and their output forms: the terminal
table, JSON and the retention plot.

A task row: task, metric, dense, routed, retention (routed / dense), ci_low, ci_high
(paired bootstrap of the retention), n, realized_sparsity, flop_saving. Over two or more
tasks, the summary rows ``(mean)`` (retention of the mean accuracy) and ``(mean
retention)`` (mean over tasks of each task's retention), with intervals from resampling
every task's examples. Retrieval cells are merged per family and length.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from evaluation.stats import paired_bootstrap, paired_bootstrap_tasks, retention

if TYPE_CHECKING:
    from evaluation.choice import TaskScores

CHOICE_METRICS = ("acc", "acc_norm")


def task_rows(
    dense: TaskScores, routed: TaskScores, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """One row per metric of a task (see the module docstring)."""
    rows = []
    for metric in dense.metrics:
        d, r = dense.metrics[metric], routed.metrics[metric]
        dense_acc, routed_acc = _mean(d), _mean(r)
        low, high = paired_bootstrap(d, r, resamples, seed)
        rows.append(
            {
                "task": dense.task,
                "metric": metric,
                "dense": dense_acc,
                "routed": routed_acc,
                "retention": retention(dense_acc, routed_acc),
                "ci_low": low,
                "ci_high": high,
                "n": len(d),
                "realized_sparsity": routed.realized_sparsity,
                "flop_saving": routed.flop_saving,
            }
        )
    return rows


def summary_rows(
    dense: Sequence[TaskScores], routed: Sequence[TaskScores], resamples: int, seed: int
) -> list[dict[str, Any]]:
    """``(mean)`` and ``(mean retention)`` rows per metric over two or more tasks (the
    multiple-choice tasks: retrieval cells are summarized per family and length), and, where
    the tasks' primary metrics differ, for ``primary``: each task's own metric (a suite's
    summary, as the paper's suite reports acc_norm for some tasks and acc for others)."""
    tasks = [(d, r) for d, r in zip(dense, routed, strict=True) if not is_retrieval(d)]
    if len(tasks) < 2:
        return []
    routed = [r for _, r in tasks]
    sizes = [len(next(iter(r.metrics.values()))) for r in routed]
    common = {
        "realized_sparsity": _weighted([r.realized_sparsity for r in routed], sizes),
        "flop_saving": _weighted([r.flop_saving for r in routed], sizes),
    }
    rows = []
    # "primary" (each task's own metric) is a metric of its own only where tasks differ
    mixed = len({d.primary for d, _ in tasks}) > 1
    for metric in (*CHOICE_METRICS, "primary") if mixed else CHOICE_METRICS:
        pairs = [
            (d.metrics[d.primary], r.metrics[d.primary])
            if metric == "primary"
            else (d.metrics[metric], r.metrics[metric])
            for d, r in tasks
            if metric == "primary" or metric in d.metrics
        ]
        if len(pairs) >= 2:
            rows += _summary_pair(metric, pairs, common, resamples, seed)
    return rows


def _summary_pair(
    metric: str,
    pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
    common: Mapping[str, Any],
    resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The ``(mean)`` and ``(mean retention)`` rows of one metric from each task's
    (dense, routed) per-example scores."""
    dense_accs = [_mean(d) for d, _ in pairs]
    routed_accs = [_mean(r) for _, r in pairs]
    ci = paired_bootstrap_tasks([d for d, _ in pairs], [r for _, r in pairs], resamples, seed)
    per_task = [retention(d, r) for d, r in zip(dense_accs, routed_accs, strict=True)]
    mean_dense, mean_routed = _mean(dense_accs), _mean(routed_accs)
    shared = {
        "metric": metric,
        "dense": mean_dense,
        "routed": mean_routed,
        "n": sum(len(d) for d, _ in pairs),
        **common,
    }
    return [
        {
            "task": "(mean)",
            **shared,
            "retention": retention(mean_dense, mean_routed),
            "ci_low": ci["retention_of_mean"][0],
            "ci_high": ci["retention_of_mean"][1],
        },
        {
            "task": "(mean retention)",
            **shared,
            "retention": _mean(per_task),
            "ci_low": ci["mean_retention"][0],
            "ci_high": ci["mean_retention"][1],
        },
    ]


def is_retrieval(scores: TaskScores) -> bool:
    return scores.task.startswith("retrieval:")


def retrieval_rows(
    dense: Sequence[TaskScores], routed: Sequence[TaskScores], resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Per retrieval family and length, the rows of all its depths together
    (``retrieval:<family>/<length>``)."""
    from ftprune.eval_compare import merged, retrieval_groups

    routed_groups = retrieval_groups(routed)
    rows = []
    for group, cells in retrieval_groups(dense).items():
        rows += task_rows(
            merged(cells, group), merged(routed_groups[group], group), resamples, seed
        )
    return rows


def _interval(row: Mapping[str, Any]) -> str:
    return "" if math.isnan(row["ci_low"]) else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a terminal table."""
    from ftprune.tables import Column, render

    return render(
        rows,
        [
            Column("schedule", "label"),
            Column("router", "router"),
            Column("task", "task"),
            Column("metric", "metric"),
            Column("dense", "dense", ".4g"),
            Column("routed", "routed", ".4g"),
            Column("retention", "retention", ".3f"),
            Column("95% CI", _interval),
            Column("n", "n", "d"),
            Column("real S", "realized_sparsity", ".3f"),
            Column("FLOP sv", "flop_saving", ".3f"),
        ],
    )


def json_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with NaN written as null (JSON has no NaN)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in rows
    ]


def plot(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """One PNG: retention per (schedule, router) with its interval, for each task and
    metric except the text metrics that have no retention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not math.isnan(r["retention"])]
    series = list(dict.fromkeys((r["label"], r["router"]) for r in shown))
    groups = list(dict.fromkeys((r["task"], r["metric"]) for r in shown))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) / 3), 4.5))
    for s, (label, router) in enumerate(series):
        xs, ys, err_low, err_high = [], [], [], []
        for g, group in enumerate(groups):
            row = next(
                (
                    r
                    for r in shown
                    if (r["label"], r["router"]) == (label, router)
                    and (r["task"], r["metric"]) == group
                ),
                None,
            )
            if row is None:
                continue
            xs.append(g + (s - (len(series) - 1) / 2) * width)
            ys.append(row["retention"])
            low = row["ci_low"] if not math.isnan(row["ci_low"]) else row["retention"]
            high = row["ci_high"] if not math.isnan(row["ci_high"]) else row["retention"]
            err_low.append(max(0.0, row["retention"] - low))
            err_high.append(max(0.0, high - row["retention"]))
        ax.bar(xs, ys, width, yerr=[err_low, err_high], capsize=2, label=f"{label} + {router}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{t}\n{m}" for t, m in groups], fontsize=7)
    ax.set_ylabel("retention (routed / dense), 95% CI")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    total = sum(weights)
    return math.fsum(v * w for v, w in zip(values, weights, strict=True)) / total if total else 0.0
