"""What a stored run offers ``ftprune eval`` (its schedules and latest router, as the
targets of ``--run`` and ``--compare``) and what it saw (its calibration data, which
evaluation refuses unless ``--force``).

Data hygiene: a run's calibration source is its fitness and router-training data, so a task
that names it is refused (:class:`~evaluation.tasks.TaskError`) unless ``force``. Text is
always read from a source's held-out split, which never overlaps its calibration split, so
text sources are never refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from evaluation.tasks import TaskError, task_name
from ftprune.eval import Target
from router.specs import (
    CHECKPOINT_SPEC,
    FIXED_ROUTERS,
    RouterSpecError,
    check_router_spec,
    checkpoint_spec,
)

if TYPE_CHECKING:
    from search.config import RunConfig
    from storage import Store
    from workers.scoring import Scorer

SCHEDULES = ("uniform", "best", "finetuned")


def source_keys(spec: str) -> set[str]:
    """What identifies a data source across spellings: its resolved path (if it is one),
    ``bigbench:<name>`` for BIG-bench tasks (also lm-eval's ``bigbench_<name>_*`` tasks)
    and the spec itself."""
    keys = {spec}
    name = task_name(spec)
    if name:
        keys.add(f"bigbench:{name}")
    if spec.startswith("bigbench_"):
        core = spec.removeprefix("bigbench_")
        for suffix in ("_multiple_choice", "_generate_until"):
            core = core.removesuffix(suffix)
        keys.add(f"bigbench:{core}")
    path = Path(spec)
    if path.exists():
        keys.add(str(path.resolve()))
        if path.name == "task.json":
            keys.add(str(path.resolve().parent))
    return keys


def training_sources(config: dict[str, Any]) -> list[str]:
    """The data sources a run calibrated its fitness and trained its routers on."""
    found = config.get("calibration")
    if isinstance(found, str):
        return [found]
    return [str(item) for item in found or []]


def check_hygiene(config: dict[str, Any], task_specs: Sequence[str], force: bool) -> None:
    """Raise TaskError when a task names data the run calibrated or trained on."""
    if force:
        return
    used = {key: source for source in training_sources(config) for key in source_keys(source)}
    for spec in task_specs:
        overlap = source_keys(spec) & set(used)
        if overlap:
            raise TaskError(
                f"{spec}: the run calibrated and trained on {used[overlap.pop()]}; "
                "evaluate on other data, or pass --force"
            )


@dataclass(frozen=True)
class RunView:
    """What a stored run offers for evaluation."""

    run_id: int
    name: str
    config: RunConfig
    best: list[float] | None  # step 1's best schedule
    finetuned: list[float] | None  # the latest router's fine-tuned schedule
    router: str | None  # dynamic:<checkpoint> of the latest router
    router_id: int | None


def run_view(store: Store, ref: str) -> RunView:
    """Read a run's schedules and latest router; raises StorageError / ConfigError."""
    from search.records import RouterLabel
    from search.stored import load_run_config

    run = store.find_run(ref)
    routers = store.routers(run.id)
    router = router_id = finetuned = None
    if routers:
        latest = routers[-1]
        router, router_id = checkpoint_spec(latest.checkpoint), latest.id
        try:
            check_router_spec(router)
        except RouterSpecError as error:
            raise TaskError(f"run {run.name!r}: its latest router is unusable ({error})") from None
        wanted = RouterLabel.from_json(latest.label).finetuned
        rows = [
            h for h in store.heldout(run.id) if wanted is not None and h.label == wanted.to_json()
        ]
        finetuned = rows[-1].schedule if rows else None
    return RunView(
        run.id, run.name, load_run_config(run), run.best_schedule, finetuned, router, router_id
    )


def run_target(view: RunView, schedule: str | None, router: str | None) -> Callable[[int], Target]:
    """The target ``--run`` evaluates (default: the fine-tuned schedule with the latest
    router if the run has one, else the best schedule with the static router), as a function
    of the model's block count; raises TaskError for a choice the run cannot serve."""
    kinds = (*FIXED_ROUTERS, CHECKPOINT_SPEC)
    if router is not None and router not in kinds:
        raise TaskError(f"--router must be one of {', '.join(kinds)}, not {router!r}")
    if schedule is not None and schedule not in SCHEDULES:
        raise TaskError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    router = router or (CHECKPOINT_SPEC if view.router else "static")
    if schedule is None:
        schedule = "finetuned" if view.router and view.finetuned else "best"
    spec = view.router if router == CHECKPOINT_SPEC else router
    if spec is None:
        raise TaskError(f"run {view.name!r} has no trained router: use --router static|random")
    chosen = {"best": view.best, "finetuned": view.finetuned}.get(schedule)
    if schedule != "uniform" and chosen is None:
        raise TaskError(f"run {view.name!r} has no {schedule} schedule yet")
    target = view.config.target_sparsity

    def make(blocks: int) -> Target:
        values = [target] * blocks if schedule == "uniform" else list(chosen or [])
        return Target(schedule, values, spec)

    return make


def compare_targets(view: RunView, scorer: Scorer) -> list[Target]:
    """``--compare``: uniform, Block-Influence, searched and fine-tuned schedules with the
    static, random and dynamic routers (those the run has), at the run's sparsity."""
    from ftprune.bench.quality import influence_allocation

    schedules = [
        ("uniform", [view.config.target_sparsity] * scorer.num_blocks),
        ("block_influence", influence_allocation(scorer, view.config)),
    ]
    if view.best is not None:
        schedules.append(("searched", view.best))
    if view.finetuned is not None:
        schedules.append(("finetuned", view.finetuned))
    routers = ["static", "random"] + ([view.router] if view.router else [])
    return [Target(label, schedule, router) for label, schedule in schedules for router in routers]


def compare_names(view: RunView) -> list[str]:
    """The rows ``--compare`` can evaluate for a run (see
    :func:`ftprune.eval_targets.compare_targets`)."""
    schedules = ["uniform", "block_influence"]
    schedules += ["searched"] if view.best is not None else []
    schedules += ["finetuned"] if view.finetuned is not None else []
    routers = ["static", "random"] + (["dynamic"] if view.router else [])
    return [f"{s}+{r}" for s in schedules for r in routers]
