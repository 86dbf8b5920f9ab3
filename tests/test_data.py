"""Calibration data: deterministic, disjoint splits, clear errors."""

from __future__ import annotations

import json

import pytest

from router.loading import byte_tokenizer
from workers.data import (
    RECALL_CUE,
    DataSpec,
    DataSpecError,
    build_sequences,
    disjoint_sequences,
    documents,
    is_recall,
    split_documents,
    split_text,
)
from workers.scoring import ScorerSettings


def test_pydoc_splits_are_disjoint_and_cover_the_text():
    calibration = split_text("builtin:pydoc", "calibration")
    heldout = split_text("builtin:pydoc", "heldout")
    docs = documents("builtin:pydoc")
    assert len(docs) > 50
    assert 0.15 < len(heldout) / (len(heldout) + len(calibration)) < 0.3
    parts = split_documents("builtin:pydoc")
    assert not set(parts["calibration"]) & set(parts["heldout"])
    assert sorted(parts["calibration"] + parts["heldout"]) == list(range(len(docs)))


def test_disjoint_sequences_share_no_token_position_with_the_avoided_ones():
    tokenizer = byte_tokenizer()
    avoid = DataSpec("builtin:pydoc", "heldout", (64,), per_length=4)
    spec = DataSpec("builtin:pydoc", "heldout", (48, 64), per_length=16)
    stream = bytes(tokenizer(split_text("builtin:pydoc", "heldout"))["input_ids"])

    def span(sequence):
        start = stream.find(bytes(sequence.tolist()))
        assert start >= 0
        return start, start + len(sequence)

    taken = [span(s) for s in build_sequences(avoid, tokenizer)]
    fresh = disjoint_sequences(spec, avoid, tokenizer)
    every = [tuple(s.tolist()) for s in build_sequences(spec, tokenizer)]
    assert 0 < len(fresh) < len(every)  # the layouts meet at the split's first token
    assert all(tuple(s.tolist()) in every for s in fresh)
    for start, end in map(span, fresh):
        assert all(end <= lo or hi <= start for lo, hi in taken)
    with pytest.raises(ValueError, match="one source and split"):
        disjoint_sequences(spec, DataSpec("builtin:pydoc", "calibration", (64,), 4), tokenizer)


def test_batches_are_deterministic_with_requested_shapes():
    tokenizer = byte_tokenizer()
    spec = DataSpec("builtin:pydoc", "calibration", (16, 32), per_length=3)
    first = build_sequences(spec, tokenizer)
    second = build_sequences(spec, tokenizer)
    assert [len(s) for s in first] == [17, 17, 17, 33, 33, 33]
    assert all((a == b).all() for a, b in zip(first, second, strict=True))
    rows = [tuple(s.tolist()) for s in first]
    assert len(set(rows)) == len(rows)


def test_span_recall_prompts_repeat_their_opening_at_the_end():
    tokenizer = byte_tokenizer()
    plain = build_sequences(DataSpec("builtin:pydoc", "calibration", (64, 96), 4), tokenizer)
    spec = DataSpec("builtin:pydoc", "calibration", (64, 96), 4, recall_share=0.5, recall_len=20)
    recall = build_sequences(spec, tokenizer)
    assert [is_recall(spec, i) for i in range(8)] == [False, True] * 4
    for index, (sequence, window) in enumerate(zip(recall, plain, strict=True)):
        assert len(sequence) == len(window)
        if not is_recall(spec, index):
            assert (sequence == window).all()
            continue
        cut = len(window) - 20
        assert (sequence[:cut] == window[:cut]).all()
        assert (sequence[cut:] == window[:20]).all()  # the opening again, in order
        assert not (sequence[cut:] == window[cut:]).all()
    avoid = DataSpec("builtin:pydoc", "calibration", (64,), 1)
    disjoint = disjoint_sequences(spec, avoid, tokenizer)
    assert any((s[-20:] == s[:20]).all() for s in disjoint)


@pytest.mark.parametrize("share", [0.1, 0.25, 1 / 3, 0.5, 0.7, 1.0])
def test_recall_prompts_are_spread_evenly_through_every_prefix(share):
    spec = DataSpec("builtin:pydoc", "heldout", (64,), 30, recall_share=share, recall_len=16)
    flags = [is_recall(spec, i) for i in range(30)]
    for prefix in range(1, 31):
        assert sum(flags[:prefix]) == int(prefix * share + 1e-9)


def test_scorer_settings_give_recall_copies_a_cue_before_the_scored_window():
    settings = ScorerSettings("random:llama-tiny", window=24, calibration_recall=0.25)
    calibration = settings.data_spec("calibration")
    assert (calibration.recall_share, calibration.recall_len) == (0.25, 24 + RECALL_CUE)
    assert settings.data_spec("heldout").recall_share == 0.0  # held-out text stays plain
    assert ScorerSettings("random:llama-tiny", window=24).data_spec("calibration").recall_len == 0


def test_bad_recall_layouts_fail_clearly():
    with pytest.raises(DataSpecError, match=r"recall share must lie in \[0, 1\], got 1.5"):
        DataSpec("builtin:pydoc", "calibration", (64,), 2, recall_share=1.5, recall_len=16)
    with pytest.raises(DataSpecError, match=f"longer than the {RECALL_CUE}-token cue, got 8"):
        DataSpec("builtin:pydoc", "calibration", (64, 96), 2, 0.5, RECALL_CUE)
    with pytest.raises(DataSpecError, match="copies of 33 tokens need .* at least 65 tokens"):
        DataSpec("builtin:pydoc", "calibration", (64, 96), 2, 0.5, 33)
    DataSpec("builtin:pydoc", "calibration", (64, 96), 2, 0.5, 32)  # half of 65 tokens fits


def test_text_and_jsonl_files(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"document {i} " + "word " * 50 for i in range(20)))
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": f"record {i} " + "token " * 50}) for i in range(20))
    )
    for path in (text, jsonl):
        docs = documents(str(path))
        assert len(docs) == 20
        held = split_text(str(path), "heldout").split("\n\n")
        assert 3 <= len(held) <= 5 and all(doc in docs for doc in held)
        sequences = build_sequences(DataSpec(str(path), "calibration", (32,), 4), byte_tokenizer())
        assert [len(s) for s in sequences] == [33] * 4


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(DataSpecError, match="not found"):
        documents(str(tmp_path / "missing.txt"))
    with pytest.raises(DataSpecError, match="builtin:pydoc"):
        documents("wikitext")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"no_text": 1}\n')
    with pytest.raises(DataSpecError, match="bad.jsonl:2"):
        documents(str(bad))
    small = tmp_path / "small.txt"
    small.write_text("too short")
    with pytest.raises(DataSpecError, match="too few"):
        build_sequences(DataSpec(str(small), "calibration", (64,), 2), byte_tokenizer())
