"""``ftprune eval``: its options, parsed into an :class:`ftprune.eval_request.EvalRequest`
that is checked, prepared and executed there (see that module). Bad input prints one line
and exits 2 before a model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ftprune.cli_common import (
    Db,
    Device,
    JsonOut,
    Quiet,
    check_output_file,
    user_errors,
)


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
    from ftprune.eval_request import EvalRequest, prepare

    request = EvalRequest(
        run=run,
        export=export,
        model=model,
        sparsity=sparsity,
        compare=compare,
        schedule=schedule,
        router=router,
        rows=rows_only,
        baseline=baseline,
        suite=suite,
        retrieval=retrieval,
        lengths=tuple(length or ()),
        depths=tuple(depth or ()),
        samples=samples,
        heatmap=heatmap,
        tasks=tasks,
        task_files=tuple(task_file or ()),
        text=text,
        limit=limit,
        batch_size=batch_size,
        resamples=resamples,
        seed=seed,
        dtype=dtype,
        device=device,
        force=force,
        db=db,
    )
    with user_errors():
        request.check()
    check_output_file(json_out, "--json")
    check_output_file(plot_out, "--plot")
    check_output_file(heatmap, "--heatmap")
    with user_errors():
        prepared = prepare(request)
        from ftprune.eval_run import execute  # torch and the scorer load from here on

        progress = None if quiet else (lambda line: typer.echo(line, err=True))
        execute(prepared, typer.echo, progress, json_out, plot_out)
