"""Window scoring against the dense teacher."""

from __future__ import annotations

import pytest

from router import StaticRouter, routing_of
from router.loading import byte_tokenizer
from workers import DataSpec, Scorer, ScorerSettings, WindowComparator, build_batches
from workers.pool import LocalPool

TINY = ScorerSettings(model="random:llama-tiny", calibration_lens=(48, 64),
                      calibration_per_length=2, heldout_lens=(64,), heldout_per_length=2,
                      window=8, batch_size=2)


@pytest.fixture
def comparator(tiny_llama):
    model, _ = tiny_llama
    batches = build_batches(DataSpec("builtin:pydoc", "calibration", (40, 56), 2, 2),
                            byte_tokenizer())
    return WindowComparator(model, batches, window=8)


def test_dense_schedule_scores_zero_kl(comparator):
    metrics = comparator.compare([0.0] * 4, StaticRouter())
    assert metrics.kl == pytest.approx(0.0, abs=1e-6)
    assert metrics.top1 == 1.0
    assert metrics.ppl == pytest.approx(comparator.dense_ppl, rel=1e-5)
    assert metrics.realized_sparsity == 0.0
    assert metrics.positions == 4 * 8


def test_sparser_schedules_score_worse_and_model_is_left_unrouted(comparator):
    light = comparator.compare([0.1] * 4, StaticRouter())
    heavy = comparator.compare([0.7] * 4, StaticRouter())
    assert 0.0 < light.kl < heavy.kl
    assert heavy.realized_sparsity == pytest.approx(0.7, abs=0.03)
    assert routing_of(comparator.model) is None


def test_window_longer_than_sequences_is_rejected(tiny_llama):
    model, _ = tiny_llama
    batches = build_batches(DataSpec("builtin:pydoc", "calibration", (16,), 2), byte_tokenizer())
    with pytest.raises(ValueError, match="window"):
        WindowComparator(model, batches, window=17)


def test_scorer_and_local_pool_agree():
    scorer = Scorer(TINY)
    schedule = [0.2, 0.4, 0.3, 0.3]
    direct = scorer.score(schedule)
    with LocalPool(TINY) as pool:
        pooled = pool.evaluate([schedule, [0.3] * 4])
        heldout = pool.evaluate([schedule], split="heldout")[0]
    assert pooled[0].metrics == direct.metrics
    assert pooled[0].fitness == direct.metrics.kl
    assert pooled[1].schedule == [0.3] * 4
    assert heldout.split == "heldout" and heldout.metrics.positions == 2 * 8
