"""Multiple-choice tasks: BIG-bench ``task.json`` files, ``bigbench:<name>`` and the reserved
tasks.

A task is a tuple of :class:`ChoiceExample` (a context, its choices, the indices of the
correct ones). :func:`load_task_file` reads the public BIG-bench JSON task format the way
BIG-bench's own ``JsonTask`` builds a zero-shot prompt:

    context = task_prefix + example_input_prefix + input
              [+ choice_prefix + choice_1 + choice_prefix + choice_2 ...]  (append_choices_to_input)
              + example_output_prefix

with BIG-bench's defaults ``task_prefix=""``, ``example_input_prefix="\\nQ: "``,
``example_output_prefix="\\nA: "``, ``choice_prefix="\\n  choice: "`` and
``append_choices_to_input=True`` (read for truth, as BIG-bench does: the string
``"false"`` that some of its files hold appends the choices). The scored continuations are
the ``target_scores`` keys, in the file's order. BIG-bench lists the choices in the prompt
in a random permutation; here the listed order is a permutation seeded by the example's
index in the file (``random.Random(index)``), so it is fixed, independent of ``limit`` and
of the other examples, and does not reveal where the file puts its correct choice. The
correct choices are those with the highest target score, which must be positive.

``limit`` keeps the first N examples in file order (no sampling: the same N examples every
time, and a smaller limit is a prefix of a larger one).

The reserved tasks (:data:`RESERVED_TASKS`) are acceptance checks and the paper's tasks
(:data:`PAPER_TASKS`) are for reporting: evaluating on them is allowed, using them for
calibration, fitness, training or tuning is not (:func:`check_not_reserved`).

Other sources: ``olmo:<task>`` (:mod:`evaluation.olmo`: the paper's suite and reading tasks,
with lm-eval's prompts).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from evaluation import bigbench, olmo
from evaluation.examples import ChoiceExample, ChoiceTask, TaskError

RESERVED_TASKS: tuple[str, ...] = (
    "contextual_parametric_knowledge_conflicts",
    "vitaminc_fact_verification",
    "physics",
    "general_knowledge",
    "hotpotqa",  # RULER's qa_2: HotpotQA distractor questions, from any source
    "coqa",  # conversational questions on a story, from any source
)
# The FTP paper's suite: reported, never used for calibration, fitness, training or tuning.
PAPER_TASKS: tuple[str, ...] = ("arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu")
BIGBENCH_PREFIX = "bigbench:"
MAX_CHOICES = 256  # per example; BIG-bench's multiple-choice tasks hold far fewer
DEFAULT_CONTEXT = 2048  # what the scorer reads of a model whose config names no context
SOURCE_PREFIXES = (BIGBENCH_PREFIX, "olmo:", "retrieval:")
_DEFAULTS = {
    "task_prefix": "",
    "example_input_prefix": "\nQ: ",
    "example_output_prefix": "\nA: ",
    "choice_prefix": "\n  choice: ",
}


def task_name(spec: str | Path) -> str | None:
    """The BIG-bench task a spec names: ``bigbench:<name>``, or ``<name>`` for a path
    ``.../<name>/task.json`` or a directory ``.../<name>`` holding ``task.json``; None
    otherwise. Reads nothing but the directory entry."""
    text = str(spec)
    if text.startswith(BIGBENCH_PREFIX):
        return text[len(BIGBENCH_PREFIX) :].strip("/") or None
    path = Path(text)
    if path.name == "task.json":
        return path.resolve().parent.name or None
    if (path / "task.json").is_file():
        return path.resolve().name or None
    return None


def named_tasks(spec: str | Path) -> list[str]:
    """Every task name a spec can stand for: the parts of ``bigbench:``, ``olmo:`` or
    ``retrieval:`` names, lm-eval's names (``bigbench_<name>_multiple_choice``,
    ``mmlu_<subject>``, ``coqa``), and for a BIG-bench task path every directory above
    its ``task.json``. Reads nothing but directory entries."""
    text = str(spec)
    for prefix in SOURCE_PREFIXES:
        if text.startswith(prefix):
            return [p for p in text[len(prefix) :].split("/") if p]
    name = task_name(spec)
    if name is not None:
        return name.split("/") + list(Path(text).resolve().parts)
    names = [text]
    if text.startswith("bigbench_"):
        core = text.removeprefix("bigbench_")
        for suffix in ("_multiple_choice", "_generate_until"):
            core = core.removesuffix(suffix)
        names.append(core)
    names += [p for p in PAPER_TASKS if text.startswith(p + "_")]
    return names


def check_not_reserved(spec: str | Path, use: str = "calibration") -> None:
    """Raise :class:`TaskError` when ``spec`` names (see :func:`named_tasks`) a reserved
    task, kept for acceptance checks, or one of the paper's tasks, kept for reporting:
    neither is ever used for ``use`` (calibration, fitness, training, tuning)."""
    for name in named_tasks(spec):
        if name in RESERVED_TASKS:
            raise TaskError(
                f"{spec} is the reserved task {name!r}, kept for acceptance checks: "
                f"it is never used for {use} (reserved: {', '.join(RESERVED_TASKS)})"
            )
        if name in PAPER_TASKS:
            raise TaskError(
                f"{spec} is the paper's task {name!r}, kept for reporting: it is never "
                f"used for {use} (the paper's suite: {', '.join(PAPER_TASKS)})"
            )


def resolve_task(spec: str, limit: int | None = None) -> ChoiceTask:
    """The task a spec names: a ``task.json`` path (or a directory holding one),
    ``bigbench:<name>`` (found by :func:`evaluation.bigbench.resolve_bigbench`) or
    ``olmo:<name>`` (:func:`evaluation.olmo.load_olmo`)."""
    if spec.startswith(olmo.PREFIX):
        return olmo.load_olmo(spec, limit)
    if spec.startswith(BIGBENCH_PREFIX):
        name = task_name(spec)
        if not name:
            raise TaskError(f"{spec!r}: name a task, as in bigbench:causal_judgment")
        try:
            path = bigbench.resolve_bigbench(name)
        except ValueError as error:
            raise TaskError(str(error)) from None
        return load_task_file(path, limit, name=name)
    path = Path(spec)
    if path.is_dir():
        path = path / "task.json"
    return load_task_file(path, limit)


def load_task_file(
    path: str | Path, limit: int | None = None, name: str | None = None
) -> ChoiceTask:
    """A BIG-bench JSON multiple-choice task (see the module docstring for the prompt).

    Raises :class:`TaskError` for a missing file, invalid JSON (a repeated key, NaN or
    Infinity included), no ``examples``, an example without ``input`` or
    ``target_scores``, empty or blank choices, fewer than two choices or more than
    :data:`MAX_CHOICES`, no positive target score, every choice correct, or a ``limit``
    below 1. The task's name is ``name``, else its directory's name
    for a ``task.json``, else the file's stem.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise TaskError("--limit must be at least 1")
    if not path.is_file():
        raise TaskError(f"task file not found: {path}")
    try:
        data = json.loads(
            path.read_text(encoding="utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TaskError(f"{path}: not a JSON file ({error})") from None
    except ValueError as error:  # a repeated key or a NaN / Infinity
        raise TaskError(f"{path}: {error}") from None
    except OSError as error:
        raise TaskError(f"cannot read task file {path}: {error.strerror or error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise TaskError(f"{path}: no 'examples' list (not a BIG-bench JSON task)")
    if not data["examples"]:
        raise TaskError(f"{path}: 'examples' is empty")
    prefixes = {}
    for key, default in _DEFAULTS.items():
        value = data.get(key, default)
        if not isinstance(value, str):
            raise TaskError(f"{path}: {key!r} must be a string")
        prefixes[key] = value
    # BIG-bench tests this field for truth, and some of its own files write it as the string
    # "false", which it therefore reads as true: read it the same way, so scores match.
    append = bool(data.get("append_choices_to_input", True))
    raw = data["examples"][:limit]
    examples = tuple(
        _example(path, index, item, prefixes, append) for index, item in enumerate(raw)
    )
    default_name = path.resolve().parent.name if path.name == "task.json" else path.stem
    return ChoiceTask(name=name or default_name, examples=examples)


def check_fits(tasks: Sequence[ChoiceTask], model: str) -> None:
    """Raise :class:`TaskError` when an example's prompt and one of its choices are more
    tokens than ``model`` reads (the scorer would cut the prompt from the left). Reads the
    model's config and tokenizer, no weights (:mod:`router.facts`)."""
    from router.facts import model_facts, token_encoder

    limit = model_facts(model).context or DEFAULT_CONTEXT
    encode = token_encoder(model)
    for task in tasks:
        for index, example in enumerate(task.examples):
            longest = max(
                len(encode(example.context_of(c) + choice)) - 1
                for c, choice in enumerate(example.choices)
            )
            if longest > limit:
                raise TaskError(
                    f"task {task.name!r}, example {index}: its prompt and choice are "
                    f"{longest} tokens, model {model!r} reads at most {limit}"
                )


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object, refusing a repeated key (plain ``json`` keeps the last silently)."""
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a task can hold")


def _example(
    path: Path, index: int, item: object, prefixes: dict[str, str], append: bool
) -> ChoiceExample:
    where = f"{path}: example {index}"
    if not isinstance(item, dict) or not isinstance(item.get("input"), str):
        raise TaskError(f"{where} has no 'input' string")
    scores = item.get("target_scores")
    if not isinstance(scores, dict):
        raise TaskError(f"{where} has no 'target_scores' (not a multiple-choice example)")
    if not scores:
        raise TaskError(f"{where}: 'target_scores' has no choices")
    if any(not choice.strip() for choice in scores):
        raise TaskError(f"{where}: a choice is empty")
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in scores.values()):
        raise TaskError(f"{where}: target scores must be numbers")
    if len(scores) < 2:
        raise TaskError(f"{where} has one choice: it cannot tell a model's answers apart")
    if len(scores) > MAX_CHOICES:
        raise TaskError(f"{where} has {len(scores)} choices; at most {MAX_CHOICES} are scored")
    choices = tuple(scores)
    best = max(scores.values())
    if best <= 0:
        raise TaskError(f"{where}: no correct choice (no positive target score)")
    correct = frozenset(i for i, choice in enumerate(choices) if scores[choice] == best)
    if len(correct) == len(choices):
        raise TaskError(f"{where}: every choice is correct: it scores every model 1")
    text = prefixes["example_input_prefix"] + item["input"]
    if append:
        listed = list(choices)
        random.Random(index).shuffle(listed)
        sep = prefixes["choice_prefix"]
        text += sep + sep.join(listed)
    context = prefixes["task_prefix"] + text + prefixes["example_output_prefix"]
    return ChoiceExample(context=context, choices=choices, correct=correct)
