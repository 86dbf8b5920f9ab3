"""The trials of an ``ftprune tune`` study (see :mod:`ftprune.tune` for its guarantees): the
objective one trial runs (train a router with sampled settings, measure it on the held-out
sequences), and the worker processes that run trials until the study has its budget."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import statistics
import time
from typing import TYPE_CHECKING, Callable, Sequence

import optuna
from optuna.trial import TrialState

from ftprune.tune import (
    FINISHED,
    SETTINGS,
    TuneSpec,
    open_study,
    setting_bounds,
    sparsity_range,
    trial_schedule,
)

if TYPE_CHECKING:
    from torch import Tensor

    from router.routers import TokenRouter
    from router.state import ForwardState
    from workers.scoring import Scorer

LATENCY_REPEATS = 3


class SurplusTrial(Exception):
    """A trial created after the study already had its N finished or running trials."""


class Objective:
    """One trial: train a router with sampled settings, return the held-out objectives."""

    def __init__(self, spec: TuneSpec, scorer: Scorer) -> None:
        self.spec, self.config, self.scorer = spec, spec.run_config, scorer
        blocks = scorer.num_blocks
        self.base = spec.schedule or [self.config.target_sparsity] * blocks

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        from search.settings import train_config
        from workers.training import train_on_scorer

        earlier = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(t.number < trial.number for t in earlier) >= self.spec.trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} exceeds the study's {self.spec.trials}")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        config, multi = self.config, len(self.spec.objectives) > 1
        settings = {
            name: (
                trial.suggest_int(name, *setting_bounds(config, name))
                if name == "guide_steps"
                else trial.suggest_float(name, *setting_bounds(config, name), log=True)
            )
            for name in SETTINGS
        }
        target = config.target_sparsity
        if multi:
            target = trial.suggest_float("target_sparsity", *sparsity_range(config))
        schedule = trial_schedule(
            self.base, config.target_sparsity, target, config.max_block_sparsity
        )
        tuned = config.model_copy(
            update={"router_training": config.router_training.model_copy(update=settings)}
        )
        report = _Reporter(
            trial, tuned.router_training.steps, tuned.router_training.eval_every, prunable=not multi
        )
        training = tuned.router_training
        trained = train_on_scorer(
            self.scorer,
            schedule,
            train_config(tuned, False),
            training.kind,
            training.factors,
            observe=report,
        )
        cost = measure(
            self.scorer, schedule, trained.router, multi and self.spec.objectives[1] == "latency"
        )
        miss = sparsity_miss(cost["achieved_sparsity"], schedule)
        m = trained.heldout
        trial.set_constraint("sparsity_miss", miss - config.tuning.tolerance)
        trial.set_user_attr("constraint", miss - config.tuning.tolerance)
        for key, value in {
            "schedule": schedule,
            "target_sparsity": target,
            "heldout_top1": m.top1,
            "heldout_ppl": m.ppl,
            "realized_sparsity": m.realized_sparsity,
            "train_s": trained.train_s,
            **cost,
        }.items():
            trial.set_user_attr(key, value)
        if not multi:
            return m.kl
        return m.kl, cost["flop_saving" if self.spec.objectives[1] == "flops" else "latency_ms"]


def sparsity_miss(achieved: float, schedule: Sequence[float]) -> float:
    """How far a router's own achieved sparsity lies from the schedule's mean (a trial is
    feasible when this is at most ``tuning.tolerance``)."""
    return abs(achieved - sum(schedule) / len(schedule))


class _Reporter:
    """``observe`` for router training: reports held-out KL at each evaluation's step and
    raises TrialPruned when the pruner says so (never at the last evaluation)."""

    def __init__(self, trial: optuna.Trial, steps: int, every: int, prunable: bool) -> None:
        self.trial, self.steps, self.every, self.prunable = trial, steps, every, prunable
        self.calls = 0

    def __call__(self, metrics: dict[str, float]) -> None:
        step = min(self.calls * self.every, self.steps)
        self.calls += 1
        if not self.prunable:
            return
        self.trial.report(metrics["kl"], step)
        if step < self.steps and self.trial.should_prune():
            raise optuna.TrialPruned(f"held-out KL {metrics['kl']:.4f} at step {step}")


class _Recorder:
    """A router wrapper recording each block's mean keep probability (sigmoid of scores)."""

    def __init__(self, router: TokenRouter, first_learned: int) -> None:
        self.router, self.first_learned = router, first_learned
        self.needs_attention = bool(getattr(router, "needs_attention", False))
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def scores(self, block: int, hidden_states: Tensor, state: ForwardState) -> Tensor:
        scores = self.router.scores(block, hidden_states, state)
        if block >= self.first_learned:
            self.sums[block] = self.sums.get(block, 0.0) + scores.sigmoid().mean().item()
            self.counts[block] = self.counts.get(block, 0) + 1
        return scores


def measure(
    scorer: Scorer, schedule: Sequence[float], router: TokenRouter, latency: bool
) -> dict[str, float]:
    """One routed pass over the held-out sequences (one at a time): the router's achieved
    sparsity (blocks it does not learn count at their scheduled sparsity), the FLOP-weighted
    saving, and with ``latency`` the median of a few timed passes in milliseconds."""
    import torch

    from router import route, unroute
    from router.dynamic import DynamicRouter

    recorder = _Recorder(router, 1 if isinstance(router, DynamicRouter) else 0)
    sequences = scorer.comparator("heldout").sequences
    routing = route(scorer.model, schedule, recorder)
    savings, times = [], []
    try:
        with torch.inference_mode():
            for repeat in range(LATENCY_REPEATS if latency else 1):
                started = time.perf_counter()
                for sequence in sequences:
                    scorer.model(input_ids=sequence[None, :-1], use_cache=False, logits_to_keep=1)
                    if repeat == 0 and routing.last_state is not None:
                        savings.append(routing.last_state.flop_saving)
                times.append(1000 * (time.perf_counter() - started))
    finally:
        unroute(scorer.model)
    achieved = [
        1.0 - recorder.sums[i] / recorder.counts[i] if s > 0 and i in recorder.counts else s
        for i, s in enumerate(schedule)
    ]
    result = {
        "achieved_sparsity": statistics.fmean(achieved),
        "flop_saving": statistics.fmean(savings),
    }
    if latency:
        result["latency_ms"] = statistics.median(times)
    return result


def worker_main(spec: TuneSpec, worker: int = 0, progress: bool = False) -> None:
    """Run trials until the study has ``spec.trials`` finished ones or the deadline passes."""
    from tqdm.auto import tqdm

    from search.settings import scorer_settings
    from workers import Scorer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = spec.run_config
    study = open_study(spec, worker)
    objective = None  # the model loads when the first trial needs it
    bar = tqdm(total=spec.trials, desc="trials", disable=not progress)
    try:
        while True:
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            bar.update(min(finished, spec.trials) - bar.n)
            if finished >= spec.trials or (spec.deadline and time.time() > spec.deadline):
                return
            if finished + sum(t.state == TrialState.RUNNING for t in trials) >= spec.trials:
                time.sleep(config.tuning.heartbeat_interval)  # others run the rest
                optuna.storages.fail_stale_trials(study)
                continue
            if objective is None:
                objective = Objective(
                    spec, Scorer(dataclasses.replace(scorer_settings(config), threads=spec.threads))
                )
            study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)
    finally:
        bar.close()


def run_workers(
    spec: TuneSpec,
    workers: int,
    progress: bool = True,
    echo: Callable[[str], None] = lambda line: None,
) -> None:
    """``workers`` processes (spawned, each with its own engine) run the study to its
    budget; one that dies is replaced while the study is unfinished, at most
    ``tuning.max_retry`` times per worker slot. One worker runs in this process."""
    if workers == 1:
        worker_main(spec, 0, progress)
        return
    from tqdm.auto import tqdm

    from storage.engine import optuna_url

    context = multiprocessing.get_context("spawn")
    replacements = spec.run_config.tuning.max_retry * workers
    study = optuna.load_study(study_name=spec.study, storage=optuna_url(spec.url))
    processes = [
        context.Process(target=worker_main, args=(spec, i), daemon=True) for i in range(workers)
    ]
    for process in processes:
        process.start()
    with tqdm(total=spec.trials, desc="trials", disable=not progress) as bar:
        while any(p.is_alive() for p in processes):
            time.sleep(1.0)
            finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
            bar.update(min(finished, spec.trials) - bar.n)
            for index, process in enumerate(processes):
                if process.exitcode not in (None, 0) and finished < spec.trials:
                    if replacements == 0:
                        continue
                    replacements -= 1
                    echo(
                        f"worker {index} (pid {process.pid}) exited with {process.exitcode}: "
                        "replaced"
                    )
                    processes[index] = context.Process(
                        target=worker_main, args=(spec, index), daemon=True
                    )
                    processes[index].start()
