"""Retention statistics: routed accuracy over dense accuracy, with paired bootstrap intervals.

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
