"""Paired timing on a shared machine: one call timed on a chosen clock, dense and variant
calls alternated and repeated, and a distribution-free interval for a median."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], Any], clock: str, device: str) -> float:
    """Milliseconds ``fn`` takes on ``clock`` (wall or this process's CPU time), CUDA
    synchronized before and after on a CUDA ``device``."""
    read = CLOCKS[clock]
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    synchronize()
    start = read()
    fn()
    synchronize()
    return (read() - start) * 1000.0


def paired(
    variants: dict[str, tuple[Callable[[], float], Callable[[], float]]],
    warmup: int,
    repeats: int,
    desc: str,
    show_progress: bool,
) -> dict[str, tuple[list[float], list[float]]]:
    """Milliseconds (dense, variant) per variant and repeat, warm-up excluded. ``variants``
    maps a name to its (dense, variant) calls. Each variant runs right next to its dense
    run, the order alternating between repeats, and every repeat visits every variant, so
    a slow stretch of a shared machine falls on all of them alike."""
    from tqdm.auto import tqdm

    pairs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    with tqdm(
        total=(warmup + repeats) * len(variants),
        desc=desc,
        unit="pair",
        disable=not show_progress,
    ) as bar:
        for repeat in range(warmup + repeats):
            for name, (dense, variant) in variants.items():
                if repeat % 2 == 0:
                    dense_ms, variant_ms = dense(), variant()
                else:
                    variant_ms, dense_ms = variant(), dense()
                if repeat >= warmup:
                    pairs[name][0].append(dense_ms)
                    pairs[name][1].append(variant_ms)
                bar.update()
    return pairs


def median_ci95(values: list[float]) -> tuple[float, float]:
    """A distribution-free interval holding the median of what ``values`` sample with at
    least 95% confidence: the j-th smallest and j-th largest value, j the largest rank with
    P(Binomial(n, 1/2) < j) <= 2.5% (at least 1: the whole range for n < 6)."""
    ordered = sorted(values)
    n = len(ordered)
    below, j = 0.0, 0
    while j < n and below + math.comb(n, j) / 2.0**n <= 0.025:
        below += math.comb(n, j) / 2.0**n
        j += 1
    j = max(j, 1)
    return ordered[j - 1], ordered[n - j]
