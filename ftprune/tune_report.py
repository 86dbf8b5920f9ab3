"""What a finished ``ftprune tune`` study says: whether its best settings beat its first
trial's (the config's own, the paper's equal weights) beyond the seed-to-seed spread, on
held-out data the study never judged on (``ftprune tune check``), and how the held-out KL
depends on each sampled setting (``ftprune tune status --plot``)."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftprune.tune import SETTINGS, best_trials
from ftprune.tune_trials import measure, sparsity_miss
from search.config import ConfigError, RunConfig
from search.stored import load_config

if TYPE_CHECKING:
    from workers.scoring import Scorer, WindowMetrics


def check_study(
    study: optuna.Study, seeds: int, heldout_per_length: int, progress: bool = True
) -> list[dict[str, Any]]:
    """Retrain the study's first trial's settings (the config's own: the paper's equal
    weights) and its best feasible trial's, with router seeds 0 .. ``seeds`` - 1, and score
    each router on held-out sequences that no trial was judged on.

    Guarantees: every router trains on the study's calibration sequences and schedule
    exactly as a trial did (seed = the study's seed is that trial, retrained); the held-out
    sequences are the config's held-out lengths laid out ``heldout_per_length`` per length,
    minus any that share a token position with the study's own held-out sequences (see
    :func:`workers.data.disjoint_sequences`). Rows: ``weights`` (``first``/``best``),
    ``trial``, ``seed``, the held-out window metrics, achieved sparsity, ``feasible``,
    ``heldout_sequences``, ``train_s``; a last row, ``weights`` = ``static``, is the static
    router on the same schedule and sequences (the baseline a trained router has to beat).
    Single-objective studies only (ConfigError).
    """
    from router import StaticRouter
    from router.loading import load_tokenizer
    from search.settings import scorer_settings
    from workers import Scorer
    from workers.data import disjoint_sequences
    from workers.scoring import merge_stats

    config, chosen = _checked_study(study)
    settings = scorer_settings(config)
    fresh = dataclasses.replace(settings, heldout_per_length=heldout_per_length)
    sequences = disjoint_sequences(
        fresh.data_spec("heldout"), settings.data_spec("heldout"), load_tokenizer(config.model)
    )
    if not sequences:
        raise ConfigError("no held-out sequence is disjoint from the study's: raise the count")
    scorer = Scorer(settings, {"heldout": sequences})
    schedule = study.user_attrs["schedule"] or [config.target_sparsity] * scorer.num_blocks
    rows = [
        _retrained(scorer, schedule, config, name, trial, seed, progress)
        for seed in range(seeds)
        for name, trial in chosen.items()
    ]
    per_sequence = scorer.comparator("heldout").compare(schedule, StaticRouter())
    static = merge_stats(list(per_sequence.values())).metrics()
    rows.append({"weights": "static", **_window(static, len(sequences))})
    return rows


def _checked_study(study: optuna.Study) -> tuple[RunConfig, dict[str, FrozenTrial]]:
    """The study's config and the trials ``tune check`` retrains (``first``, ``best``);
    ConfigError for a study it cannot check."""
    if len(study.directions) != 1:
        raise ConfigError(f"study {study.study_name!r} has two objectives: no single best")
    if "config" not in study.user_attrs:
        raise ConfigError(f"study {study.study_name!r} does not record its config")
    best = best_trials(study)
    if not best:
        raise ConfigError(f"study {study.study_name!r} has no feasible complete trial")
    if best[0].number == study.trials[0].number:
        raise ConfigError(
            f"study {study.study_name!r}: the best trial is the first, nothing to check it against"
        )
    config = load_config(study.user_attrs["config"], f"study {study.study_name!r}")
    return config, {"first": study.trials[0], "best": best[0]}


def _retrained(
    scorer: Scorer,
    schedule: Sequence[float],
    config: RunConfig,
    name: str,
    trial: FrozenTrial,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """The row of ``trial``'s settings retrained with router seed ``seed`` (see
    :func:`check_study`)."""
    from search.settings import train_config
    from workers.training import train_on_scorer

    update = {key: trial.params[key] for key in SETTINGS}
    run = config.model_copy(
        update={"seed": seed, "router_training": config.router_training.model_copy(update=update)}
    )
    training = run.router_training
    trained = train_on_scorer(
        scorer, schedule, train_config(run, progress), training.kind, training.factors
    )
    cost = measure(scorer, schedule, trained.router, False)
    miss = sparsity_miss(cost["achieved_sparsity"], schedule)
    return {
        "weights": name,
        "trial": trial.number,
        "seed": seed,
        **update,
        **_window(trained.heldout, scorer.num_sequences("heldout")),
        **cost,
        "feasible": miss <= config.tuning.tolerance,
        "train_s": trained.train_s,
    }


def _window(metrics: WindowMetrics, sequences: int) -> dict[str, Any]:
    """A row's held-out fields from :class:`workers.scoring.WindowMetrics`."""
    return {
        "heldout_kl": metrics.kl,
        "heldout_top1": metrics.top1,
        "heldout_ppl": metrics.ppl,
        "realized_sparsity": metrics.realized_sparsity,
        "heldout_sequences": sequences,
    }


def check_verdict(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary of :func:`check_study` rows: held-out KL mean, sd and range per weights, and
    ``beyond_spread``: every seed of the best settings below every seed of the first
    trial's (the two ranges disjoint); ``static``: the static router's KL."""
    summary: dict[str, Any] = {}
    for name in ("first", "best"):
        kl = [r["heldout_kl"] for r in rows if r["weights"] == name]
        summary[name] = {
            "mean": statistics.fmean(kl),
            "sd": statistics.stdev(kl) if len(kl) > 1 else 0.0,
            "min": min(kl),
            "max": max(kl),
        }
    summary["beyond_spread"] = summary["best"]["max"] < summary["first"]["min"]
    summary["static"] = next((r["heldout_kl"] for r in rows if r["weights"] == "static"), None)
    return summary


def sensitivity_plot(study: optuna.Study, out: Path) -> None:
    """One PNG: held-out KL against each sampled setting (complete trials as dots, pruned
    ones at their last reported KL as crosses, trial numbers beside them, log axes for the
    log-sampled settings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(3.6 * len(SETTINGS), 3.4), sharey=True)
    for axis, name in zip(axes, SETTINGS, strict=True):
        for state, marker, label in (
            (TrialState.COMPLETE, "o", "complete"),
            (TrialState.PRUNED, "x", "pruned (last KL)"),
        ):
            trials = [
                t
                for t in study.get_trials(deepcopy=False, states=(state,))
                if name in t.params and (t.values or t.intermediate_values)
            ]
            values = [
                t.values[0] if t.values else t.intermediate_values[max(t.intermediate_values)]
                for t in trials
            ]
            axis.scatter([t.params[name] for t in trials], values, marker=marker, label=label)
            for trial, value in zip(trials, values, strict=True):
                axis.annotate(str(trial.number), (trial.params[name], value), fontsize=7)
        if name != "guide_steps":
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(name)
    axes[0].set_ylabel("held-out window KL")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    attrs = study.user_attrs
    fig.suptitle(
        f"study {study.study_name}: {attrs.get('model', '')} at target sparsity "
        f"{attrs.get('target_sparsity', '')}"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
