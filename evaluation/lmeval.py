"""lm-eval tasks on a (routed) model: ``HFLM(pretrained=<model>, tokenizer=<tokenizer>)``
and ``simple_evaluate``, with per-example scores for paired statistics.

A task spec is a registered lm-eval task or group name (``arc_easy``, ``hellaswag``,
``mmlu``, ...), a local task YAML file (its ``task:`` names it; its directory becomes an
include path) or an include directory (every task its YAML files define). Stock tasks
download their datasets where a network allows; a local YAML with ``dataset_path: json``
and ``data_files`` runs offline. lm-eval's built-in task index is read only when a spec is
not local.

lm-eval calls ``model(input_ids)`` without an attention mask and pads a batch on the right
with token 0. A routed model would count that padding as tokens of the row (its budget and
kept set would change), so a routed model is always evaluated one request per forward; a
dense model batches (padding on the right cannot change a causal model's real positions).
Realized sparsity and FLOP saving are weighted over lm-eval's forwards
(:class:`evaluation.choice.SparsityMeter`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from evaluation.tasks import TaskError

if TYPE_CHECKING:  # torch loads with the scoring: checking task names needs none
    from evaluation.choice import TaskScores

METRICS = ("acc", "acc_norm")


def _yaml_tasks(path: Path) -> list[str]:
    """Task names defined by one YAML file (``task:`` a string), tolerating lm-eval's
    ``!function`` tags."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise TaskError(f"{path}: not a valid task YAML ({str(error).splitlines()[0]})") from None
    task = data.get("task") if isinstance(data, dict) else None
    return [task] if isinstance(task, str) else []


def split_specs(specs: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(include paths, task names, whether lm-eval's built-in tasks are needed); raises
    TaskError for a YAML that names no task or a directory that defines none."""
    paths: list[str] = []
    names: list[str] = []
    builtin = False
    for spec in specs:
        path = Path(spec)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise TaskError(f"task YAML not found: {spec}")
            found = _yaml_tasks(path)
            if not found:
                raise TaskError(f"{spec}: no 'task:' name in this YAML")
            paths.append(str(path.resolve().parent))
            names += found
        elif path.is_dir():
            found = [name for file in sorted(path.rglob("*.y*ml")) for name in _yaml_tasks(file)]
            if not found:
                raise TaskError(f"{spec}: no task YAML in this directory")
            paths.append(str(path.resolve()))
            names += found
        else:
            names.append(spec)
            builtin = True
    return tuple(dict.fromkeys(paths)), tuple(dict.fromkeys(names)), builtin


@functools.lru_cache(maxsize=4)
def _task_manager(paths: tuple[str, ...], builtin: bool) -> Any:
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(include_path=list(paths) or None, include_defaults=builtin)


@functools.lru_cache(maxsize=1)
def builtin_task_names() -> frozenset[str]:
    """The task, group and tag names of lm-eval's built-in index, as its ``TaskManager``
    lists them (``all_tasks``), cached as JSON under ftprune's cache directory per lm-eval
    version: lm-eval builds its index from thousands of YAML files (half a minute on 2
    cores), so it is built once."""
    from importlib.metadata import version

    from router.loading import cache_dir

    path = cache_dir() / f"lm-eval-{version('lm_eval')}-tasks.json"
    try:
        return frozenset(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    names = sorted(_task_manager((), True).all_tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(names))
    os.replace(staging, path)  # whole or absent: concurrent writers write the same list
    return frozenset(names)


def check_lm_tasks(specs: Sequence[str]) -> None:
    """Raise TaskError unless every spec names an lm-eval task or group: a local YAML or
    include directory that defines one (:func:`split_specs`), or a name of lm-eval's own
    index (:func:`builtin_task_names`). Reads no dataset."""
    split_specs(specs)
    local = (".yaml", ".yml")
    asked = [s for s in specs if Path(s).suffix not in local and not Path(s).is_dir()]
    unknown = [name for name in asked if name not in builtin_task_names()]
    if unknown:
        raise TaskError(
            f"unknown lm-eval task {unknown[0]!r} (see `lm-eval ls tasks`, or give "
            "a local task YAML / include directory)"
        )


def lmeval_scores(
    model: Any, tokenizer: Any, specs: Sequence[str], limit: int | None, batch_size: int
) -> list[TaskScores]:
    """Per-example ``acc`` / ``acc_norm`` of every leaf task of ``specs`` (examples in
    lm-eval's document order, the first ``limit`` of each task)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from evaluation.choice import SparsityMeter, TaskScores
    from router import routing_of

    paths, names, builtin = split_specs(specs)
    routed = routing_of(model) is not None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1 if routed else batch_size)
    meter = SparsityMeter()
    with meter.measure(model):
        results = simple_evaluate(
            model=lm,
            tasks=list(names),
            task_manager=_task_manager(paths, builtin),
            limit=limit,
            log_samples=True,
            verbosity="ERROR",
            bootstrap_iters=0,
        )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    scores = []
    for task, samples in sorted(results["samples"].items()):
        ordered = sorted(samples, key=lambda sample: sample["doc_id"])
        metrics = {
            metric: [float(s[metric]) for s in ordered]
            for metric in METRICS
            if ordered and metric in ordered[0]
        }
        if not metrics:
            raise TaskError(f"lm-eval task {task!r} reports neither acc nor acc_norm")
        loglik = [tuple(float(resp[0]) for resp in s["filtered_resps"]) for s in ordered]
        scores.append(TaskScores(task, metrics, meter.realized_sparsity, meter.flop_saving, loglik))
    return scores


def stock_yaml(name: str) -> Path:
    """The YAML file of lm-eval's own task ``name``; TaskError if lm-eval has none."""
    manager = _task_manager((), True)
    entry = manager.task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if path is None:
        raise TaskError(f"lm-eval has no task {name!r}")
    return Path(path)


def stock_tasks(
    stock: str, rows: Sequence[dict[str, Any]], directory: Path
) -> list[tuple[Path, list[int]]]:
    """Local lm-eval tasks that run lm-eval's own task ``stock`` (its prompt template,
    choices and metrics: the YAML includes the stock one) on ``rows`` (documents in that
    task's schema, written as JSONL). ``mmlu`` becomes one task per subject
    (``mmlu_<subject>``). Returns each task's YAML and the indices of ``rows`` it holds, in
    order."""
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        name = f"mmlu_{row['subject']}" if stock == "mmlu" else stock
        groups.setdefault(name, []).append(index)
    out = []
    for name, indices in groups.items():
        local = f"ftprune_stock_{name}"
        data = directory / f"{local}.jsonl"
        data.write_text("".join(json.dumps(rows[i]) + "\n" for i in indices), encoding="utf-8")
        path = directory / f"{local}.yaml"
        path.write_text(
            f"include: {stock_yaml(name)}\ntask: {local}\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n"
            "fewshot_split: null\n",
            encoding="utf-8",
        )
        out.append((path, indices))
    return out


def stock_requests(yaml_path: Path) -> list[list[tuple[str, str]]]:
    """Per document of a local task, the (context, continuation) pairs lm-eval builds for
    it: what its ``HFLM`` would score. Needs no model."""
    manager = _task_manager((str(yaml_path.parent),), True)
    name = _yaml_tasks(yaml_path)[0]
    task = manager.load_task_or_group([name])[name]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list[tuple[str, str]]] = {}
    for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        context, continuation = instance.args
        by_doc.setdefault(instance.doc_id, []).append((context, continuation))
    return [by_doc[k] for k in sorted(by_doc)]
