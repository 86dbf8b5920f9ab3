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
from typing import Annotated, Any, Optional

import typer

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
            help="Evaluate this model ad hoc: a uniform schedule (--sparsity) or one "
            "sparsity per block (--schedule)."
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
        typer.Option(help="static, random, or (with --run) dynamic: the run's latest router."),
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
            help="BIG-bench task.json file (or its directory), or bigbench:<name>; "
            "repeat for several.",
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
        if (sparsity is None) == (schedule is None):
            fail("--model needs exactly one of --sparsity and --schedule")
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
    if model is not None and router is not None and router not in _fixed_routers():
        fail(
            "--router with --model must be static or random (evaluate a trained router "
            "with --run or --export)"
        )
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
        )
        _execute(plan, targets, view, store, compare is not None, json_out, plot_out, quiet)


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
) -> tuple[Any, Any, Any, Any]:
    """Everything checked, nothing loaded: the plan, the targets (a function of the block
    count, or None for --compare), the run view and store (for runs)."""
    from evaluation.tasks import check_fits
    from ftprune.eval import EvalPlan, Target, check_hygiene, load_choice_tasks, run_target
    from workers import BUILTIN_PYDOC, ScorerSettings
    from workers.data import check_text
    from workers.devices import check_device_available, check_device_spec

    if device is not None:  # in this process: eval loads its model here
        check_device_spec(device)
        check_device_available(device)

    choice_tasks = load_choice_tasks(task_files, limit)
    if lm_tasks:
        from evaluation.lmeval import check_lm_tasks

        check_lm_tasks(lm_tasks)
    if text is not None:
        check_text(text)
    view = store = None
    if ref is not None:
        from ftprune.eval import run_view
        from search.settings import scorer_settings

        store = open_store(db, create=False)
        view = run_view(store, ref)
        check_hygiene(view.config.model_dump(), task_files + lm_tasks, force)
        settings = scorer_settings(view.config)
        targets = None if comparing else run_target(view, schedule, router)
    elif export is not None:
        from router.specs import checkpoint_spec, read_meta

        meta = read_meta(export)
        settings = ScorerSettings(model=meta["model"], dtype=meta["dtype"], source=BUILTIN_PYDOC)
        schedule_values = [float(s) for s in meta["schedule"]]
        spec = checkpoint_spec(export.resolve())

        def targets(blocks: int) -> Target:
            return Target("export", schedule_values, spec)
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
        kind = router or "static"
        given = blocks

        def targets(count: int) -> Target:
            if given is not None:
                return Target("schedule", given, kind)
            assert sparsity is not None
            return Target("uniform", [sparsity] * count, kind)

    check_fits(choice_tasks, settings.model)
    if text is not None:
        settings = dataclasses.replace(settings, source=text)
    if device is not None:
        settings = dataclasses.replace(settings, device=device)
    use_text = text is not None or not (choice_tasks or lm_tasks)
    plan = EvalPlan(
        settings=settings,
        choice_tasks=choice_tasks,
        lm_tasks=lm_tasks,
        text=use_text,
        limit=limit,
        batch_size=batch_size,
        resamples=resamples,
        seed=seed,
    )
    return plan, targets, view, store


def _execute(
    plan: Any,
    targets: Any,
    view: Any,
    store: Any,
    comparing: bool,
    json_out: Path | None,
    plot_out: Path | None,
    quiet: bool,
) -> None:
    from ftprune.eval import Evaluator, compare_targets, format_table, json_rows, plot
    from router.specs import checkpoint_dir

    def echo(line: str) -> None:
        if not quiet:
            typer.echo(line, err=True)

    evaluator = Evaluator(plan, progress=not quiet, echo=echo)
    chosen = (
        compare_targets(view, evaluator.scorer) if comparing else [targets(evaluator.num_blocks)]
    )
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
    if store is not None:
        typer.echo(f"stored {len(rows)} rows against run {view.name!r}")
    if json_out is not None:
        json_out.write_text(json.dumps(json_rows(rows), indent=2) + "\n")
        typer.echo(f"wrote {len(rows)} rows to {json_out}")
    if plot_out is not None:
        plot(rows, plot_out)
        typer.echo(f"wrote {plot_out}")


def _block_list(text: str) -> list[float]:
    """``--schedule`` with ``--model``: comma-separated block sparsities, each in [0, 1)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        fail(f"--schedule with --model is one sparsity per block, comma-separated: {text!r}")
    if any(not 0.0 <= v < 1.0 for v in values):
        fail("every --schedule entry must lie in [0, 1)")
    return values
