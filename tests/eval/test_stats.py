"""Retention and paired bootstrap intervals on fixed inputs."""

from __future__ import annotations

import math

import pytest

from evaluation.choice import TaskScores
from evaluation.stats import paired_bootstrap, paired_bootstrap_tasks, retention
from ftprune.eval_rows import summary_rows, task_rows


def test_retention():
    assert retention(0.8, 0.6) == pytest.approx(0.75)
    assert math.isnan(retention(0.0, 0.5))


def test_two_examples_by_hand():
    # Resampled routed means are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4 (dense is
    # always 1): the 2.5% and 97.5% percentiles are 0 and 1.
    assert paired_bootstrap([1, 1], [1, 0], resamples=4000, seed=3) == (0.0, 1.0)


def test_pairing_removes_shared_noise():
    dense = [1, 0, 1, 1, 0, 1, 0, 1] * 10
    assert paired_bootstrap(dense, dense) == (1.0, 1.0)  # unpaired resampling would not


def test_interval_matches_the_normal_approximation():
    routed = [1.0] * 300 + [0.0] * 100  # p = 0.75 over a dense model that is always right
    low, high = paired_bootstrap([1.0] * 400, routed, resamples=4000, seed=1)
    half = 1.96 * math.sqrt(0.75 * 0.25 / 400)
    assert low == pytest.approx(0.75 - half, abs=0.01)
    assert high == pytest.approx(0.75 + half, abs=0.01)


def test_seeded():
    dense = [i % 2 for i in range(61)]
    routed = [i % 3 == 0 for i in range(61)]
    first = paired_bootstrap(dense, routed, resamples=300, seed=5)
    assert first == paired_bootstrap(dense, routed, resamples=300, seed=5)
    assert first != paired_bootstrap(dense, routed, resamples=300, seed=6)


def test_no_defined_ratio_and_bad_input():
    assert all(math.isnan(v) for v in paired_bootstrap([0, 0], [1, 0]))
    with pytest.raises(ValueError):
        paired_bootstrap([1], [1, 0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_task_rows_and_summaries():
    dense = [TaskScores("a", {"acc": [1, 1, 0, 1]}), TaskScores("b", {"acc": [1, 0]})]
    routed = [
        TaskScores("a", {"acc": [1, 0, 0, 1]}, 0.3, 0.35),
        TaskScores("b", {"acc": [1, 0]}, 0.2, 0.25),
    ]
    (row,) = task_rows(dense[0], routed[0], 500, 0)
    assert (row["dense"], row["routed"], row["n"]) == (0.75, 0.5, 4)
    assert row["retention"] == pytest.approx(2 / 3)
    assert row["ci_low"] <= row["retention"] <= row["ci_high"]
    assert (row["realized_sparsity"], row["flop_saving"]) == (0.3, 0.35)
    of_mean, mean_retention = summary_rows(dense, routed, 500, 0)
    assert of_mean["task"] == "(mean)" and mean_retention["task"] == "(mean retention)"
    assert of_mean["dense"] == pytest.approx(0.625) and of_mean["routed"] == pytest.approx(0.5)
    assert of_mean["retention"] == pytest.approx(0.5 / 0.625)
    assert mean_retention["retention"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert of_mean["realized_sparsity"] == pytest.approx((0.3 * 4 + 0.2 * 2) / 6)
    assert summary_rows(dense[:1], routed[:1], 500, 0) == []


def test_task_intervals_identical_tasks():
    scores = [[1, 0, 1, 1], [0, 1, 1]]
    ci = paired_bootstrap_tasks(scores, scores)
    assert ci == {"mean_retention": (1.0, 1.0), "retention_of_mean": (1.0, 1.0)}
