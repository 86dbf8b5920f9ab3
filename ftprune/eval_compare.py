"""``ftprune eval --baseline ROW``: the paired difference between each evaluated row and a
baseline row on the same examples, which is what decides between two methods.

A row is named ``<schedule>+<router>`` (``uniform+static``, ``finetuned+dynamic``, ...) or
``dense``. For every task and metric: mean(row) - mean(baseline), its 95% paired bootstrap
interval (examples resampled, both rows drawing the same ones) and the exact McNemar test
(the examples only one of the two gets right). Summaries: ``(suite)``, the difference of
the mean over the multiple-choice tasks of each task's primary metric (tasks weighted
equally, every task's examples resampled; McNemar pooled over all examples), and per
retrieval family and length the difference over all depths (``retrieval:<family>/<length>``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from evaluation.choice import TaskScores
from evaluation.stats import mcnemar, paired_difference_tasks

DENSE = "dense"
SUITE = "(suite)"


def row_name(label: str, router: str) -> str:
    return f"{label}+{router}"


def retrieval_groups(scores: Sequence[TaskScores]) -> dict[str, list[TaskScores]]:
    """Retrieval cells (``retrieval:<family>/<length>/<depth>``) grouped by family and
    length, in order."""
    groups: dict[str, list[TaskScores]] = {}
    for s in scores:
        if s.task.startswith("retrieval:"):
            groups.setdefault(s.task.rsplit("/", 1)[0], []).append(s)
    return groups


def merged(cells: Sequence[TaskScores], name: str) -> TaskScores:
    """Cells as one task (their examples concatenated; sparsity weighted by examples)."""
    n = sum(c.n for c in cells)
    return TaskScores(
        name,
        {m: [v for c in cells for v in c.metrics[m]] for m in cells[0].metrics},
        sum(c.realized_sparsity * c.n for c in cells) / n,
        sum(c.flop_saving * c.n for c in cells) / n,
        primary=cells[0].primary,
    )


def _row(
    name: str,
    baseline: str,
    task: str,
    metric: str,
    base: Sequence[Sequence[float]],
    other: Sequence[Sequence[float]],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    diff, low, high = paired_difference_tasks(base, other, resamples, seed)
    flat_base = [v for task_values in base for v in task_values]
    flat_other = [v for task_values in other for v in task_values]
    only_base, only_other, p = mcnemar(flat_base, flat_other)
    return {
        "row": name,
        "baseline": baseline,
        "task": task,
        "metric": metric,
        "base": sum(sum(t) / len(t) for t in base) / len(base),
        "other": sum(sum(t) / len(t) for t in other) / len(other),
        "difference": diff,
        "ci_low": low,
        "ci_high": high,
        "mcnemar_p": p,
        "only_base": only_base,
        "only_other": only_other,
        "n": len(flat_base),
    }


def difference_rows(
    name: str,
    baseline: str,
    base: Sequence[TaskScores],
    other: Sequence[TaskScores],
    resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows of ``other`` (row ``name``) against ``base`` (row ``baseline``): per task and
    metric, then the summaries (see the module docstring)."""
    rows = []
    tasks = [
        (b, o) for b, o in zip(base, other, strict=True) if not b.task.startswith("retrieval:")
    ]
    for b, o in tasks:
        for metric in b.metrics:
            rows.append(
                _row(
                    name,
                    baseline,
                    b.task,
                    metric,
                    [b.metrics[metric]],
                    [o.metrics[metric]],
                    resamples,
                    seed,
                )
            )
    if len(tasks) >= 2:
        rows.append(
            _row(
                name,
                baseline,
                SUITE,
                "primary",
                [b.metrics[b.primary] for b, _ in tasks],
                [o.metrics[b.primary] for b, o in tasks],
                resamples,
                seed,
            )
        )
    other_groups = retrieval_groups(other)
    for group, cells in retrieval_groups(base).items():
        b, o = merged(cells, group), merged(other_groups[group], group)
        for metric in b.metrics:
            rows.append(
                _row(
                    name,
                    baseline,
                    group,
                    metric,
                    [b.metrics[metric]],
                    [o.metrics[metric]],
                    resamples,
                    seed,
                )
            )
    return rows


def _interval(row: Mapping[str, Any]) -> str:
    return f"[{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]"


def format_differences(rows: Sequence[dict[str, Any]]) -> str:
    """The difference rows as a terminal table (differences in points of accuracy)."""
    from ftprune.tables import Column, render

    return render(
        rows,
        [
            Column("row", "row"),
            Column("vs", "baseline"),
            Column("task", "task"),
            Column("metric", "metric"),
            Column("base", "base", ".3f"),
            Column("row acc", "other", ".3f"),
            Column("diff", lambda r: 100 * r["difference"], "+.1f"),
            Column("95% CI", _interval),
            Column("McNemar p", "mcnemar_p", ".3g"),
            Column("n", "n", "d"),
        ],
    )


def differences(
    scores: Mapping[str, Sequence[TaskScores]], baseline: str, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Every row's paired difference to ``baseline`` (rows keyed by name: ``dense``,
    ``<schedule>+<router>``)."""
    base = scores[baseline]
    return [
        row
        for name, routed in scores.items()
        if name != baseline
        for row in difference_rows(name, baseline, base, routed, resamples, seed)
    ]
