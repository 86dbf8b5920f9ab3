"""RULER-style retrieval prompts at a chosen token length, with the key at a chosen depth.

A prompt is a list of token ids of exactly ``length`` tokens: an instruction, a haystack
(essay sentences, or SQuAD paragraphs for ``qa``) with the key inserted at the sentence
boundary nearest to ``depth`` of the haystack (0: first, 1: last, right before the
question), then the question. Every example carries its answer and three distractor
answers as continuations, so it is scored both by greedy exact match (does greedy decoding
reproduce the answer?) and as multiple choice by log-likelihood (see
:mod:`evaluation.continuation`). Families:

- ``niah_single``: one needle, "The special magic number for <key> is <7 digits>."; the
  distractor answers are numbers the prompt does not hold;
- ``niah_multikey``: four needles with different keys (the others at random depths); the
  distractors are the other needles' numbers;
- ``variable_tracking``: ``VAR X = <5 digits>.`` at the depth and ``VAR Y = VAR X.`` later
  (one hop), among three other assignments; the question asks for Y, the distractors are the
  other variables' values;
- ``qa``: a SQuAD paragraph among distractor paragraphs of other articles; the question is
  one of its own, the distractors answers to questions of the distractor paragraphs.

Streams: ``eval`` and ``calibration`` draw their haystacks from disjoint text
(:mod:`evaluation.haystack`) and their random choices from generators seeded by strings
that name the stream, so no prompt, haystack or seed is shared between them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from evaluation.examples import TaskError
from evaluation.haystack import STREAMS, Stream, cache_root, essay_sentences, squad_paragraphs

PREFIX = "retrieval:"
FAMILIES = ("niah_single", "niah_multikey", "variable_tracking", "qa")
MIN_LENGTH = 256
_ADJECTIVES = (
    "amber bold brave bright calm clever dusty eager fancy gentle golden happy hidden icy "
    "jolly kind lively lucky mellow noble proud quiet rapid silent silver sunny swift "
    "tidy vivid wild witty"
).split()
_NOUNS = (
    "anchor apple badger button candle castle cloud comet dragon falcon forest garden "
    "harbor island jacket ladder lantern meadow mirror needle orchard pebble pencil "
    "planet river rocket saddle tunnel violin window"
).split()
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NIAH_HEAD = (
    "A few special magic numbers are hidden in the text below. Remember them: you will "
    "be asked for one of them afterwards.\n\n"
)
NIAH_TAIL = (
    "\n\nQuestion: What is the special magic number for {key}?\n"
    "Answer: The special magic number for {key} is"
)
VAR_HEAD = "Some variables are assigned values in the text below. Keep track of them.\n\n"
VAR_TAIL = "\n\nQuestion: What is the value of VAR {name}?\nAnswer: The value of VAR {name} is"
QA_HEAD = "Answer the question using the documents below.\n\n"
QA_TAIL = "\n\nQuestion: {question}\nAnswer:"


@dataclass(frozen=True)
class RetrievalExample:
    """One prompt of exactly ``length`` token ids and its answer continuations (token ids):
    ``choices[gold]`` is the answer, the others distractors."""

    family: str
    length: int
    depth: float
    prompt: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]
    gold: int
    answer: str


Cell = tuple[str, int, int]  # family, length, depth %


def cell_name(family: str, length: int, depth: float) -> str:
    """The task name of one retrieval cell: ``retrieval:<family>/<length>/<depth %>``."""
    return f"{PREFIX}{family}/{length}/{round(depth * 100)}"


def parse_cell(task: str) -> Cell | None:
    """(family, length, depth %) of a retrieval cell's task name, else None."""
    if not task.startswith(PREFIX) or task.count("/") != 2:
        return None
    family, length, depth = task.removeprefix(PREFIX).split("/")
    return family, int(length), int(depth)


def check_family(family: str) -> str:
    name = family.removeprefix(PREFIX)
    if name not in FAMILIES:
        raise TaskError(f"unknown retrieval family {family!r} (known: {', '.join(FAMILIES)})")
    return name


def seed_of(stream: Stream, family: str, length: int, depth: float, index: int) -> str:
    """The seed string of one example: it names the stream, so no two streams share one."""
    return f"ftprune-retrieval/{stream}/{family}/{length}/{depth:.4f}/{index}"


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


@lru_cache(maxsize=8)
def _sentence_ids(tokenizer: Any, stream: Stream, root: Path) -> tuple[tuple[int, ...], ...]:
    sentences = essay_sentences(stream, root)
    encoded = tokenizer([" " + s for s in sentences], add_special_tokens=False)["input_ids"]
    return tuple(tuple(ids) for ids in encoded)


def _fill(units: Sequence[Sequence[int]], start: int, budget: int) -> list[list[int]]:
    """Consecutive units from ``start`` (wrapping around) holding exactly ``budget`` tokens,
    the last one cut short."""
    out: list[list[int]] = []
    total, i = 0, start
    while total < budget:
        unit = list(units[i % len(units)])[: budget - total]
        out.append(unit)
        total += len(unit)
        i += 1
    return out


def _place(units: list[list[int]], needles: list[tuple[float, list[int]]]) -> list[int]:
    """``units`` joined, each needle inserted at the unit boundary nearest to its depth (a
    fraction of the units' tokens); needles at the same boundary keep their given order."""
    ends = [0]
    for unit in units:
        ends.append(ends[-1] + len(unit))
    slots: dict[int, list[list[int]]] = {}
    for depth, ids in needles:
        target = depth * ends[-1]
        boundary = min(range(len(ends)), key=lambda b: (abs(ends[b] - target), b))
        slots.setdefault(boundary, []).append(ids)
    out: list[int] = []
    for b in range(len(units) + 1):
        for ids in slots.get(b, []):
            out += ids
        if b < len(units):
            out += units[b]
    return out


def _shuffled(rng: random.Random, answer: str, distractors: list[str]) -> tuple[list[str], int]:
    choices = [answer, *distractors[:3]]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def _number(rng: random.Random, digits: int, avoid: set[str]) -> str:
    while True:
        value = str(rng.randrange(10 ** (digits - 1), 10**digits))
        if value not in avoid:
            avoid.add(value)
            return value


def _keys(rng: random.Random, count: int) -> list[str]:
    pairs = [f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS]
    return rng.sample(pairs, count)


def _names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(_LETTERS) for _ in range(5)))
    return sorted(names, key=lambda _: rng.random())


def _needles(
    rng: random.Random, family: str, depth: float
) -> tuple[str, str, str, list[tuple[float, str]], list[str]]:
    """(head, tail, answer, needles with depths, distractor answers) of a needle family."""
    taken: set[str] = set()
    if family in ("niah_single", "niah_multikey"):
        count = 1 if family == "niah_single" else 4
        keys = _keys(rng, count)
        values = [_number(rng, 7, taken) for _ in keys]
        text = [
            f" The special magic number for {k} is {v}." for k, v in zip(keys, values, strict=True)
        ]
        placed = [(depth, text[0])] + [(rng.random(), t) for t in text[1:]]
        others = values[1:] if count > 1 else [_number(rng, 7, taken) for _ in range(3)]
        return NIAH_HEAD, NIAH_TAIL.format(key=keys[0]), values[0], placed, others
    names = _names(rng, 5)
    values = [_number(rng, 5, taken) for _ in range(4)]
    placed = [(depth, f" VAR {names[0]} = {values[0]}.")]
    placed.append((depth + (1.0 - depth) * rng.random(), f" VAR {names[1]} = VAR {names[0]}."))
    placed += [
        (rng.random(), f" VAR {n} = {v}.") for n, v in zip(names[2:], values[1:], strict=False)
    ]
    return VAR_HEAD, VAR_TAIL.format(name=names[1]), values[0], placed, values[1:]


def generate(
    tokenizer: Any,
    family: str,
    length: int,
    depth: float,
    index: int,
    stream: Stream = "eval",
    root: Path | None = None,
) -> RetrievalExample:
    """Example ``index`` of ``family`` at ``length`` tokens with its key at ``depth``, from
    ``stream`` (see the module docstring). Deterministic in its arguments."""
    family = check_family(family)
    if stream not in STREAMS:
        raise TaskError(f"unknown stream {stream!r}")
    if length < MIN_LENGTH:
        raise TaskError(f"a retrieval prompt needs at least {MIN_LENGTH} tokens, not {length}")
    if not 0.0 <= depth <= 1.0:
        raise TaskError(f"depth must lie in [0, 1], not {depth}")
    root = root or cache_root()
    rng = random.Random(seed_of(stream, family, length, depth, index))
    if family == "qa":
        return _qa(tokenizer, rng, length, depth, stream, root)
    head, tail, answer, placed, others = _needles(rng, family, depth)
    needles = [(d, _encode(tokenizer, text)) for d, text in placed]
    head_ids, tail_ids = list(tokenizer.encode(head)), _encode(tokenizer, tail)
    budget = length - len(head_ids) - len(tail_ids) - sum(len(ids) for _, ids in needles)
    units = _sentence_ids(tokenizer, stream, root)
    hay = _place(_fill(units, rng.randrange(len(units)), budget), needles)
    return _example(
        tokenizer, family, length, depth, head_ids + hay + tail_ids, rng, answer, others
    )


def _example(
    tokenizer: Any,
    family: str,
    length: int,
    depth: float,
    prompt: list[int],
    rng: random.Random,
    answer: str,
    others: list[str],
) -> RetrievalExample:
    if len(prompt) != length:
        raise TaskError(f"{family}: {length} tokens cannot hold the prompt's fixed parts")
    choices, gold = _shuffled(rng, answer, others)
    encoded = tuple(tuple(_encode(tokenizer, " " + c)) for c in choices)
    return RetrievalExample(family, length, depth, tuple(prompt), encoded, gold, answer)


def _qa(
    tokenizer: Any, rng: random.Random, length: int, depth: float, stream: Stream, root: Path
) -> RetrievalExample:
    paragraphs = squad_paragraphs(stream, root)
    usable = [p for p in paragraphs if p.questions]
    gold = rng.choice(usable)
    question, answer = rng.choice(gold.questions)
    others = [p for p in paragraphs if p.article != gold.article]
    rng.shuffle(others)
    head_ids = list(tokenizer.encode(QA_HEAD))
    tail_ids = _encode(tokenizer, QA_TAIL.format(question=question))
    gold_ids = _encode(tokenizer, f"Document: {gold.text}\n\n")
    units = [_encode(tokenizer, f"Document: {p.text}\n\n") for p in others[:64]]
    budget = length - len(head_ids) - len(tail_ids) - len(gold_ids)
    filled = _fill(units, 0, budget)
    distractors = [
        a for p in others[: len(filled)] for _, a in p.questions if a.lower() != answer.lower()
    ]
    distractors = list(dict.fromkeys(distractors))
    rng.shuffle(distractors)
    if len(distractors) < 3:
        raise TaskError(f"qa at {length} tokens holds too few distractor answers")
    prompt = head_ids + _place(filled, [(depth, gold_ids)]) + tail_ids
    return _example(tokenizer, "qa", length, depth, prompt, rng, answer, distractors)
