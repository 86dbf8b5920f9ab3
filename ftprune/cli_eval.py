"""``ftprune eval``: accuracy retention of a routed model against the dense model, on
multiple-choice tasks, lm-eval tasks and held-out text (see :mod:`ftprune.eval`).

Every input is checked before a model is loaded (task files parsed, lm-eval tasks found,
the run read, data hygiene checked); bad input prints one line and exits 2. Results are
stored in the database only for a run (``--run`` or ``--compare``), against that run;
``--export`` and ``--model`` evaluations are printed and written with ``--json`` only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from evaluation.suites import RetrievalGrid, Suite
    from ftprune.eval_targets import RunView

from evaluation.examples import TaskError
from ftprune.cli_common import (
    Db,
    Device,
    JsonOut,
    Quiet,
    check_output_file,
    fail,
    open_store,
    user_errors,
)

MAX_LIMIT = 10_000_000  # examples per task
MAX_BATCH = 65_536
MAX_RESAMPLES = 1_000_000
MAX_SEED = 2**32 - 1


def _fixed_routers() -> tuple[str, ...]:
    from router.specs import FIXED_ROUTERS

    return FIXED_ROUTERS


def eval_command(
    run: Annotated[
        Optional[str],
        typer.Option(
            "--run",
            help="Evaluate a run (id or name): by default its fine-tuned schedule with "
            "its latest router, else its best schedule with the static router.",
        ),
    ] = None,
    export: Annotated[
        Optional[Path],
        typer.Option("--export", help="Evaluate an export directory (ftprune export --out DIR)."),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            help="Evaluate this model ad hoc: a uniform schedule (--sparsity), one "
            "sparsity per block (--schedule), or both (two rows)."
        ),
    ] = None,
    sparsity: Annotated[
        Optional[float], typer.Option(help="Uniform block sparsity S for --model, 0 <= S < 1.")
    ] = None,
    compare: Annotated[
        Optional[str],
        typer.Option(
            "--compare",
            help="Run to compare: uniform, Block-Influence, searched and fine-tuned "
            "schedules with the static, random and dynamic routers.",
        ),
    ] = None,
    schedule: Annotated[
        Optional[str],
        typer.Option(
            help="With --run: uniform, best or finetuned. With --model: one sparsity per "
            "decoder block, comma-separated (0.0,0.0,0.41,...)."
        ),
    ] = None,
    router: Annotated[
        Optional[str],
        typer.Option(
            help="static, random, or (with --run) dynamic: the run's latest router. With "
            "--model, several comma-separated (static,random) evaluate one row each."
        ),
    ] = None,
    rows_only: Annotated[
        Optional[str],
        typer.Option(
            "--rows",
            help="With --compare or --model: only these rows, comma-separated "
            "<schedule>+<router> (uniform+static,finetuned+dynamic,schedule+static).",
        ),
    ] = None,
    baseline: Annotated[
        Optional[str],
        typer.Option(
            help="A row to compare every other row with, paired on the same examples "
            "(difference with its 95% bootstrap interval and McNemar's test): dense or "
            "<schedule>+<router>, e.g. uniform+static.",
        ),
    ] = None,
    suite: Annotated[
        Optional[str],
        typer.Option(
            help="A named suite: paper (ARC-E, ARC-C, HellaSwag, WinoGrande, MMLU: the FTP "
            "paper's tasks, lm-eval's prompts, fixed subsets sized for a CPU), paper-full "
            "(every example), dev (the development set), or a suite YAML file "
            "(configs/devsuite.yaml).",
        ),
    ] = None,
    retrieval: Annotated[
        Optional[str],
        typer.Option(
            help="Retrieval families, comma-separated: niah_single, niah_multikey, "
            "variable_tracking, qa (or all): accuracy per prompt length and key depth.",
        ),
    ] = None,
    length: Annotated[
        Optional[list[int]],
        typer.Option("--length", help="Retrieval prompt length in tokens; repeat (default 1024)."),
    ] = None,
    depth: Annotated[
        Optional[list[float]],
        typer.Option(
            "--depth", help="Key depth in percent of the haystack; repeat (default 0,10,..,100)."
        ),
    ] = None,
    samples: Annotated[
        Optional[int], typer.Option(help="Retrieval prompts per length and depth (default 4).")
    ] = None,
    heatmap: Annotated[
        Optional[Path],
        typer.Option(help="Write the retrieval heatmap (depth x length, every row) as a PNG."),
    ] = None,
    tasks: Annotated[
        Optional[str],
        typer.Option(
            "--tasks",
            help="lm-eval tasks, comma-separated: names, local task YAML files or "
            "include directories.",
        ),
    ] = None,
    task_file: Annotated[
        Optional[list[str]],
        typer.Option(
            "--task-file",
            help="BIG-bench task.json file (or its directory), bigbench:<name> or "
            "olmo:<task> (arc_easy, hellaswag, boolq, sciq, ...); repeat for several.",
        ),
    ] = None,
    text: Annotated[
        Optional[str],
        typer.Option(
            help="Held-out text source (its held-out split): builtin:pydoc, a .txt or .jsonl "
            "file; default with no task: the run's calibration source, else builtin:pydoc."
        ),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option(help="First N examples of each task (file order).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Sequences per forward (an example's choices always share one).")
    ] = 8,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    dtype: Annotated[str, typer.Option(help="With --model: float32 or bfloat16.")] = "float32",
    device: Device = None,
    force: Annotated[
        bool, typer.Option("--force", help="Evaluate on data the run calibrated or trained on.")
    ] = False,
    json_out: JsonOut = None,
    plot_out: Annotated[
        Optional[Path], typer.Option("--plot", help="Write a retention plot (PNG).")
    ] = None,
    db: Db = None,
    quiet: Quiet = False,
) -> None:
    """Dense against routed, same examples and prompts: accuracy retention with paired
    bootstrap intervals, realized sparsity and FLOP saving."""
    sources = [
        name
        for name, given in (
            ("--run", run),
            ("--export", export),
            ("--model", model),
            ("--compare", compare),
        )
        if given
    ]
    if len(sources) != 1:
        fail("give exactly one of --run, --export, --model (with --sparsity) or --compare")
    blocks = None
    if model is not None:
        if sparsity is None and schedule is None:
            fail("--model needs --sparsity, --schedule or both")
        if schedule is not None:
            blocks = _block_list(schedule)
            schedule = None
    elif sparsity is not None:
        fail("--sparsity goes with --model")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        fail("--sparsity must lie in [0, 1)")
    if schedule is not None and run is None:
        fail("--schedule goes with --run or --model")
    if router is not None and (export is not None or compare is not None):
        fail("--router goes with --run or --model")
    routers = [r.strip() for r in router.split(",")] if router is not None else []
    if model is not None and any(r not in _fixed_routers() for r in routers):
        fail(
            "--router with --model must be static or random (evaluate a trained router "
            "with --run or --export)"
        )
    if len(routers) > 1 and model is None:
        fail("several --router values go with --model")
    if rows_only is not None and compare is None and model is None:
        fail("--rows goes with --compare or --model")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        fail(f"--limit must lie in 1..{MAX_LIMIT}")
    if not 1 <= batch_size <= MAX_BATCH or not 1 <= resamples <= MAX_RESAMPLES:
        fail(f"--batch-size must lie in 1..{MAX_BATCH} and --resamples in 1..{MAX_RESAMPLES}")
    if not 0 <= seed <= MAX_SEED:
        fail(f"--seed must lie in 0..{MAX_SEED}")
    if dtype not in ("float32", "bfloat16"):
        fail(f"--dtype must be float32 or bfloat16, not {dtype!r}")
    check_output_file(json_out, "--json")
    check_output_file(plot_out, "--plot")
    check_output_file(heatmap, "--heatmap")
    extras = _extras(suite, retrieval, length, depth, samples, baseline, rows_only, heatmap)
    lm_tasks = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    with user_errors():
        plan, targets, view, store = _prepare(
            run or compare,
            compare is not None,
            export,
            model,
            sparsity,
            blocks,
            schedule,
            router,
            lm_tasks,
            task_file or [],
            text,
            limit,
            batch_size,
            resamples,
            seed,
            dtype,
            force,
            db,
            device,
            extras,
        )
        _execute(plan, targets, view, store, extras, json_out, plot_out, quiet)


def _prepare(
    ref: str | None,
    comparing: bool,
    export: Path | None,
    model: str | None,
    sparsity: float | None,
    blocks: list[float] | None,
    schedule: str | None,
    router: str | None,
    lm_tasks: list[str],
    task_files: list[str],
    text: str | None,
    limit: int | None,
    batch_size: int,
    resamples: int,
    seed: int,
    dtype: str,
    force: bool,
    db: str | None,
    device: str | None,
    extras: Extras,
) -> tuple[Any, Any, Any, Any]:
    """Everything checked, nothing loaded: the plan, the targets (a function of the block
    count, or None for --compare), the run view and store (for runs)."""
    from evaluation.tasks import check_fits
    from ftprune.eval import EvalPlan, Target, load_choice_tasks
    from ftprune.eval_targets import check_hygiene, run_target
    from workers import BUILTIN_PYDOC, ScorerSettings
    from workers.data import check_text
    from workers.devices import check_device_available, check_device_spec

    if device is not None:  # in this process: eval loads its model here
        check_device_spec(device)
        check_device_available(device)

    suite_tasks = extras.suite.tasks if extras.suite is not None else ()
    task_files = task_files + [t.spec for t in suite_tasks]
    choice_tasks = load_choice_tasks(task_files[: len(task_files) - len(suite_tasks)], limit)
    choice_tasks += [load_choice_tasks([t.spec], min(limit or t.n, t.n))[0] for t in suite_tasks]
    if lm_tasks:
        from evaluation.lmeval import check_lm_tasks

        check_lm_tasks(lm_tasks)
    if text is not None:
        check_text(text, "--text file")
    view = store = None
    if ref is not None:
        from ftprune.eval_targets import run_view
        from search.settings import scorer_settings

        store = open_store(db, create=False)
        view = run_view(store, ref)
        check_hygiene(view.config.model_dump(), task_files + lm_tasks, force)
        settings = scorer_settings(view.config)
        if comparing:
            targets = None
        else:
            one = run_target(view, schedule, router)

            def targets(blocks: int) -> list[Target]:
                return [one(blocks)]
    elif export is not None:
        from router.specs import checkpoint_spec, read_meta

        meta = read_meta(export)
        settings = ScorerSettings(model=meta["model"], dtype=meta["dtype"], source=BUILTIN_PYDOC)
        schedule_values = [float(s) for s in meta["schedule"]]
        spec = checkpoint_spec(export.resolve())

        def targets(blocks: int) -> list[Target]:
            return [Target("export", schedule_values, spec)]
    else:
        from router.facts import model_facts
        from search.config import ConfigError

        assert model is not None
        layers = model_facts(model).blocks
        if blocks is not None and len(blocks) != layers:
            raise ConfigError(
                f"--schedule has {len(blocks)} entries but {model} has {layers} decoder blocks"
            )
        settings = ScorerSettings(model=model, dtype=dtype, source=BUILTIN_PYDOC)
        kinds = (router or "static").split(",")
        given = blocks

        def targets(blocks: int) -> list[Target]:
            schedules = [("uniform", [sparsity] * blocks)] if sparsity is not None else []
            schedules += [("schedule", given)] if given is not None else []
            return [Target(label, values, k.strip()) for label, values in schedules for k in kinds]

    check_fits(choice_tasks, settings.model)
    if text is not None:
        settings = dataclasses.replace(settings, source=text)
    if device is not None:
        settings = dataclasses.replace(settings, device=device)
    use_text = text is not None or not (choice_tasks or lm_tasks or extras.grid)
    plan = EvalPlan(
        settings=settings,
        choice_tasks=choice_tasks,
        lm_tasks=lm_tasks,
        text=use_text,
        retrieval=extras.grid,
        limit=limit,
        batch_size=batch_size,
        resamples=resamples,
        seed=seed,
    )
    if comparing:
        assert view is not None  # --compare reads its run above
        names = _compare_names(view)
    else:
        names = [t.name for t in targets(1)]
    for name in [*extras.rows, *([extras.baseline] if extras.baseline else [])]:
        if name != "dense" and name not in names:
            raise TaskError(f"no row {name!r} is evaluated here (rows: dense, {', '.join(names)})")
    if extras.heatmap is not None and extras.grid is None:
        raise TaskError("--heatmap draws retrieval results: give --retrieval or a suite with one")
    return plan, targets, view, store


@dataclasses.dataclass(frozen=True)
class Extras:
    """The suite, retrieval grid and row choices of one evaluation, checked."""

    suite: Suite | None = None
    grid: RetrievalGrid | None = None
    baseline: str | None = None
    rows: tuple[str, ...] = ()
    heatmap: Path | None = None


def _extras(
    suite: str | None,
    retrieval: str | None,
    lengths: list[int] | None,
    depths: list[float] | None,
    samples: int | None,
    baseline: str | None,
    rows: str | None,
    heatmap: Path | None,
) -> Extras:
    """The options' suite and retrieval grid (``--retrieval`` and its grid options override
    a suite's grid); exits 2 on bad input. Reads no task data."""
    from evaluation.retrieval import FAMILIES
    from evaluation.suites import DEPTHS, RetrievalGrid, load_suite

    with user_errors():
        chosen = load_suite(suite) if suite is not None else None
        grid = chosen.retrieval if chosen is not None else None
        if retrieval is None and (lengths or depths or samples is not None) and grid is None:
            fail("--length, --depth and --samples go with --retrieval")
        if retrieval is not None or grid is not None:
            families = grid.families if grid is not None else ()
            if retrieval is not None:
                names = [f.strip() for f in retrieval.split(",") if f.strip()]
                families = FAMILIES if names == ["all"] else tuple(names)
            grid = RetrievalGrid(
                families,
                tuple(lengths) if lengths else (grid.lengths if grid else (1024,)),
                tuple(d / 100 for d in depths) if depths else (grid.depths if grid else DEPTHS),
                samples if samples is not None else (grid.samples if grid else 4),
            )
    picked = tuple(r.strip() for r in (rows or "").split(",") if r.strip())
    return Extras(chosen, grid, baseline, picked, heatmap)


def _compare_names(view: RunView) -> list[str]:
    """The rows ``--compare`` can evaluate for a run (see
    :func:`ftprune.eval_targets.compare_targets`)."""
    schedules = ["uniform", "block_influence"]
    schedules += ["searched"] if view.best is not None else []
    schedules += ["finetuned"] if view.finetuned is not None else []
    routers = ["static", "random"] + (["dynamic"] if view.router else [])
    return [f"{s}+{r}" for s in schedules for r in routers]


def _execute(
    plan: Any,
    targets: Any,
    view: Any,
    store: Any,
    extras: Extras,
    json_out: Path | None,
    plot_out: Path | None,
    quiet: bool,
) -> None:
    from ftprune.eval import Evaluator
    from ftprune.eval_rows import format_table, json_rows, plot
    from ftprune.eval_targets import compare_targets
    from router.specs import checkpoint_dir

    def echo(line: str) -> None:
        if not quiet:
            typer.echo(line, err=True)

    evaluator = Evaluator(plan, progress=not quiet, echo=echo)
    if targets is None:
        chosen = compare_targets(view, evaluator.scorer)
        chosen = [t for t in chosen if not extras.rows or t.name in extras.rows]
    else:
        chosen = targets(evaluator.num_blocks)
        chosen = [t for t in chosen if not extras.rows or t.name in extras.rows]
    rows: list[dict[str, Any]] = []
    for target in chosen:
        target_rows = evaluator.evaluate(target)
        rows += target_rows
        if store is not None:
            store.add_eval_results(
                view.run_id,
                target.label,
                target.router_kind,
                [{**row, "samples": row["n"]} for row in target_rows],
                router_id=view.router_id if checkpoint_dir(target.router) else None,
            )
    typer.echo(
        f"{plan.settings.model}: dense and routed on the same examples; retention = "
        f"routed / dense, 95% paired bootstrap CI ({plan.resamples} resamples)"
    )
    typer.echo(format_table(rows))
    _report_extras(evaluator, rows, extras, plan)
    if store is not None:
        typer.echo(f"stored {len(rows)} rows against run {view.name!r}")
    if extras.baseline is not None:
        rows = rows + _differences(evaluator, extras.baseline, plan)
    if json_out is not None:
        json_out.write_text(json.dumps(json_rows(rows), indent=2) + "\n")
        typer.echo(f"wrote {len(rows)} rows to {json_out}")
    if plot_out is not None:
        plot([r for r in rows if "baseline" not in r], plot_out)
        typer.echo(f"wrote {plot_out}")


def _report_extras(evaluator: Any, rows: list[dict[str, Any]], extras: Extras, plan: Any) -> None:
    """The retrieval grid (and heatmap) and the paired differences to the baseline."""
    from ftprune.eval_retrieval import format_grid, plot_heatmap

    if plan.retrieval is not None:
        typer.echo(format_grid(rows, "acc"))
        typer.echo(format_grid(rows, "exact_match"))
        if extras.heatmap is not None:
            plot_heatmap(rows, extras.heatmap)
            typer.echo(f"wrote {extras.heatmap}")
    if extras.baseline is not None:
        from ftprune.eval_compare import format_differences

        typer.echo(
            f"paired differences to {extras.baseline} (points of accuracy, 95% paired "
            "bootstrap CI; McNemar's exact p)"
        )
        typer.echo(format_differences(_differences(evaluator, extras.baseline, plan)))


def _differences(evaluator: Any, baseline: str, plan: Any) -> list[dict[str, Any]]:
    from ftprune.eval_compare import difference_rows

    base = evaluator.scores[baseline]
    return [
        row
        for name, scores in evaluator.scores.items()
        if name != baseline
        for row in difference_rows(name, baseline, base, scores, plan.resamples, plan.seed)
    ]


def _block_list(text: str) -> list[float]:
    """``--schedule`` with ``--model``: comma-separated block sparsities, each in [0, 1)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        fail(f"--schedule with --model is one sparsity per block, comma-separated: {text!r}")
    if any(not 0.0 <= v < 1.0 for v in values):
        fail("every --schedule entry must lie in [0, 1)")
    return values
