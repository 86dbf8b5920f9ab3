"""Paired statistics: retention (routed accuracy over dense accuracy) and the difference
between two rows, with paired bootstrap intervals, and an exact McNemar test.

Every resample draws the same example indices for the dense and the routed scores (paired),
from a seeded generator, so an interval is reproducible and reflects that both models saw
the same questions. The interval is the percentile interval of the resampled retention
ratios; resamples whose dense mean is 0 (no defined ratio) are dropped.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def retention(dense: float, routed: float) -> float:
    """routed / dense; NaN when dense is 0."""
    return routed / dense if dense else math.nan


def _check(
    dense: Sequence[float], routed: Sequence[float], resamples: int, confidence: float
) -> None:
    if len(dense) != len(routed):
        raise ValueError(
            f"paired scores differ in length: {len(dense)} dense, {len(routed)} routed"
        )
    if not dense:
        raise ValueError("no scores to resample")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie in (0, 1)")


def paired_bootstrap(
    dense: Sequence[float],
    routed: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the retention mean(routed) / mean(dense) over paired
    resamples of the examples; (NaN, NaN) when no resample has a positive dense mean."""
    _check(dense, routed, resamples, confidence)
    d, r = np.asarray(dense, dtype=np.float64), np.asarray(routed, dtype=np.float64)
    index = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    dense_means, routed_means = d[index].mean(axis=1), r[index].mean(axis=1)
    defined = dense_means != 0
    if not defined.any():
        return math.nan, math.nan
    ratios = routed_means[defined] / dense_means[defined]
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap_tasks(
    dense: Sequence[Sequence[float]],
    routed: Sequence[Sequence[float]],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Intervals of the two summaries over several tasks, examples resampled within each
    task (paired): ``mean_retention`` (the mean over tasks of routed / dense) and
    ``retention_of_mean`` (mean routed accuracy over mean dense accuracy, tasks weighted
    equally)."""
    if len(dense) != len(routed) or not dense:
        raise ValueError("need the same, non-zero number of dense and routed tasks")
    rng = np.random.default_rng(seed)
    dense_means, routed_means = [], []
    for d_task, r_task in zip(dense, routed, strict=True):
        _check(d_task, r_task, resamples, confidence)
        d, r = np.asarray(d_task, dtype=np.float64), np.asarray(r_task, dtype=np.float64)
        index = rng.integers(0, len(d), size=(resamples, len(d)))
        dense_means.append(d[index].mean(axis=1))
        routed_means.append(r[index].mean(axis=1))
    dm, rm = np.stack(dense_means), np.stack(routed_means)  # (tasks, resamples)
    tail = (1.0 - confidence) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        per_task = np.where(dm != 0, rm / dm, np.nan)
        mean_retention = per_task.mean(axis=0)
        of_mean = np.where(dm.mean(axis=0) != 0, rm.mean(axis=0) / dm.mean(axis=0), np.nan)
    out = {}
    for name, values in (("mean_retention", mean_retention), ("retention_of_mean", of_mean)):
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(values, [tail, 1.0 - tail])
            out[name] = (float(low), float(high))
    return out


def paired_difference(
    base: Sequence[float],
    other: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """mean(other) - mean(base) on the same examples and the percentile interval of that
    difference over paired resamples of the examples: (difference, low, high)."""
    diff, low, high = paired_difference_tasks([base], [other], resamples, seed, confidence)
    return diff, low, high


def paired_difference_tasks(
    base: Sequence[Sequence[float]],
    other: Sequence[Sequence[float]],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """The difference of the mean over tasks (tasks weighted equally) of ``other``'s and
    ``base``'s accuracy, with a percentile interval from resampling every task's examples
    (paired: both rows draw the same examples). One task gives the plain paired difference."""
    if len(base) != len(other) or not base:
        raise ValueError("need the same, non-zero number of tasks for both rows")
    rng = np.random.default_rng(seed)
    point, draws = 0.0, np.zeros(resamples)
    for b_task, o_task in zip(base, other, strict=True):
        _check(b_task, o_task, resamples, confidence)
        delta = np.asarray(o_task, dtype=np.float64) - np.asarray(b_task, dtype=np.float64)
        point += float(delta.mean()) / len(base)
        index = rng.integers(0, len(delta), size=(resamples, len(delta)))
        draws += delta[index].mean(axis=1) / len(base)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return point, float(low), float(high)


def mcnemar(base: Sequence[float], other: Sequence[float]) -> tuple[int, int, float]:
    """Exact McNemar test on paired 0/1 scores: (examples only ``base`` gets right, examples
    only ``other`` gets right, two-sided p-value). Under the null hypothesis the discordant
    examples split as a fair coin: p = min(1, 2 · P(X <= min(b, c))), X ~ Bin(b + c, 1/2);
    p = 1 without discordant examples."""
    if len(base) != len(other):
        raise ValueError(f"paired scores differ in length: {len(base)} and {len(other)}")
    if any(v not in (0.0, 1.0) for v in (*base, *other)):
        raise ValueError("McNemar's test needs 0/1 scores")
    only_base = sum(1 for b, o in zip(base, other, strict=True) if b > o)
    only_other = sum(1 for b, o in zip(base, other, strict=True) if o > b)
    n = only_base + only_other
    if n == 0:
        return 0, 0, 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_base, only_other) + 1)) / 2.0**n
    return only_base, only_other, min(1.0, 2.0 * tail)
