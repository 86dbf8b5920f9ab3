"""The ``ftprune`` command line: thin entry points over the library.

Every command validates its input before any work starts and before the database is
touched; bad input prints one line (``error: ...``) and exits with status 2. Heavy imports
(torch, transformers, Ray) happen inside the commands, so ``--help`` answers at once.
The process runs with the tuned heap of :mod:`workers.heap` (``FTPRUNE_HEAP=default``
keeps glibc's defaults).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer
from typer._click.core import Context
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperCommand, TyperGroup

from ftprune.cli_bench import bench_app
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
    open_store,
    user_errors,
)
from ftprune.cli_dashboard import dashboard
from ftprune.cli_db import db_app
from ftprune.cli_demo import demo
from ftprune.cli_eval import eval_command
from ftprune.cli_pipeline import export, pipeline, router_app
from ftprune.cli_tune import tune_app

if TYPE_CHECKING:
    from search.config import RunConfig
    from search.coordinator import SearchOutcome
    from storage import Store
    from storage.records import StoredRun


class RootGroup(TyperGroup):
    """The ``ftprune`` group. A usage error (unknown option, missing or malformed value) is
    one line on stderr and exit status 2, like every other bad input; Ctrl-C ends with one
    line and exit status 130 instead of a traceback or silence."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as exc:  # a group named alone: its help, as Click prints it
            exc.show()
            sys.exit(exc.exit_code)
        except UsageError as exc:
            hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            typer.echo(f"error: {exc.format_message().rstrip('.')}{hint}", err=True)
            sys.exit(exc.exit_code)
        except ClickException as exc:
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


class PlainUsageCommand(TyperCommand):
    """A command whose usage line names its arguments the usual way: ``RUN`` when required,
    ``[RUN]`` when optional."""

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


app = typer.Typer(
    cls=RootGroup,
    help="Evolutionary search for FTP token-wise pruning of causal LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: paragraphs reflowed to the terminal, no boxes
)
search_app = typer.Typer(
    help="Launch and inspect sparsity-schedule searches.", no_args_is_help=True
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ftprune {version('ftprune')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Evolutionary search for FTP token-wise pruning of causal LMs."""


app.add_typer(search_app, name="search")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")
app.add_typer(router_app, name="router")
app.add_typer(tune_app, name="tune")
app.command("pipeline")(pipeline)
app.command("export")(export)
app.command("eval")(eval_command)
app.command("dashboard")(dashboard)
app.command("demo")(demo)


@search_app.command("launch")
def search_launch(
    config: Annotated[Path, typer.Option("--config", help="Run config (YAML).")],
    model: Annotated[
        Optional[str],
        typer.Option(help="Model: smollm2-135m, a .gguf file, a directory or a hub id."),
    ] = None,
    target_sparsity: Annotated[
        Optional[float], typer.Option(help="Mean fraction of (token, block) pairs skipped.")
    ] = None,
    calibration: Annotated[
        Optional[str], typer.Option(help="builtin:pydoc, a .txt file or a .jsonl file.")
    ] = None,
    seq_len: Annotated[
        Optional[list[int]],
        typer.Option("--seq-len", help="Calibration sequence length (repeat for several)."),
    ] = None,
    generations: Annotated[Optional[int], typer.Option(help="GA generations.")] = None,
    offspring: Annotated[Optional[int], typer.Option(help="New candidates per generation.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed of the search.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Unique name for the run.")] = None,
    pool: Pool = None,
    workers: Workers = None,
    ray_address: Annotated[
        Optional[str], typer.Option(help="Ray cluster address ('auto' under ray job submit).")
    ] = None,
    device: Device = None,
    dtype: Dtype = None,
    db: Db = None,
    quiet: Quiet = False,
) -> None:
    """Search a sparsity schedule and evaluate it against the uniform one on held-out text."""
    from search.config import build_config

    with user_errors():
        cfg = build_config(
            config,
            model=model,
            target_sparsity=target_sparsity,
            calibration=calibration,
            seq_lens=seq_len,
            generations=generations,
            offspring=offspring,
            seed=seed,
            run_name=run_name,
            pool=pool,
            workers=workers,
            ray_address=ray_address,
            device=device,
            dtype=dtype,
        )
        url = checked_url(db, writes=True)  # after the config: a bad one needs no SQLAlchemy
        _run_and_report(cfg, url, quiet)


@search_app.command("status", cls=PlainUsageCommand)
def search_status(
    run: Annotated[
        Optional[str],
        typer.Argument(
            metavar="RUN",
            help="Run id or name (default: the latest run; for a pipeline's fine-tuning "
            "run, the pipeline's own run, which it named).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: Db = None,
) -> None:
    """Show a run's progress and best schedule.

    Only reads: a database at an older schema revision is refused, never migrated.
    """
    from storage import StorageError, open_reader

    with user_errors(), open_reader(db) as store:
        if run is None:
            latest = store.latest_run()
            if latest is None:
                raise StorageError("the database holds no runs yet")
            run = str(_pipeline_run(store, latest).id)
        status = store.run_status(run)
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    for key, value in status.items():
        if key == "best_schedule" and value:
            value = format_schedule(value)
        typer.echo(f"{key:>20}: {value}")


def _pipeline_run(store: Store, row: StoredRun) -> StoredRun:
    """``row``, or for a pipeline's fine-tuning run (``<run>-finetune-<n>``, seeded from
    that pipeline) the pipeline's own run: the run a pipeline or the demo names."""
    from storage import StorageError

    match = re.fullmatch(r"(.+)-finetune-\d+", row.name)
    if match is None or row.config.get("seed_run") is None:
        return row
    try:
        return store.find_run(match.group(1))
    except StorageError:
        return row


@search_app.command("resume", cls=PlainUsageCommand)
def search_resume(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id or name.")],
    device: Device = None,
    db: Db = None,
    quiet: Quiet = False,
) -> None:
    """Continue a run from its last completed generation (after a crash or a kill).

    The result is the same as an uninterrupted run with the same config and seed
    (``--device`` moves the workers for this process; the run's config keeps its own).
    """
    from search.coordinator import prepare_resume, resume
    from storage import default_url

    url = db or default_url()
    with user_errors():
        store = open_store(url, create=False)
        checked = prepare_resume(run, store, device)
        started = time.perf_counter()
        outcome = resume(run, store, show_progress=not quiet, checked=checked)
    _report(checked.config, outcome, url, time.perf_counter() - started)


def _run_and_report(cfg: RunConfig, url: str, quiet: bool) -> None:
    """Check everything (the database read-only), then launch the run and report it."""
    from search.coordinator import launch
    from search.preflight import check_inputs, preflight
    from storage.precheck import open_for_checks

    check_inputs(cfg)
    reader = open_for_checks(url)
    try:
        checked = preflight(cfg, reader)
    finally:
        if reader is not None:
            reader.close()
    from ftprune.pipeline import pool_line

    store = open_store(url)
    if not quiet:
        typer.echo(f"== {pool_line(cfg)}", err=True)
    started = time.perf_counter()
    outcome = launch(checked, store, show_progress=not quiet)
    _report(cfg, outcome, url, time.perf_counter() - started)


def _report(cfg: RunConfig, outcome: SearchOutcome, url: str, elapsed: float) -> None:
    from search.records import BEST, UNIFORM
    from storage import redact

    found = outcome.search
    typer.echo(
        f"\nrun {outcome.run_name} (id {outcome.run_id}): {cfg.model}, "
        f"{len(found.best_schedule)} blocks, target sparsity {cfg.target_sparsity:.2f}, "
        f"{found.evaluations} evaluations in {cfg.generations} generations, "
        f"{found.forward_tokens} forward tokens, {elapsed:.0f} s"
    )
    typer.echo(f"best calibration window KL: {found.best_fitness:.4f}")
    typer.echo(f"best schedule: {format_schedule(found.best_schedule)}")
    echo_heldout_table(
        cfg,
        [
            ("uniform + static router", outcome.heldout[UNIFORM].metrics),
            ("searched + static router", outcome.heldout[BEST].metrics),
        ],
    )
    typer.echo(
        f"\nlook at the results:\n  ftprune search status {outcome.run_name} "
        f"--db {redact(url)}\n  ftprune search status {outcome.run_name} --json "
        f"--db {redact(url)}"
    )


def main() -> None:
    from workers.heap import tune_heap

    tune_heap()
    app(prog_name="ftprune")


if __name__ == "__main__":
    main()
