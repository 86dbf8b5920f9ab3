"""``ftprune tune``: Optuna over router training's loss weights, guide decay and learning
rate, in the project's database; ``ftprune tune status`` shows a study's best trials (and
plots its sensitivity), ``ftprune tune check`` retrains the best against the first trial
over seeds on held-out data the study never saw.

Input is checked before any work starts and before the database is touched (one
``error:`` line, exit 2); parallel workers on SQLite are refused that way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ftprune.cli_common import (
    Db,
    Device,
    JsonOut,
    Quiet,
    check_output_file,
    check_range,
    on_device,
    open_store,
    user_errors,
)

if TYPE_CHECKING:
    import optuna

    from ftprune.tune import TuneSpec
    from search.config import RunConfig
    from storage import Store

MAX_TIMEOUT_S = 30 * 86_400  # --timeout: a month at most
tune_app = typer.Typer(help="Tune the router's loss weights with Optuna (see `tune status`).")


@tune_app.callback(invoke_without_command=True)
def tune(
    ctx: typer.Context,
    run: Annotated[
        Optional[str], typer.Option("--run", help="Tune on this run's best schedule (id or name).")
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", help="Tune on this config's uniform schedule at its target sparsity."
        ),
    ] = None,
    trials: Annotated[
        Optional[int],
        typer.Option(
            help="Finished trials the study should hold (a resumed study continues to N)."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes (more than 1 needs PostgreSQL).")
    ] = 1,
    study: Annotated[
        Optional[str],
        typer.Option(help="Study name (default: tune-<run name> or tune-<config file stem>)."),
    ] = None,
    timeout: Annotated[
        Optional[float], typer.Option(help="Seconds after which no new trial starts.")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Seed of the sampler and of router initialization.")
    ] = None,
    objectives: Annotated[
        str, typer.Option(help="quality (held-out window KL), quality,flops or quality,latency.")
    ] = "quality",
    device: Device = None,
    db: Db = None,
    quiet: Quiet = False,
) -> None:
    """Tune λ_g, λ_s, λ_d, the guide's decay (guide_steps) and the learning rate.

    Each trial trains a router for the schedule with sampled settings and scores held-out
    window KL; bad trials are pruned, the paper's equal weights run first, the best
    feasible settings are stored for `--weights best` of `router train` and `pipeline`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from search.config import ConfigError, build_config, override
    from search.stored import load_run_config, stored_config

    with user_errors():  # the options first: a bad one needs neither Optuna nor SQLAlchemy
        if (run is None) == (config is None):
            raise ConfigError("give exactly one of --run RUN and --config FILE")
        if trials is None:
            raise ConfigError("--trials is required")
        if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_S:
            raise ConfigError(f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT_S}]")
    from ftprune.tune import TuneSpec, check_workers, parse_objectives
    from storage import StorageError, check_url, default_url

    url = db or default_url()
    with user_errors():
        check_url(url)
        check_workers(url, workers, trials)
        names = parse_objectives(objectives)
        run_id, schedule = None, None
        if config is not None:
            cfg = build_config(config, seed=seed, device=device)
            _check(cfg, names)
            store = open_store(url)
            name = study or f"tune-{config.stem}"
        else:
            store = open_store(url, create=False)
            row = store.find_run(str(run))
            cfg = on_device(override(load_run_config(row), seed=seed), device)
            if not row.best_schedule:
                raise StorageError(f"run {row.name!r} has no best schedule yet")
            _check(cfg, names)
            run_id, schedule, name = row.id, list(row.best_schedule), study or f"tune-{row.name}"
        spec = TuneSpec(
            url=url,
            study=name,
            trials=trials,
            config=stored_config(cfg),
            schedule=schedule,
            objectives=names,
            deadline=time.time() + timeout if timeout else None,
            threads=max(1, (_cpus() // workers)) if workers > 1 else None,
        )
        _run(spec, store, run_id, workers, quiet)


def _check(cfg: RunConfig, objectives: tuple[str, ...]) -> None:
    """The config's inputs as tune uses them: every worker scores in its own process."""
    from ftprune.tune import check_tuning
    from search.preflight import preflight

    check_tuning(cfg, objectives)
    preflight(cfg.model_copy(update={"pool": "local"}), tokenize=True)


def _cpus() -> int:
    import os

    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def _run(spec: TuneSpec, store: Store, run_id: int | None, workers: int, quiet: bool) -> None:
    import optuna

    from ftprune.tune import FINISHED, prepare_study, tuned_rows
    from ftprune.tune_trials import run_workers
    from storage import redact
    from storage.engine import optuna_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepare_study(spec, run_id)
    started = time.perf_counter()
    run_workers(spec, workers, not quiet, echo=lambda line: typer.echo(line, err=True))
    study = optuna.load_study(study_name=spec.study, storage=optuna_url(spec.url))
    rows = tuned_rows(study, spec.objectives, spec.run_config.model)
    store.set_tuned_weights(spec.study, rows, run_id)
    typer.echo(f"study {spec.study}: {_counts(study)}, {time.perf_counter() - started:.0f} s")
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if finished < spec.trials and not (spec.deadline and time.time() > spec.deadline):
        typer.echo(
            f"error: the study holds {finished} of {spec.trials} finished trials: its "
            "workers failed (see above)",
            err=True,
        )
        raise typer.Exit(1)
    _echo_table(study, max(len(rows), 5))
    if not rows:
        typer.echo("no feasible complete trial: nothing stored for --weights best")
    where = f"--db {redact(spec.url)}"
    use = f"router train --run {run_id}" if run_id else "pipeline --config FILE"
    typer.echo(
        f"\nlook at the results:\n  ftprune tune status --study {spec.study} {where}\n"
        f"  optuna-dashboard {redact(optuna_url(spec.url))}\n"
        f"use them:\n  ftprune {use} --weights best {where}"
    )


@tune_app.command("status")
def tune_status(
    study: Annotated[Optional[str], typer.Option(help="Study name (default: the newest).")] = None,
    top: Annotated[int, typer.Option(help="Trials to list.")] = 5,
    plot: Annotated[
        Optional[Path],
        typer.Option(help="Also write a PNG: held-out KL against each sampled setting."),
    ] = None,
    db: Db = None,
) -> None:
    """Show a study's trial counts and its best trials (feasible first, lowest KL first)."""

    with user_errors():
        check_range(top, "--top", 1, 10_000)
        check_output_file(plot, "--plot")
        found = _load_study(db, study)
    typer.echo(f"study {found.study_name}: {_counts(found)}")
    _echo_table(found, top)
    if plot is not None:
        from ftprune.tune_report import sensitivity_plot

        sensitivity_plot(found, plot)
        typer.echo(f"wrote {plot}")


@tune_app.command("check")
def tune_check(
    study: Annotated[Optional[str], typer.Option(help="Study name (default: the newest).")] = None,
    seeds: Annotated[int, typer.Option(help="Router seeds per settings (0 .. N-1).")] = 3,
    heldout_sequences: Annotated[
        int,
        typer.Option(
            help="Held-out sequences per length to lay out; those that overlap the "
            "study's own are dropped."
        ),
    ] = 16,
    json_out: JsonOut = None,
    quiet: Quiet = False,
    db: Db = None,
) -> None:
    """Do the best settings beat the first trial's (the config's own, the paper's equal
    weights) on data the study never judged on?

    Retrains both with router seeds 0 .. N-1 on the study's calibration sequences and
    schedule, scores each on held-out sequences disjoint from the study's, and prints the
    rows, each side's mean, spread and range, and whether every seed of the best beats
    every seed of the first.
    """
    with user_errors():
        check_range(seeds, "--seeds (a spread needs two)", 2, 100)
        check_range(heldout_sequences, "--heldout-sequences", 1, 100_000)
        check_output_file(json_out, "--json")
        found = _load_study(db, study)
    import json

    from ftprune.tune_report import check_study, check_verdict

    with user_errors():
        rows = check_study(found, seeds, heldout_sequences, progress=not quiet)
    verdict = check_verdict(rows)
    typer.echo(
        f"study {found.study_name}: {rows[0]['heldout_sequences']} held-out sequences the "
        f"study never saw"
    )
    typer.echo(
        f"  {'weights':<16}{'seed':>5}{'KL':>10}{'top-1':>8}{'λ_g':>9}{'λ_s':>9}{'λ_d':>9}"
        f"{'guide':>7}{'lr':>10}{'achieved':>10}  feasible"
    )
    *trained, static = rows
    for r in trained:
        typer.echo(
            f"  {r['weights'] + ' (trial ' + str(r['trial']) + ')':<16}{r['seed']:>5}"
            f"{r['heldout_kl']:>10.4f}{r['heldout_top1']:>8.3f}{r['lambda_guide']:>9.3g}"
            f"{r['lambda_sparse']:>9.3g}{r['lambda_distill']:>9.3g}{r['guide_steps']:>7}"
            f"{r['lr']:>10.2e}{r['achieved_sparsity']:>10.3f}  "
            f"{'yes' if r['feasible'] else 'no'}"
        )
    for name in ("first", "best"):
        v = verdict[name]
        typer.echo(
            f"{name}: KL mean {v['mean']:.4f}, sd {v['sd']:.4f}, range "
            f"[{v['min']:.4f}, {v['max']:.4f}]"
        )
    typer.echo(
        f"static router, same schedule and sequences: KL {static['heldout_kl']:.4f}, "
        f"top-1 {static['heldout_top1']:.3f}"
    )
    typer.echo(
        "best beats first beyond the seed spread (every seed below every seed): "
        + ("yes" if verdict["beyond_spread"] else "no")
    )
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=1))
        typer.echo(f"wrote {json_out}")


def _load_study(db: str | None, study: str | None) -> optuna.Study:
    """The named study (default: the newest) in the database; StorageError if absent."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from storage import StorageError, default_url, redact
    from storage.engine import optuna_url, require_existing

    url = db or default_url()
    require_existing(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(optuna_url(url), skip_table_creation=True)
        names = [s.study_name for s in storage.get_all_studies()]
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError):  # no Optuna tables
        names = []
    if not names:
        raise StorageError(f"no tuning study in {redact(url)}")
    name = study or names[-1]
    if name not in names:
        raise StorageError(f"no study {name!r} in {redact(url)}; studies: {', '.join(names)}")
    return optuna.load_study(study_name=name, storage=storage)


def _counts(study: optuna.Study) -> str:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    return (
        f"{count[TrialState.COMPLETE] + count[TrialState.PRUNED]} finished trials "
        f"({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned), "
        f"{count[TrialState.FAIL]} failed, {count[TrialState.RUNNING]} running, "
        f"{count[TrialState.WAITING]} waiting"
    )


def _echo_table(study: optuna.Study, top: int) -> None:
    """Complete trials, feasible first and by held-out KL; ``*`` marks the stored best."""
    from optuna.trial import TrialState

    from ftprune.tune import best_trials

    best = {t.number for t in best_trials(study)}
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: (t.user_attrs.get("constraint", 0.0) > 0, t.values[0]),
    )
    second = study.user_attrs.get("objectives", ["quality"])[1:]
    extra = f"{second[0]:>11}" if second else ""
    typer.echo(
        f"  {'trial':>7}{'KL':>10}{extra}{'λ_g':>9}{'λ_s':>9}{'λ_d':>9}"
        f"{'guide':>7}{'lr':>10}{'target S':>10}{'achieved':>10}  feasible"
    )
    for t in complete[:top]:
        p, a = t.params, t.user_attrs
        more = f"{t.values[1]:>11.4g}" if second else ""
        typer.echo(
            f"  {('*' if t.number in best else '') + str(t.number):>7}"
            f"{t.values[0]:>10.4f}{more}{p['lambda_guide']:>9.3g}"
            f"{p['lambda_sparse']:>9.3g}{p['lambda_distill']:>9.3g}"
            f"{p['guide_steps']:>7}{p['lr']:>10.2e}{a.get('target_sparsity', 0):>10.3f}"
            f"{a.get('achieved_sparsity', 0):>10.3f}  "
            f"{'yes' if a.get('constraint', 0.0) <= 0 else 'no'}"
        )
