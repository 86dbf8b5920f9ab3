"""Calibration and held-out token sequences, built deterministically from a text source.

Sources:

- ``builtin:pydoc``: the English documentation text that ships with CPython
  (``pydoc_data.topics``, ~465k characters, no network needed);
- a ``.txt`` file (documents separated by blank lines) or a ``.jsonl`` file (one JSON object
  per line with a ``"text"`` field).

Every source is a list of documents. Walking them in order, a document goes to the held-out
split whenever the held-out share of the characters seen so far is below 20%, and to the
calibration split otherwise: the split is deterministic, interleaved through the source,
holds about a fifth of the text, and the two parts never share a document.
Within a split, sequences are non-overlapping windows of the token stream, evenly spaced, so
the same (source, split, lengths, count) always yields the same tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

BUILTIN_PYDOC = "builtin:pydoc"
HELDOUT_SHARE = 0.2
Split = Literal["calibration", "heldout"]
SPLITS: tuple[Split, ...] = ("calibration", "heldout")


class DataSpecError(ValueError):
    """A calibration source that cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class DataSpec:
    """Which sequences to build: ``per_length`` sequences of each length in ``seq_lens``.

    Each sequence holds ``L + 1`` tokens: the model reads the first L, and the last token is
    the true continuation of position L - 1 (used for perplexity).
    """

    source: str
    split: Split
    seq_lens: tuple[int, ...]
    per_length: int

    def __post_init__(self) -> None:
        """Refuse a reserved task (see :mod:`workers.tasks`) as calibration data."""
        if self.split == "calibration":
            from workers.tasks import TaskError, check_not_reserved

            try:
                check_not_reserved(self.source)
            except TaskError as error:
                raise DataSpecError(str(error)) from None


def check_source(source: str) -> None:
    """Raise :class:`DataSpecError` unless ``source`` is readable. Reads no more than needed."""
    if source == BUILTIN_PYDOC:
        return
    path = Path(source)
    if path.suffix not in (".txt", ".jsonl"):
        raise DataSpecError(
            f"calibration source {source!r}: use 'builtin:pydoc', a .txt "
            "file or a .jsonl file with a 'text' field"
        )
    if not path.is_file():
        raise DataSpecError(f"calibration file not found: {source}")


def documents(source: str) -> list[str]:
    """The source's documents, in a fixed order."""
    check_source(source)
    if source == BUILTIN_PYDOC:
        from pydoc_data.topics import topics

        return [topics[name] for name in sorted(topics)]
    path = Path(source)
    if path.suffix == ".jsonl":
        docs = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataSpecError(
                    f"{source}:{line_no}: expected a JSON object with a 'text' field"
                ) from None
        return docs
    return [doc for doc in path.read_text(encoding="utf-8").split("\n\n") if doc.strip()]


def split_documents(source: str) -> dict[Split, list[int]]:
    """Indices (into :func:`documents`) of each split's documents."""
    parts: dict[Split, list[int]] = {"calibration": [], "heldout": []}
    held_chars = seen_chars = 0
    for index, doc in enumerate(documents(source)):
        if held_chars < HELDOUT_SHARE * seen_chars:
            parts["heldout"].append(index)
            held_chars += len(doc)
        else:
            parts["calibration"].append(index)
        seen_chars += len(doc)
    return parts


def split_text(source: str, split: Split) -> str:
    """All documents of one split, joined by blank lines."""
    docs = documents(source)
    return "\n\n".join(docs[i] for i in split_documents(source)[split])


def build_sequences(spec: DataSpec, tokenizer: Any) -> list[torch.Tensor]:
    """Token sequences for ``spec``, each a 1-D long tensor of L + 1 tokens, ordered by
    length and then by position in the source.

    Raises :class:`DataSpecError` when the split holds too few tokens.
    """
    tokens = _split_tokens(spec, tokenizer)
    return [torch.tensor(tokens[a:b], dtype=torch.long) for a, b in _spans(spec, len(tokens))]


def disjoint_sequences(spec: DataSpec, avoid: DataSpec, tokenizer: Any) -> list[torch.Tensor]:
    """The sequences of ``spec`` that share no token position with any sequence of ``avoid``
    (the same source and split), in :func:`build_sequences` order: data that a measurement
    made on ``avoid``'s sequences has never seen. Fewer than ``spec`` asks for, possibly none.
    """
    if (spec.source, spec.split) != (avoid.source, avoid.split):
        raise ValueError("disjoint_sequences compares layouts of one source and split")
    tokens = _split_tokens(spec, tokenizer)
    taken = _spans(avoid, len(tokens))
    return [
        torch.tensor(tokens[a:b], dtype=torch.long)
        for a, b in _spans(spec, len(tokens))
        if all(b <= lo or hi <= a for lo, hi in taken)
    ]


def _split_tokens(spec: DataSpec, tokenizer: Any) -> list[int]:
    text = split_text(spec.source, spec.split)
    return tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]


def _spans(spec: DataSpec, total: int) -> list[tuple[int, int]]:
    """[start, end) token spans of ``spec``'s sequences in a split of ``total`` tokens."""
    lengths = sorted(L for L in spec.seq_lens for _ in range(spec.per_length))
    slot = max(spec.seq_lens) + 1
    slots = total // slot
    if slots < len(lengths):
        raise DataSpecError(
            f"{spec.source} ({spec.split}) has {total} tokens: too few for "
            f"{len(lengths)} sequences of up to {slot - 1} tokens"
        )
    # Evenly spaced, non-overlapping slots; interleave lengths across the source.
    order = sorted(range(len(lengths)), key=lambda i: (i % spec.per_length, i))
    spans = [(0, 0)] * len(lengths)
    for position, index in enumerate(order):
        start = round(position * slots / len(lengths)) * slot
        spans[index] = (start, start + lengths[index] + 1)
    return spans
