"""What ``ftprune eval`` was asked (an :class:`EvalRequest`), checked before any model
loads, and the driver that evaluates it.

:meth:`EvalRequest.check` refuses a request whose options contradict each other, and
:func:`prepare` everything that needs a file, the database or a model's config: task files
parsed, lm-eval tasks found, the run read, data hygiene checked, prompts fitted to the
model's context. Each raises a one-line ConfigError or TaskError. :func:`execute` loads the
model once, scores the dense model and every target on the same examples, prints the
tables, stores the rows against a run (``--run`` or ``--compare``; ``--export`` and
``--model`` rows are printed and written with ``--json`` only) and writes the files asked
for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from evaluation.examples import TaskError
from search.errors import ConfigError

if TYPE_CHECKING:
    from evaluation.examples import ChoiceTask
    from evaluation.suites import RetrievalGrid, Suite
    from ftprune.eval import EvalPlan, Target
    from ftprune.eval_targets import RunView
    from storage import Store
    from workers.settings import ScorerSettings

MAX_LIMIT = 10_000_000  # examples per task
MAX_BATCH = 65_536
MAX_RESAMPLES = 1_000_000
MAX_SEED = 2**32 - 1
DTYPES = ("float32", "bfloat16")
Echo = Callable[[str], None]
Targets = Callable[[int], "list[Target]"]  # the targets for a model of N blocks


@dataclass(frozen=True)
class EvalRequest:
    """The options of ``ftprune eval``, as given (see its ``--help``)."""

    run: str | None = None
    export: Path | None = None
    model: str | None = None
    sparsity: float | None = None
    compare: str | None = None
    schedule: str | None = None
    router: str | None = None
    rows: str | None = None
    baseline: str | None = None
    suite: str | None = None
    retrieval: str | None = None
    lengths: tuple[int, ...] = ()
    depths: tuple[float, ...] = ()
    samples: int | None = None
    heatmap: Path | None = None
    tasks: str | None = None
    task_files: tuple[str, ...] = ()
    text: str | None = None
    limit: int | None = None
    batch_size: int = 8
    resamples: int = 2000
    seed: int = 0
    dtype: str = "float32"
    device: str | None = None
    force: bool = False
    db: str | None = None

    def check(self) -> None:
        """ConfigError for options that contradict each other or lie out of range (reads
        nothing)."""
        sources = [
            name
            for name, given in (
                ("--run", self.run),
                ("--export", self.export),
                ("--model", self.model),
                ("--compare", self.compare),
            )
            if given
        ]
        if len(sources) != 1:
            raise ConfigError(
                "give exactly one of --run, --export, --model (with --sparsity) or --compare"
            )
        self._check_model()
        self._check_routers()
        if self.rows is not None and self.compare is None and self.model is None:
            raise ConfigError("--rows goes with --compare or --model")
        if self.limit is not None and not 1 <= self.limit <= MAX_LIMIT:
            raise ConfigError(f"--limit must lie in 1..{MAX_LIMIT}")
        if not 1 <= self.batch_size <= MAX_BATCH or not 1 <= self.resamples <= MAX_RESAMPLES:
            raise ConfigError(
                f"--batch-size must lie in 1..{MAX_BATCH} and --resamples in 1..{MAX_RESAMPLES}"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must lie in 0..{MAX_SEED}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be float32 or bfloat16, not {self.dtype!r}")

    def _check_model(self) -> None:
        if self.model is not None:
            if self.sparsity is None and self.schedule is None:
                raise ConfigError("--model needs --sparsity, --schedule or both")
            if self.schedule is not None:
                self.block_schedule()
        elif self.sparsity is not None:
            raise ConfigError("--sparsity goes with --model")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ConfigError("--sparsity must lie in [0, 1)")
        if self.schedule is not None and self.run is None and self.model is None:
            raise ConfigError("--schedule goes with --run or --model")

    def _check_routers(self) -> None:
        from router.specs import FIXED_ROUTERS

        if self.router is not None and (self.export is not None or self.compare is not None):
            raise ConfigError("--router goes with --run or --model")
        routers = self.routers()
        if self.model is not None and any(r not in FIXED_ROUTERS for r in routers):
            raise ConfigError(
                "--router with --model must be static or random (evaluate a trained router "
                "with --run or --export)"
            )
        if len(routers) > 1 and self.model is None:
            raise ConfigError("several --router values go with --model")

    def routers(self) -> list[str]:
        return [r.strip() for r in self.router.split(",")] if self.router is not None else []

    def block_schedule(self) -> list[float] | None:
        """``--schedule`` with ``--model``: comma-separated block sparsities, each in
        [0, 1) (None without them)."""
        if self.model is None or self.schedule is None:
            return None
        try:
            values = [float(part) for part in self.schedule.split(",")]
        except ValueError:
            raise ConfigError(
                "--schedule with --model is one sparsity per block, comma-separated: "
                f"{self.schedule!r}"
            ) from None
        if any(not 0.0 <= v < 1.0 for v in values):
            raise ConfigError("every --schedule entry must lie in [0, 1)")
        return values

    def lm_tasks(self) -> list[str]:
        return [t.strip() for t in (self.tasks or "").split(",") if t.strip()]


@dataclass(frozen=True)
class Extras:
    """The suite, retrieval grid and row choices of one evaluation, checked."""

    suite: Suite | None = None
    grid: RetrievalGrid | None = None
    baseline: str | None = None
    rows: tuple[str, ...] = ()
    heatmap: Path | None = None


@dataclass
class Prepared:
    """A request with everything checked and nothing loaded: the plan, the targets (a
    function of the block count, or None for ``--compare``), the run's view and store
    (for runs)."""

    plan: EvalPlan
    targets: Targets | None
    extras: Extras
    view: RunView | None = None
    store: Store | None = None


@dataclass(frozen=True)
class _Source:
    """What ``--run``/``--compare``, ``--export`` or ``--model`` evaluates: the scorer
    settings, the targets (None for ``--compare``), and a run's view and store."""

    settings: ScorerSettings
    targets: Targets | None
    view: RunView | None = None
    store: Store | None = None


def extras(request: EvalRequest) -> Extras:
    """The request's suite and retrieval grid (``--retrieval`` and its grid options
    override a suite's grid) and row choices; reads no task data."""
    from evaluation.retrieval import FAMILIES
    from evaluation.suites import DEPTHS, RetrievalGrid, load_suite

    chosen = load_suite(request.suite) if request.suite is not None else None
    grid = chosen.retrieval if chosen is not None else None
    lengths, depths, samples = request.lengths, request.depths, request.samples
    if request.retrieval is None and (lengths or depths or samples is not None) and grid is None:
        raise ConfigError("--length, --depth and --samples go with --retrieval")
    if request.retrieval is not None or grid is not None:
        families = grid.families if grid is not None else ()
        if request.retrieval is not None:
            names = [f.strip() for f in request.retrieval.split(",") if f.strip()]
            families = FAMILIES if names == ["all"] else tuple(names)
        grid = RetrievalGrid(
            families,
            lengths or (grid.lengths if grid else (1024,)),
            tuple(d / 100 for d in depths) if depths else (grid.depths if grid else DEPTHS),
            samples if samples is not None else (grid.samples if grid else 4),
        )
    picked = tuple(r.strip() for r in (request.rows or "").split(",") if r.strip())
    return Extras(chosen, grid, request.baseline, picked, request.heatmap)


def prepare(request: EvalRequest) -> Prepared:
    """Everything the request names, read and checked (see the module docstring)."""
    from evaluation.tasks import check_fits
    from ftprune.eval import EvalPlan
    from workers.devices import check_device_available, check_device_spec

    if request.device is not None:  # in this process: eval loads its model here
        check_device_spec(request.device)
        check_device_available(request.device)
    chosen = extras(request)
    choice_tasks, task_specs = _choice_tasks(request, chosen)
    lm_tasks = request.lm_tasks()
    if lm_tasks:
        from evaluation.lmeval import check_lm_tasks

        check_lm_tasks(lm_tasks)
    if request.text is not None:
        from workers.data import check_text

        check_text(request.text, "--text file")
    source = _source(request, task_specs + lm_tasks)
    settings = source.settings
    check_fits(choice_tasks, settings.model)
    if request.text is not None:
        settings = dataclasses.replace(settings, source=request.text)
    if request.device is not None:
        settings = dataclasses.replace(settings, device=request.device)
    plan = EvalPlan(
        settings=settings,
        choice_tasks=choice_tasks,
        lm_tasks=lm_tasks,
        text=request.text is not None or not (choice_tasks or lm_tasks or chosen.grid),
        retrieval=chosen.grid,
        limit=request.limit,
        batch_size=request.batch_size,
        resamples=request.resamples,
        seed=request.seed,
    )
    prepared = Prepared(plan, source.targets, chosen, source.view, source.store)
    _check_rows(prepared)
    return prepared


def _choice_tasks(request: EvalRequest, chosen: Extras) -> tuple[list[ChoiceTask], list[str]]:
    """The multiple-choice tasks of ``--task-file`` and the suite (each suite task at its
    own size, cut by ``--limit``), and every task spec given."""
    from ftprune.eval import load_choice_tasks

    suite_tasks = chosen.suite.tasks if chosen.suite is not None else ()
    limit = request.limit
    tasks = load_choice_tasks(list(request.task_files), limit)
    tasks += [load_choice_tasks([t.spec], min(limit or t.n, t.n))[0] for t in suite_tasks]
    return tasks, [*request.task_files, *(t.spec for t in suite_tasks)]


def _source(request: EvalRequest, specs: list[str]) -> _Source:
    """The model and targets of ``--run``/``--compare``, ``--export`` or ``--model``; a
    run's data hygiene checked against the task ``specs``."""
    from ftprune.eval import Target
    from workers import BUILTIN_PYDOC, ScorerSettings

    ref = request.run or request.compare
    if ref is not None:
        from ftprune.cli_common import open_store
        from ftprune.eval_targets import check_hygiene, run_target, run_view
        from search.settings import scorer_settings

        store = open_store(request.db, create=False)
        view = run_view(store, ref)
        check_hygiene(view.config.model_dump(), specs, request.force)
        settings = scorer_settings(view.config)
        if request.compare is not None:
            return _Source(settings, None, view, store)
        one = run_target(view, request.schedule, request.router)
        return _Source(settings, lambda blocks: [one(blocks)], view, store)
    if request.export is not None:
        from router.specs import checkpoint_spec, read_meta

        meta = read_meta(request.export)
        settings = ScorerSettings(model=meta["model"], dtype=meta["dtype"], source=BUILTIN_PYDOC)
        values = [float(s) for s in meta["schedule"]]
        spec = checkpoint_spec(request.export.resolve())
        return _Source(settings, lambda _: [Target("export", values, spec)])
    return _model_source(request)


def _model_source(request: EvalRequest) -> _Source:
    """``--model``: a row per schedule (uniform at ``--sparsity``, ``--schedule``) and
    router."""
    from ftprune.eval import Target
    from router.facts import model_facts
    from workers import BUILTIN_PYDOC, ScorerSettings

    model, sparsity, given = request.model, request.sparsity, request.block_schedule()
    assert model is not None
    layers = model_facts(model).blocks
    if given is not None and len(given) != layers:
        raise ConfigError(
            f"--schedule has {len(given)} entries but {model} has {layers} decoder blocks"
        )
    settings = ScorerSettings(model=model, dtype=request.dtype, source=BUILTIN_PYDOC)
    kinds = request.routers() or ["static"]

    def targets(blocks: int) -> list[Target]:
        schedules = [("uniform", [sparsity] * blocks)] if sparsity is not None else []
        schedules += [("schedule", given)] if given is not None else []
        return [Target(label, values, k) for label, values in schedules for k in kinds]

    return _Source(settings, targets)


def _check_rows(prepared: Prepared) -> None:
    """TaskError for a ``--rows`` or ``--baseline`` row that is not evaluated, or a
    ``--heatmap`` without retrieval."""
    extras, view = prepared.extras, prepared.view
    if prepared.targets is None:
        assert view is not None  # --compare reads its run
        from ftprune.eval_targets import compare_names

        names = compare_names(view)
    else:
        names = [t.name for t in prepared.targets(1)]
    for name in [*extras.rows, *([extras.baseline] if extras.baseline else [])]:
        if name != "dense" and name not in names:
            raise TaskError(f"no row {name!r} is evaluated here (rows: dense, {', '.join(names)})")
    if extras.heatmap is not None and extras.grid is None:
        raise TaskError("--heatmap draws retrieval results: give --retrieval or a suite with one")
