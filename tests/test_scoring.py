"""Window scoring against the dense teacher, per sequence."""

from __future__ import annotations

import pytest
import torch

from router import StaticRouter, load_model, routing_of
from router.loading import byte_tokenizer
from workers import DataSpec, Scorer, ScorerSettings, WindowComparator
from workers.data import build_sequences
from workers.pool import LocalPool, ScoreRequest
from workers.scoring import merge_stats

TINY = ScorerSettings(
    model="random:llama-tiny",
    calibration_lens=(48, 64),
    calibration_per_length=2,
    heldout_lens=(64,),
    heldout_per_length=2,
    window=8,
    batch_size=2,
)


@pytest.fixture
def sequences():
    return build_sequences(DataSpec("builtin:pydoc", "calibration", (40, 56), 3), byte_tokenizer())


def test_dense_schedule_scores_zero_kl(tiny_llama, sequences):
    comparator = WindowComparator(tiny_llama[0], sequences, window=8, batch_size=2)
    stats = comparator.compare([0.0] * 4, StaticRouter())
    dense = comparator.compare(None)
    metrics = merge_stats(list(stats.values())).metrics()
    assert metrics.kl == pytest.approx(0.0, abs=1e-6)
    assert metrics.top1 == 1.0
    assert metrics.ppl == pytest.approx(merge_stats(list(dense.values())).metrics().ppl, rel=1e-5)
    assert metrics.realized_sparsity == 0.0 and metrics.positions == 6 * 8


def test_sparser_schedules_score_worse_and_model_is_left_unrouted(tiny_llama, sequences):
    comparator = WindowComparator(tiny_llama[0], sequences, window=8)
    light = merge_stats(list(comparator.compare([0.1] * 4, StaticRouter()).values())).metrics()
    heavy = merge_stats(list(comparator.compare([0.7] * 4, StaticRouter()).values())).metrics()
    assert 0.0 < light.kl < heavy.kl
    assert heavy.realized_sparsity == pytest.approx(0.7, abs=0.03)
    assert routing_of(comparator.model) is None


def test_per_sequence_stats_do_not_depend_on_the_slice(tiny_llama, sequences):
    comparator = WindowComparator(tiny_llama[0], sequences, window=8, batch_size=4)
    schedule = [0.2, 0.5, 0.3, 0.2]
    whole = comparator.compare(schedule, StaticRouter())
    part = comparator.compare(schedule, StaticRouter(), indices=[4, 1])
    assert set(part) == {1, 4}
    for index in part:
        assert part[index].kl_sum == pytest.approx(whole[index].kl_sum, rel=1e-4, abs=1e-7)
        assert part[index].tokens == len(sequences[index]) - 1


def test_top_k_teacher_ranks_close_schedules_like_full_kl(sequences):
    """Schedules of one mean whose full window KLs lie within a few percent of each other
    rank the same under the top-K teacher, with K covering most of the teacher's mass (a
    real LM's teacher is peaked: here the final norm is scaled up so that 64 of the 258
    tokens hold over 90% of it)."""
    model, _ = load_model("random:llama-tiny")
    with torch.no_grad():
        model.model.norm.weight.mul_(16.0)
    full = WindowComparator(model, sequences, window=8)
    top = WindowComparator(model, sequences, window=8, teacher_top_k=64)
    schedules = [
        [0.3, 0.3, 0.4, 0.2],
        [0.2, 0.4, 0.3, 0.3],
        [0.3, 0.3, 0.2, 0.4],
        [0.3, 0.3, 0.3, 0.3],
        [0.25, 0.35, 0.3, 0.3],
        [0.35, 0.25, 0.3, 0.3],
    ]

    def kl(comparator: WindowComparator, schedule: list[float]) -> float:
        stats = comparator.compare(schedule, StaticRouter())
        return merge_stats(list(stats.values())).metrics().kl

    full_kl = [kl(full, s) for s in schedules]
    top_kl = [kl(top, s) for s in schedules]
    mass = torch.stack([t.log_probs.exp().sum(-1) for t in top._teachers.values()])
    assert 0.9 < mass.mean().item() < 1.0
    ranked = sorted(range(len(schedules)), key=full_kl.__getitem__)
    gaps = [full_kl[b] / full_kl[a] - 1 for a, b in zip(ranked, ranked[1:], strict=False)]
    assert max(gaps[:3]) < 0.05  # the closest four differ by under 5% each
    assert sorted(range(len(schedules)), key=top_kl.__getitem__) == ranked
    # Coarsening to the top K plus a rest bucket lowers KL, by little at this coverage.
    assert all(0.9 * f <= t <= f + 1e-6 for t, f in zip(top_kl, full_kl, strict=True))


def test_window_longer_than_sequences_is_rejected(tiny_llama):
    sequences = build_sequences(
        DataSpec("builtin:pydoc", "calibration", (16,), 2), byte_tokenizer()
    )
    with pytest.raises(ValueError, match="window"):
        WindowComparator(tiny_llama[0], sequences, window=17)


def test_scorer_and_local_pool_agree():
    scorer = Scorer(TINY)
    schedule = [0.2, 0.4, 0.3, 0.3]
    direct = scorer.score(schedule)
    with LocalPool(TINY) as pool:
        assert pool.num_blocks == 4 and pool.num_sequences == {"calibration": 4, "heldout": 2}
        pooled = pool.evaluate([ScoreRequest(schedule), ScoreRequest([0.3] * 4, sequences=(0, 2))])
        heldout = pool.evaluate([ScoreRequest(schedule, "heldout")])[0]
    assert pooled[0].metrics == direct.metrics
    assert set(pooled[1].per_sequence) == {0, 2}
    assert heldout.split == "heldout" and heldout.metrics.positions == 2 * 8
    assert pooled[0].forward_tokens == 2 * 48 + 2 * 64


def test_block_influence_is_one_minus_the_cosine_of_each_blocks_input_and_output():
    """ShortGPT's BI_i = 1 - mean over tokens of cos(h_i, h_{i+1}), computed here by hand
    from transformers' hidden states, one sequence at a time (the calibration sequences
    differ in length: the mean is over tokens, not over sequences)."""
    influence = Scorer(TINY).block_influence()
    model, tokenizer = load_model(TINY.model)
    sequences = build_sequences(TINY.data_spec("calibration"), tokenizer)
    assert len({len(seq) for seq in sequences}) > 1
    totals, tokens = torch.zeros(4, dtype=torch.float64), 0
    with torch.no_grad():
        for seq in sequences:
            ids = seq[None, :-1]  # the scored inputs: every token but the last
            hidden = model(ids, output_hidden_states=True, use_cache=False).hidden_states
            for block in range(4):
                a, b = hidden[block][0].double(), hidden[block + 1][0].double()
                cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
                totals[block] += (1.0 - cos).sum()
            tokens += ids.shape[1]
    expected = (totals / tokens).tolist()
    assert influence == pytest.approx(expected, rel=1e-4)
    assert len(set(round(bi, 4) for bi in expected)) == 4  # blocks tell apart


def test_block_influence_keeps_the_teacher_outputs_of_its_dense_pass():
    """Block Influence reads every calibration sequence densely: the teacher's window
    outputs of that pass are kept, equal to those scoring computes on its own."""
    scorer = Scorer(TINY)
    scorer.block_influence()
    kept = scorer.comparator("calibration")._teachers
    assert sorted(kept) == list(range(len(scorer.comparator("calibration").sequences)))
    fresh = Scorer(TINY).comparator("calibration").teacher_log_probs()
    assert fresh is not None
    for index, log_probs in enumerate(fresh):
        torch.testing.assert_close(kept[index].log_probs, log_probs, rtol=0, atol=1e-6)
    assert scorer.score([0.3] * 4).fitness == Scorer(TINY).score([0.3] * 4).fitness


def test_window_stats_round_trip_through_json_by_field():
    from workers.scoring import WindowStats

    stats = WindowStats(kl_sum=0.5, agree=7, nll_sum=9.25, positions=8, kept=10, seen=12, tokens=64)
    assert stats.to_json() == [0.5, 7, 9.25, 8, 10, 12, 64]
    assert WindowStats.from_json(stats.to_json()) == stats
    with pytest.raises(ValueError, match="7 values"):
        WindowStats.from_json([0.5, 7, 9.25])
