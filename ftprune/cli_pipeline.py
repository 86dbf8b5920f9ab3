"""``ftprune pipeline``, ``ftprune router train`` and ``ftprune export``: FTP's three steps
and their product. Input is checked before any work starts (one ``error:`` line, exit 2)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

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
    config: Annotated[Path, typer.Option("--config", help="Run config (YAML).")],
    rounds: Annotated[
        int, typer.Option(help="Repeat steps 2 (train the router) and 3 (fine-tune the schedule).")
    ] = 1,
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
    held-out metrics of every step are printed at the end.
    """
    from search.config import build_config

    with user_errors():
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
        run_pipeline_and_report(cfg, url, rounds, quiet)


def run_pipeline_and_report(cfg: Any, url: str, rounds: int, quiet: bool) -> None:
    """Validate, run the pipeline, print the summary (used by ``pipeline`` and ``demo``;
    ``url`` is checked already)."""
    from ftprune.cli_checks import check_run
    from ftprune.pipeline import check_pipeline, run_pipeline

    check_pipeline(cfg, None, rounds)  # before the database is created or touched
    check_run(cfg)
    store = open_store(url)
    started = time.perf_counter()
    outcome = run_pipeline(
        cfg,
        store,
        rounds,
        show_progress=not quiet,
        echo=lambda line: typer.echo(f"\n== {line}", err=True),
    )
    report(cfg, store, outcome, url, rounds, time.perf_counter() - started)


@router_app.command("train")
def router_train(
    run: Annotated[str, typer.Option("--run", help="Run id or name: its config and data.")],
    schedule: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated block sparsities (default: the run's best schedule)."),
    ] = None,
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
    pool), on ``--device`` if given, else the run's device.
    """
    from ftprune.cli_checks import check_run, check_schedule
    from ftprune.pipeline import train_router_step
    from search.config import ConfigError, RunConfig
    from search.settings import open_pool

    with user_errors():
        if steps is not None and steps < 1:
            raise ConfigError("--steps must be at least 1")
        chosen = _parse_schedule(schedule) if schedule else None
        store = open_store(db, create=False)
        row = store.find_run(run)
        cfg = on_device(RunConfig(**row.config), device)
        if steps is not None:
            cfg = cfg.model_copy(
                update={"router_training": cfg.router_training.model_copy(update={"steps": steps})}
            )
        if _tuned(weights):
            from ftprune.tune import tuned_config

            cfg = tuned_config(cfg, store, row.id)
        chosen = chosen or row.best_schedule
        if not chosen:
            raise ConfigError(f"run {row.name!r} has no best schedule yet: pass --schedule")
        blocks = check_run(cfg).num_hidden_layers
        check_schedule(
            chosen,
            blocks,
            "--schedule" if schedule else "the run's best schedule",
            cfg.router_training.nested,
        )
        existing = store.routers(row.id)
        chosen_label = _router_label(label, len(existing))
        if any(r.label == chosen_label.to_json() for r in existing):
            raise ConfigError(
                f"run {row.name!r} already has a router labelled {chosen_label.to_json()!r}"
            )
        with open_pool(cfg, workers=1) as pool:
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
    db: Db = None,
) -> None:
    """Write a run's routed model (latest router, fine-tuned schedule) to a directory.

    ``router.checkpoint.load_routed(DIR)`` loads the directory into a working routed model.
    """
    from ftprune.pipeline import export_run
    from storage import open_reader

    with user_errors():
        if out.exists() and any(out.iterdir()):
            from search.config import ConfigError

            raise ConfigError(f"--out {out} exists and is not empty")
        with open_reader(db) as store:
            path, schedule = export_run(store, run, out)
    typer.echo(
        f"wrote {path}: schedule mean {sum(schedule) / len(schedule):.3f}\n"
        f"load it with:\n  from router.checkpoint import load_routed\n"
        f"  model, tokenizer, routing = load_routed({str(path)!r})"
    )


def _tuned(weights: str) -> bool:
    """Whether ``--weights`` asks for tuned settings; ConfigError if it names neither."""
    from ftprune.tune import check_weights

    check_weights(weights)
    return weights == "best"


def _router_label(text: str | None, existing: int) -> Any:
    """``--label`` as a RouterLabel (default: the next round); ConfigError if it reads as a
    held-out label."""
    from search.config import ConfigError
    from search.records import RouterLabel

    if text is None:
        return RouterLabel(round=existing + 1)
    try:
        return RouterLabel.from_json(text)
    except ValueError as error:
        raise ConfigError(f"--label: {error}") from None


def _parse_schedule(text: str) -> list[float]:
    from search.config import ConfigError

    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--schedule must be comma-separated numbers, got {text!r}") from None


def summary_rows(rounds: int) -> list[tuple[Any, str]]:
    """(held-out label on the main run, what the row shows) of the pipeline's summary."""
    from search.records import BEST, UNIFORM, HeldoutLabel

    return [
        (UNIFORM, "uniform + static router"),
        (BEST, "searched + static router"),
        (HeldoutLabel("dynamic", rounds), "searched + dynamic router"),
        (HeldoutLabel("finetuned", rounds), "fine-tuned + dynamic router"),
    ]


def report(cfg: Any, store: Any, outcome: Any, url: str, rounds: int, elapsed: float) -> None:
    """The pipeline's summary: the schedules found and each step's held-out metrics."""
    from storage import redact

    first = outcome.search
    final = outcome.rounds[-1].finetune.search
    typer.echo(
        f"\nrun {first.run_name} (id {first.run_id}): {cfg.model}, target sparsity "
        f"{cfg.target_sparsity:.2f}, {rounds} round(s), {elapsed:.0f} s"
    )
    typer.echo(f"searched schedule:   {format_schedule(first.search.best_schedule)}")
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
