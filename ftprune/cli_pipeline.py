"""``ftprune pipeline``, ``ftprune router train`` and ``ftprune export``: FTP's three steps
and their product. Input is checked before any work starts (one ``error:`` line, exit 2)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ftprune.cli_common import (
    Db,
    Device,
    Dtype,
    Pool,
    Quiet,
    Workers,
    checked_url,
    echo_heldout_table,
    format_schedule,
    on_device,
    open_store,
    user_errors,
)

if TYPE_CHECKING:
    from ftprune.pipeline import PipelineOutcome
    from search.config import RunConfig
    from search.preflight import CheckedRun
    from search.records import RouterLabel
    from storage import Store
    from storage.records import StoredRun

router_app = typer.Typer(help="Train learned routers.", no_args_is_help=True)
Weights = Annotated[
    str,
    typer.Option(
        "--weights",
        help="Router training's loss weights, guide decay and lr: 'config' or "
        "'best' (stored by `ftprune tune` for the run, else the model and S).",
    ),
]


def pipeline(
    config: Annotated[
        Optional[Path], typer.Option("--config", help="Run config (YAML) of a new pipeline.")
    ] = None,
    resume: Annotated[
        Optional[str],
        typer.Option(
            "--resume",
            help="Continue the pipeline of this run (id or name) where it stopped, with its "
            "stored config: finished steps are kept.",
        ),
    ] = None,
    rounds: Annotated[
        Optional[int],
        typer.Option(
            help="Repeat steps 2 (train the router) and 3 (fine-tune the schedule) "
            "(default: 1; with --resume, the rounds the pipeline began)."
        ),
    ] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Unique name for the run.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    pool: Pool = None,
    workers: Workers = None,
    device: Device = None,
    dtype: Dtype = None,
    db: Db = None,
    weights: Weights = "config",
    quiet: Quiet = False,
) -> None:
    """FTP end to end: search, train the dynamic router, fine-tune the schedule.

    Step 1 searches with the static router, step 2 trains the dynamic router for the best
    schedule, step 3 searches again from step 1's parents with the trained router; the
    held-out metrics of every step are printed at the end. Every name the pipeline will
    create is checked before any work; a pipeline that stopped continues with --resume.
    """
    from search.config import ConfigError, build_config

    with user_errors():
        if (config is None) == (resume is None):
            raise ConfigError("give exactly one of --config FILE and --resume RUN")
        if resume is not None:
            given = [run_name, seed, pool, workers, dtype]
            if any(v is not None for v in given) or weights != "config":
                raise ConfigError(
                    "--resume continues the run with its stored config: give only "
                    "--rounds, --device, --db and --quiet with it"
                )
            _resume_pipeline(resume, checked_url(db), rounds, device, quiet)
            return
        cfg = build_config(
            config,
            run_name=run_name,
            seed=seed,
            pool=pool,
            workers=workers,
            device=device,
            dtype=dtype,
        )
        url = checked_url(db, writes=True)  # after the config: a bad one needs no SQLAlchemy
        if _tuned(weights):
            from ftprune.tune import tuned_config

            cfg = tuned_config(cfg, open_store(url, create=False))
        run_pipeline_and_report(cfg, url, 1 if rounds is None else rounds, quiet)


def run_pipeline_and_report(cfg: RunConfig, url: str, rounds: int, quiet: bool) -> None:
    """Check everything (the database read-only), run the pipeline, print the summary
    (used by ``pipeline`` and ``demo``; ``url`` is checked already)."""
    from ftprune.pipeline import check_new_pipeline, check_pipeline
    from search.preflight import check_inputs
    from storage.precheck import open_for_checks

    check_pipeline(cfg, rounds)
    check_inputs(cfg)
    reader = open_for_checks(url)
    try:
        checked = check_new_pipeline(cfg, reader, rounds)
    finally:
        if reader is not None:
            reader.close()
    _run_and_report(checked, open_store(url), url, rounds, quiet, resuming=False)


def _resume_pipeline(
    ref: str, url: str, rounds: int | None, device: str | None, quiet: bool
) -> None:
    """``pipeline --resume``: the stored run's pipeline, from where it stopped."""
    from ftprune.pipeline import begun_rounds, check_pipeline
    from search.preflight import preflight
    from search.stored import load_run_config

    store = open_store(url, create=False)
    row = store.find_run(ref)
    cfg = on_device(load_run_config(row), device)
    rounds = rounds if rounds is not None else max(1, begun_rounds(store, row.id, row.name))
    check_pipeline(cfg, rounds)
    _run_and_report(preflight(cfg), store, url, rounds, quiet, resuming=True)


def _run_and_report(
    checked: CheckedRun, store: Store, url: str, rounds: int, quiet: bool, resuming: bool
) -> None:
    from ftprune.pipeline import run_pipeline

    started = time.perf_counter()
    outcome = run_pipeline(
        checked,
        store,
        rounds,
        show_progress=not quiet,
        echo=lambda line: typer.echo(f"\n== {line}", err=True),
        resuming=resuming,
    )
    report(checked.config, store, outcome, url, rounds, time.perf_counter() - started)


@router_app.command("train")
def router_train(
    run: Annotated[str, typer.Option("--run", help="Run id or name: its config and data.")],
    schedule: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated block sparsities (default: the run's best schedule)."),
    ] = None,
    any_mean: Annotated[
        bool,
        typer.Option(
            "--any-mean",
            help="Train for a --schedule whose mean is not the run's target sparsity.",
        ),
    ] = False,
    label: Annotated[
        Optional[str], typer.Option(help="Name of the router within the run (default: round-<n>).")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Override the training steps.")] = None,
    weights: Weights = "config",
    device: Device = None,
    db: Db = None,
    quiet: Quiet = False,
) -> None:
    """Train a router for a run's schedule; record its weights, curves and held-out metrics.

    Training runs on a worker of the run's pool (one Ray actor, or this process for a local
    pool), on ``--device`` if given, else the run's device. A --schedule must keep the run's
    target sparsity as its mean unless --any-mean says otherwise.
    """
    from ftprune.pipeline import train_router_step
    from search.config import MAX_STEPS, ConfigError
    from search.names import check_name
    from search.preflight import (
        check_basics,
        check_checkpoint_dirs,
        check_training_schedule,
        complete,
    )

    with user_errors():
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise ConfigError(f"--steps must lie in 1..{MAX_STEPS}")
        if label is not None:
            check_name(label, "--label")
        chosen = _parse_schedule(schedule) if schedule else None
        store = open_store(db, create=False)
        row = store.find_run(run)
        cfg = _training_config(store, row, device, steps, weights)
        chosen = chosen or row.best_schedule
        if not chosen:
            raise ConfigError(f"run {row.name!r} has no best schedule yet: pass --schedule")
        facts = check_basics(cfg)
        what = "--schedule" if schedule else "the run's best schedule"
        check_training_schedule(chosen, cfg, facts, what, any_mean)
        chosen_label = _router_label(label, [r.label for r in store.routers(row.id)], row.name)
        check_checkpoint_dirs(cfg, row.name, [chosen_label.to_json()])
        with complete(cfg, facts).open_pool(workers=1) as pool:
            stored = train_router_step(
                cfg, store, row.id, row.name, chosen, chosen_label, pool, not quiet
            )
    heldout = stored.heldout
    typer.echo(
        f"router {chosen_label.to_json()} (id {stored.router_id}) of run {row.name}, "
        f"trained on {stored.device} ({stored.worker}): held-out window KL "
        f"{heldout.kl:.4f}, top-1 {heldout.top1:.3f}, realized sparsity "
        f"{heldout.realized_sparsity:.3f}\ncheckpoint: {stored.checkpoint}"
    )


def export(
    run: Annotated[str, typer.Option("--run", help="Run id or name.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write (created).")],
    router: Annotated[
        Optional[str],
        typer.Option(
            "--router",
            help="Label of the router to export (round-<n>, or router train's --label; "
            "default: the pipeline's last round).",
        ),
    ] = None,
    schedule: Annotated[
        Optional[str],
        typer.Option(
            "--schedule",
            help="finetuned (the schedule the pipeline fine-tuned for the router) or "
            "trained (the one it was trained for); default: finetuned where there is one.",
        ),
    ] = None,
    db: Db = None,
) -> None:
    """Write a run's routed model (a router and a schedule) to a directory.

    ``router.checkpoint.load_routed(DIR)`` loads the directory into a working routed model.
    The line it prints names the router and the schedule it wrote.
    """
    from ftprune.export import SCHEDULE_WORDS, check_choice, check_out, plan_export, write_export
    from storage import open_reader

    with user_errors():
        check_choice(schedule)
        check_out(out)
        with open_reader(db) as store:
            plan = plan_export(store, run, router, schedule)
        write_export(plan, out)
    mean = sum(plan.schedule) / len(plan.schedule)
    typer.echo(
        f"wrote {out}: router {plan.router_label} (id {plan.router_id}) of run "
        f"{plan.run_name} with its {SCHEDULE_WORDS[plan.schedule_kind]} schedule "
        f"{format_schedule(plan.schedule)} (mean {mean:.3f})\n"
        f"load it with:\n  from router.checkpoint import load_routed\n"
        f"  model, tokenizer, routing = load_routed({str(out)!r})"
    )


def _tuned(weights: str) -> bool:
    """Whether ``--weights`` asks for tuned settings; ConfigError if it names neither."""
    from ftprune.tune import check_weights

    check_weights(weights)
    return weights == "best"


def _training_config(
    store: Store, row: StoredRun, device: str | None, steps: int | None, weights: str
) -> RunConfig:
    """The stored run's config as ``router train`` trains with it: ``--device``,
    ``--steps`` and ``--weights best`` applied."""
    from search.stored import load_run_config

    cfg = on_device(load_run_config(row), device)
    if steps is not None:
        training = cfg.router_training.model_copy(update={"steps": steps})
        cfg = cfg.model_copy(update={"router_training": training})
    if _tuned(weights):
        from ftprune.tune import tuned_config

        cfg = tuned_config(cfg, store, row.id)
    return cfg


def _router_label(text: str | None, existing: list[str], run: str) -> RouterLabel:
    """``--label`` (a plain name: :func:`search.names.check_name`, checked already) as a
    RouterLabel (default: the next round); ConfigError if it reads as a held-out label or
    the run has a router of that label."""
    from search.config import ConfigError
    from search.records import RouterLabel

    try:
        chosen = (
            RouterLabel(round=len(existing) + 1) if text is None else RouterLabel.from_json(text)
        )
    except ValueError as error:
        raise ConfigError(f"--label: {error}") from None
    if chosen.to_json() in existing:
        raise ConfigError(f"run {run!r} already has a router labelled {chosen.to_json()!r}")
    return chosen


def _parse_schedule(text: str) -> list[float]:
    from search.config import ConfigError

    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--schedule must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--schedule must be finite numbers, got {text!r}")
    return values


def summary_rows(rounds: int) -> list[tuple[Any, str]]:
    """(held-out label on the main run, what the row shows) of the pipeline's summary."""
    from search.records import BEST, UNIFORM, HeldoutLabel

    return [
        (UNIFORM, "uniform + static router"),
        (BEST, "searched + static router"),
        (HeldoutLabel("dynamic", rounds), "searched + dynamic router"),
        (HeldoutLabel("finetuned", rounds), "fine-tuned + dynamic router"),
    ]


def report(
    cfg: RunConfig, store: Store, outcome: PipelineOutcome, url: str, rounds: int, elapsed: float
) -> None:
    """The pipeline's summary: the schedules found and each step's held-out metrics."""
    from storage import redact

    first = outcome.search
    final = outcome.rounds[-1].finetune
    typer.echo(
        f"\nrun {first.run_name} (id {first.run_id}): {cfg.model}, target sparsity "
        f"{cfg.target_sparsity:.2f}, {rounds} round(s), {elapsed:.0f} s"
    )
    typer.echo(f"searched schedule:   {format_schedule(first.best_schedule)}")
    typer.echo(f"fine-tuned schedule: {format_schedule(final.best_schedule)}")
    heldout = {row.label: row for row in store.heldout(first.run_id)}
    echo_heldout_table(
        cfg, [(text, heldout[label.to_json()]) for label, text in summary_rows(rounds)]
    )
    typer.echo(
        f"\nlook at the results:\n  ftprune search status {first.run_name} "
        f"--db {redact(url)}\n  ftprune export --run {first.run_name} --out "
        f"{first.run_name}-routed --db {redact(url)}\n  ftprune dashboard --db "
        f"{redact(url)}"
    )
