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

Span-recall prompts (``DataSpec.recall_share``): running text scored at its end rewards a
router that keeps the recent tokens and nothing else, yet a user's prompt often puts what the
answer needs first (a passage, then the question). A recall sequence is a window of the same
text whose last ``recall_len`` tokens are replaced by its first ``recall_len``: the model
reads a passage, running text, then the passage again, so the scored positions at the end
(``recall_len - RECALL_CUE`` of them at most) predict tokens that only the sequence's
opening holds. The dense model copies them; a router that dropped the opening cannot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch loads with the first tensor: checking a source needs none
    import torch

BUILTIN_PYDOC = "builtin:pydoc"
HELDOUT_SHARE = 0.2
RECALL_CUE = 8  # tokens of a recall copy read before its first scored position
Split = Literal["calibration", "heldout"]
SPLITS: tuple[Split, ...] = ("calibration", "heldout")


class DataSpecError(ValueError):
    """A calibration source that cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class DataSpec:
    """Which sequences to build: ``per_length`` sequences of each length in ``seq_lens``.

    Each sequence holds ``L + 1`` tokens: the model reads the first L, and the last token is
    the true continuation of position L - 1 (used for perplexity). A share ``recall_share``
    of them, spread evenly through the list, are span-recall prompts whose last
    ``recall_len`` tokens repeat their first (see the module docstring); the layout must
    pass :func:`check_recall_layout`.
    """

    source: str
    split: Split
    seq_lens: tuple[int, ...]
    per_length: int
    recall_share: float = 0.0
    recall_len: int = 0

    def __post_init__(self) -> None:
        """Refuse a bad recall layout, and a reserved task (see :mod:`evaluation.tasks`) as
        calibration data."""
        if not 0.0 <= self.recall_share <= 1.0:
            raise DataSpecError(f"recall share must lie in [0, 1], got {self.recall_share}")
        if self.recall_share > 0:
            check_recall_layout(self.seq_lens, self.recall_len)
        if self.split == "calibration":
            from evaluation.tasks import TaskError, check_not_reserved

            try:
                check_not_reserved(self.source)
            except TaskError as error:
                raise DataSpecError(str(error)) from None


def check_source(source: str, what: str = "calibration file") -> None:
    """Raise :class:`DataSpecError` unless ``source`` is readable, naming it as ``what``.
    Reads no more than needed."""
    if source == BUILTIN_PYDOC:
        return
    path = Path(source)
    if path.suffix not in (".txt", ".jsonl"):
        raise DataSpecError(
            f"{what} {source!r}: use 'builtin:pydoc', a .txt "
            "file or a .jsonl file with a 'text' field"
        )
    if not path.is_file():
        raise DataSpecError(f"{what} not found: {source}")


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a file a user named; :class:`DataSpecError` (one line naming
    ``what`` and the file) when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataSpecError(
            f"{what} {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} "
            f"at offset {error.start})"
        ) from None
    except OSError as error:
        raise DataSpecError(f"cannot read {what} {path}: {error.strerror or error}") from None


def check_text(source: str, what: str = "calibration file") -> None:
    """:func:`check_source`, and raise :class:`DataSpecError` unless the source reads (UTF-8,
    a ``.jsonl`` of ``text`` objects) and holds some text; messages name it as ``what``."""
    if not any(doc.strip() for doc in documents(source, what)):
        raise DataSpecError(f"{what} {source} holds no text")


def documents(source: str, what: str = "calibration file") -> list[str]:
    """The source's documents, in a fixed order; :class:`DataSpecError` for a file that
    cannot be read, is not UTF-8 or (``.jsonl``) holds a line that is no JSON object with
    a ``text`` string."""
    check_source(source, what)
    if source == BUILTIN_PYDOC:
        from pydoc_data.topics import topics

        return [topics[name] for name in sorted(topics)]
    path = Path(source)
    text = read_text_file(path, what)
    if path.suffix == ".jsonl":
        docs = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                value = None
            if not isinstance(value, str):
                raise DataSpecError(
                    f"{source}:{line_no}: expected a JSON object with a 'text' field"
                ) from None
            docs.append(value)
        return docs
    return [doc for doc in text.split("\n\n") if doc.strip()]


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
    return as_tensors(sequence_ids(spec, hf_encoder(tokenizer)))


def sequence_ids(spec: DataSpec, encode: Callable[[str], list[int]]) -> list[list[int]]:
    """The token ids of :func:`build_sequences`' sequences, as plain lists, with the split's
    text tokenized by ``encode`` (e.g. :func:`router.facts.token_encoder`); needs no
    torch. Raises :class:`DataSpecError` when the split holds too few tokens."""
    tokens = encode(split_text(spec.source, spec.split))
    spans = _spans(spec, len(tokens))
    return [_window(tokens[a:b], spec, i) for i, (a, b) in enumerate(spans)]


def as_tensors(sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Each id list as a 1-D long tensor (on the CPU)."""
    import torch

    return [torch.tensor(list(ids), dtype=torch.long) for ids in sequences]


def hf_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """A transformers tokenizer as an encoder: ids without special tokens."""
    return lambda text: list(
        tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)[
            "input_ids"
        ]
    )


def disjoint_sequences(spec: DataSpec, avoid: DataSpec, tokenizer: Any) -> list[torch.Tensor]:
    """The sequences of ``spec`` that share no token position with any sequence of ``avoid``
    (the same source and split), in :func:`build_sequences` order: data that a measurement
    made on ``avoid``'s sequences has never seen. Fewer than ``spec`` asks for, possibly none.
    """
    if (spec.source, spec.split) != (avoid.source, avoid.split):
        raise ValueError("disjoint_sequences compares layouts of one source and split")
    tokens = hf_encoder(tokenizer)(split_text(spec.source, spec.split))
    taken = _spans(avoid, len(tokens))
    return [
        as_tensors([_window(tokens[a:b], spec, i)])[0]
        for i, (a, b) in enumerate(_spans(spec, len(tokens)))
        if all(b <= lo or hi <= a for lo, hi in taken)
    ]


def recall_copy_len(window: int) -> int:
    """The copy length that makes every one of ``window`` scored positions predict a copied
    token, after the first ``RECALL_CUE`` tokens of the copy have been read."""
    return window + RECALL_CUE


def check_recall_layout(seq_lens: Sequence[int], recall_len: int) -> None:
    """Raise :class:`DataSpecError` unless a span-recall copy of ``recall_len`` tokens is
    longer than the cue and fits in half of every sequence (L >= 2 * recall_len - 1)."""
    if recall_len <= RECALL_CUE:
        raise DataSpecError(
            f"span-recall copies must be longer than the {RECALL_CUE}-token cue, got {recall_len}"
        )
    if min(seq_lens) < 2 * recall_len - 1:
        raise DataSpecError(
            f"span-recall copies of {recall_len} tokens need sequences of at "
            f"least {2 * recall_len - 1} tokens"
        )


def is_recall(spec: DataSpec, index: int) -> bool:
    """Whether sequence ``index`` of ``spec`` is a span-recall prompt: the share is spread
    evenly, so every prefix of the list holds about ``recall_share`` of them (a search's
    first selection stage, which reads the first few sequences, sees both kinds)."""
    share = spec.recall_share
    return share > 0 and int((index + 1) * share + 1e-9) > int(index * share + 1e-9)


def _window(window: list[int], spec: DataSpec, index: int) -> list[int]:
    if is_recall(spec, index):
        window = window[: len(window) - spec.recall_len] + window[: spec.recall_len]
    return window


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
