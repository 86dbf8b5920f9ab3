"""``ftprune eval``: accuracy retention of a routed model against the dense model.

What is evaluated (an :class:`EvalPlan`): one model (a run's, an export directory's, or an
ad-hoc ``--model``), one or more :class:`Target` (schedule + router), and the sources:

- multiple-choice tasks (``olmo:<task>``, BIG-bench ``task.json``, ``bigbench:<name>``,
  suites), scored by :func:`evaluation.choice.score_choices`;
- retrieval prompts over a grid of lengths and depths (:mod:`evaluation.continuation`);
- lm-eval tasks by name, local YAML file or include directory (:mod:`evaluation.lmeval`);
- held-out text: window KL, top-1 agreement with the dense model and window perplexity
  (:class:`workers.scoring.WindowComparator`), on the held-out split of a text source.

The dense model is scored once per source and shared by every target: same examples, same
prompts. The rows: :mod:`ftprune.eval_rows`. The targets a stored run offers, and the data
it saw (refused unless ``force``): :mod:`ftprune.eval_targets`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from evaluation.stats import paired_bootstrap
from evaluation.suites import RetrievalGrid
from evaluation.tasks import ChoiceTask, TaskError, resolve_task
from ftprune.eval_rows import retrieval_rows, summary_rows, task_rows
from router.specs import (
    router_kind,
)

if TYPE_CHECKING:  # torch loads with the scorer: checking the input needs none
    from transformers import PreTrainedTokenizerBase

    from evaluation.choice import TaskScores
    from router.loading import CausalLM
    from workers.scoring import Scorer
    from workers.settings import ScorerSettings

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """One routed configuration: a labelled schedule and a router spec (``static``,
    ``random`` or ``dynamic:<checkpoint dir>``)."""

    label: str
    schedule: list[float]
    router: str

    @property
    def router_kind(self) -> str:
        return router_kind(self.router)

    @property
    def name(self) -> str:
        """The row's name: ``<schedule label>+<router kind>`` (``uniform+static``)."""
        return f"{self.label}+{self.router_kind}"


@dataclass
class EvalPlan:
    """Everything an evaluation reads, resolved and checked before any model is loaded."""

    settings: ScorerSettings  # the model, and the held-out text to score
    choice_tasks: list[ChoiceTask] = field(default_factory=list)
    lm_tasks: list[str] = field(default_factory=list)
    text: bool = False
    retrieval: RetrievalGrid | None = None
    limit: int | None = None
    batch_size: int = 8
    resamples: int = 2000
    seed: int = 0


# ----------------------------------------------------------------------------- checks
def load_choice_tasks(specs: Sequence[str], limit: int | None) -> list[ChoiceTask]:
    """The tasks of ``--task-file`` specs, checked (raises TaskError); names made unique."""
    tasks, seen = [], set()
    for spec in specs:
        task = resolve_task(spec, limit)
        if task.name in seen:
            raise TaskError(f"task {task.name!r} is given twice")
        seen.add(task.name)
        tasks.append(task)
    return tasks


# ----------------------------------------------------------------------------- scoring
def choice_scores(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    task: ChoiceTask,
    batch_size: int,
    progress: bool,
) -> TaskScores:
    from evaluation.choice import TaskScores, score_choices

    run = score_choices(model, tokenizer, task.examples, batch_size, progress)
    metrics = {"acc": run.acc, "acc_norm": run.acc_norm}
    return TaskScores(
        task.name,
        {metric: metrics[metric] for metric in task.metrics},
        run.realized_sparsity,
        run.flop_saving,
        run.loglik,
        task.primary,
    )


def text_rows(
    scorer: Scorer, target: Target, dense_ppl: float, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Held-out window metrics of ``target``: window KL (dense 0), top-1 agreement with the
    dense model (dense 1; retention is the agreement, its interval from resampling the
    sequences) and window perplexity; n is the number of sequences."""
    from evaluation.choice import SparsityMeter

    meter = SparsityMeter()
    with meter.measure(scorer.model):
        evaluation = scorer.score(target.schedule, "heldout", target.router)
    m = evaluation.metrics
    agree = [s.agree / s.positions for s in evaluation.per_sequence.values()]
    low, high = paired_bootstrap([1.0] * len(agree), agree, resamples, seed)
    common = {
        "task": f"text:{scorer.settings.source}",
        "n": len(agree),
        "realized_sparsity": m.realized_sparsity,
        "flop_saving": meter.flop_saving,
    }
    none = {"retention": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    return [
        {**common, "metric": "window_kl", "dense": 0.0, "routed": m.kl, **none},
        {
            **common,
            "metric": "top1_agreement",
            "dense": 1.0,
            "routed": m.top1,
            "retention": m.top1,
            "ci_low": low,
            "ci_high": high,
        },
        {**common, "metric": "window_ppl", "dense": dense_ppl, "routed": m.ppl, **none},
    ]


class Evaluator:
    """Scores targets on a plan's sources with one loaded model (a
    :class:`workers.scoring.Scorer`); the dense model's scores are computed once."""

    def __init__(self, plan: EvalPlan, progress: bool = True, echo: Echo = lambda s: None) -> None:
        from workers import Scorer

        self.plan = plan
        self.progress = progress
        self.echo = echo
        self.scorer = Scorer(plan.settings)
        self._dense: list[TaskScores] | None = None
        self._dense_ppl: float | None = None
        self.scores: dict[str, list[TaskScores]] = {}  # per row (dense, <label>+<router>)

    @property
    def num_blocks(self) -> int:
        return int(self.scorer.num_blocks)

    def _scores(self) -> list[TaskScores]:
        """Every task's scores with the model as it is now (routed or not)."""
        model, tokenizer, plan = self.scorer.model, self.scorer.tokenizer, self.plan
        scores = []
        for task in plan.choice_tasks:
            start = time.perf_counter()
            scores.append(choice_scores(model, tokenizer, task, plan.batch_size, self.progress))
            elapsed = time.perf_counter() - start
            self.echo(f"  {task.name}: {len(task.examples)} examples in {elapsed:.0f} s")
        if plan.lm_tasks:
            from evaluation.lmeval import lmeval_scores

            scores += lmeval_scores(model, tokenizer, plan.lm_tasks, plan.limit, plan.batch_size)
        if plan.retrieval is not None:
            from evaluation.continuation import score_retrieval

            grid, start = plan.retrieval, time.perf_counter()
            cells = score_retrieval(model, tokenizer, grid, self.progress)
            prompts = sum(c.n for c in cells)
            elapsed = time.perf_counter() - start
            self.echo(f"  retrieval: {prompts} prompts in {elapsed:.0f} s")
            scores += cells
        return scores

    def dense(self) -> list[TaskScores]:
        from router import unroute

        if self._dense is None:
            unroute(self.scorer.model)
            self.echo("dense model")
            self._dense = self._scores()
            self.scores["dense"] = self._dense
        return self._dense

    def evaluate(self, target: Target) -> list[dict[str, Any]]:
        """The rows of one target (see the module docstring)."""
        from router import route, unroute
        from workers.scoring import make_router

        dense = self.dense()
        plan = self.plan
        routed: list[TaskScores] = []
        if dense:
            route(self.scorer.model, target.schedule, make_router(target.router))
            try:
                self.echo(f"{target.label} schedule, {target.router_kind} router")
                routed = self._scores()
            finally:
                unroute(self.scorer.model)
            self.scores[target.name] = routed
        rows = []
        for d, r in zip(dense, routed, strict=True):
            rows += task_rows(d, r, plan.resamples, plan.seed)
        rows += retrieval_rows(dense, routed, plan.resamples, plan.seed)
        rows += summary_rows(dense, routed, plan.resamples, plan.seed)
        if plan.text:
            if self._dense_ppl is None:
                zero = [0.0] * self.num_blocks
                self._dense_ppl = self.scorer.score(zero, "heldout", "static").metrics.ppl
            rows += text_rows(self.scorer, target, self._dense_ppl, plan.resamples, plan.seed)
        return [{"label": target.label, "router": target.router_kind, **row} for row in rows]
