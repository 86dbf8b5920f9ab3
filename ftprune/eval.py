"""``ftprune eval``: accuracy retention of a routed model against the dense model.

What is evaluated (an :class:`EvalPlan`): one model (a run's, an export directory's, or an
ad-hoc ``--model``), one or more :class:`Target` (schedule + router), and the sources:

- multiple-choice task files (BIG-bench ``task.json``, ``bigbench:<name>``), scored by
  :func:`evaluation.choice.score_choices`;
- lm-eval tasks by name, local YAML file or include directory (:mod:`evaluation.lmeval`);
- held-out text: window KL, top-1 agreement with the dense model and window perplexity
  (:class:`workers.scoring.WindowComparator`), on the held-out split of a text source.

The dense model is scored once per source and shared by every target: same examples, same
prompts. Rows (the evaluation rows of DESIGN.md): task, metric, dense, routed, retention
(routed / dense), ci_low, ci_high (paired bootstrap of the retention), n, realized_sparsity,
flop_saving, plus the target's ``label`` and ``router``. With two or more tasks a target
also gets the summary rows ``(mean)`` (retention of the mean accuracy) and
``(mean retention)`` (mean over tasks of each task's retention), with intervals from
resampling every task's examples.

Data hygiene: a run's calibration source is its fitness and router-training data, so a task
that names it is refused (:class:`~evaluation.tasks.TaskError`) unless ``force``. Text is
always read from a source's held-out split, which never overlaps its calibration split, so
text sources are never refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from evaluation.stats import paired_bootstrap, paired_bootstrap_tasks, retention
from evaluation.suites import RetrievalGrid
from evaluation.tasks import ChoiceTask, TaskError, resolve_task, task_name
from router.specs import (
    CHECKPOINT_SPEC,
    FIXED_ROUTERS,
    RouterSpecError,
    check_router_spec,
    checkpoint_spec,
    router_kind,
)

if TYPE_CHECKING:  # torch loads with the scorer: checking the input needs none
    from evaluation.choice import TaskScores

CHOICE_METRICS = ("acc", "acc_norm")
SCHEDULES = ("uniform", "best", "finetuned")
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

    settings: Any  # workers.ScorerSettings: the model, and the held-out text to score
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


def source_keys(spec: str) -> set[str]:
    """What identifies a data source across spellings: its resolved path (if it is one),
    ``bigbench:<name>`` for BIG-bench tasks (also lm-eval's ``bigbench_<name>_*`` tasks)
    and the spec itself."""
    keys = {spec}
    name = task_name(spec)
    if name:
        keys.add(f"bigbench:{name}")
    if spec.startswith("bigbench_"):
        core = spec.removeprefix("bigbench_")
        for suffix in ("_multiple_choice", "_generate_until"):
            core = core.removesuffix(suffix)
        keys.add(f"bigbench:{core}")
    path = Path(spec)
    if path.exists():
        keys.add(str(path.resolve()))
        if path.name == "task.json":
            keys.add(str(path.resolve().parent))
    return keys


def training_sources(config: dict[str, Any]) -> list[str]:
    """The data sources a run calibrated its fitness and trained its routers on."""
    found = config.get("calibration")
    if isinstance(found, str):
        return [found]
    return [str(item) for item in found or []]


def check_hygiene(config: dict[str, Any], task_specs: Sequence[str], force: bool) -> None:
    """Raise TaskError when a task names data the run calibrated or trained on."""
    if force:
        return
    used = {key: source for source in training_sources(config) for key in source_keys(source)}
    for spec in task_specs:
        overlap = source_keys(spec) & set(used)
        if overlap:
            raise TaskError(
                f"{spec}: the run calibrated and trained on {used[overlap.pop()]}; "
                "evaluate on other data, or pass --force"
            )


# ----------------------------------------------------------------------------- scoring
def choice_scores(
    model: Any, tokenizer: Any, task: ChoiceTask, batch_size: int, progress: bool
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


def task_rows(
    dense: TaskScores, routed: TaskScores, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """One row per metric of a task (see the module docstring)."""
    rows = []
    for metric in dense.metrics:
        d, r = dense.metrics[metric], routed.metrics[metric]
        dense_acc, routed_acc = _mean(d), _mean(r)
        low, high = paired_bootstrap(d, r, resamples, seed)
        rows.append(
            {
                "task": dense.task,
                "metric": metric,
                "dense": dense_acc,
                "routed": routed_acc,
                "retention": retention(dense_acc, routed_acc),
                "ci_low": low,
                "ci_high": high,
                "n": len(d),
                "realized_sparsity": routed.realized_sparsity,
                "flop_saving": routed.flop_saving,
            }
        )
    return rows


def summary_rows(
    dense: Sequence[TaskScores], routed: Sequence[TaskScores], resamples: int, seed: int
) -> list[dict[str, Any]]:
    """``(mean)`` and ``(mean retention)`` rows per metric over two or more tasks (the
    multiple-choice tasks: retrieval cells are summarized per family and length), and, where
    the tasks' primary metrics differ, for ``primary``: each task's own metric (a suite's
    summary, as the paper's suite reports acc_norm for some tasks and acc for others)."""
    tasks = [(d, r) for d, r in zip(dense, routed, strict=True) if not is_retrieval(d)]
    if len(tasks) < 2:
        return []
    dense, routed = [d for d, _ in tasks], [r for _, r in tasks]
    rows = []
    # "primary" (each task's own metric) is a metric of its own only where tasks differ
    mixed = len({d.primary for d in dense}) > 1
    for metric in (*CHOICE_METRICS, "primary") if mixed else CHOICE_METRICS:
        pairs = [
            (d.metrics[d.primary], r.metrics[d.primary])
            if metric == "primary"
            else (d.metrics[metric], r.metrics[metric])
            for d, r in tasks
            if metric == "primary" or metric in d.metrics
        ]
        if len(pairs) < 2:
            continue
        dense_accs = [_mean(d) for d, _ in pairs]
        routed_accs = [_mean(r) for _, r in pairs]
        ci = paired_bootstrap_tasks([d for d, _ in pairs], [r for _, r in pairs], resamples, seed)
        total = sum(len(d) for d, _ in pairs)
        sparsity = _weighted(
            [r.realized_sparsity for r in routed],
            [len(next(iter(r.metrics.values()))) for r in routed],
        )
        saving = _weighted(
            [r.flop_saving for r in routed], [len(next(iter(r.metrics.values()))) for r in routed]
        )
        per_task = [retention(d, r) for d, r in zip(dense_accs, routed_accs, strict=True)]
        mean_dense, mean_routed = _mean(dense_accs), _mean(routed_accs)
        common = {
            "metric": metric,
            "dense": mean_dense,
            "routed": mean_routed,
            "n": total,
            "realized_sparsity": sparsity,
            "flop_saving": saving,
        }
        rows.append(
            {
                "task": "(mean)",
                **common,
                "retention": retention(mean_dense, mean_routed),
                "ci_low": ci["retention_of_mean"][0],
                "ci_high": ci["retention_of_mean"][1],
            }
        )
        rows.append(
            {
                "task": "(mean retention)",
                **common,
                "retention": _mean(per_task),
                "ci_low": ci["mean_retention"][0],
                "ci_high": ci["mean_retention"][1],
            }
        )
    return rows


def is_retrieval(scores: TaskScores) -> bool:
    return scores.task.startswith("retrieval:")


def retrieval_rows(
    dense: Sequence[TaskScores], routed: Sequence[TaskScores], resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Per retrieval family and length, the rows of all its depths together
    (``retrieval:<family>/<length>``)."""
    from ftprune.eval_compare import merged, retrieval_groups

    routed_groups = retrieval_groups(routed)
    rows = []
    for group, cells in retrieval_groups(dense).items():
        rows += task_rows(
            merged(cells, group), merged(routed_groups[group], group), resamples, seed
        )
    return rows


def text_rows(
    scorer: Any, target: Target, dense_ppl: float, resamples: int, seed: int
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


# ----------------------------------------------------------------------------- output
def _interval(row: Mapping[str, Any]) -> str:
    return "" if math.isnan(row["ci_low"]) else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a terminal table."""
    from ftprune.tables import Column, render

    return render(
        rows,
        [
            Column("schedule", "label"),
            Column("router", "router"),
            Column("task", "task"),
            Column("metric", "metric"),
            Column("dense", "dense", ".4g"),
            Column("routed", "routed", ".4g"),
            Column("retention", "retention", ".3f"),
            Column("95% CI", _interval),
            Column("n", "n", "d"),
            Column("real S", "realized_sparsity", ".3f"),
            Column("FLOP sv", "flop_saving", ".3f"),
        ],
    )


def json_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with NaN written as null (JSON has no NaN)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in rows
    ]


def plot(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """One PNG: retention per (schedule, router) with its interval, for each task and
    metric except the text metrics that have no retention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not math.isnan(r["retention"])]
    series = list(dict.fromkeys((r["label"], r["router"]) for r in shown))
    groups = list(dict.fromkeys((r["task"], r["metric"]) for r in shown))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) / 3), 4.5))
    for s, (label, router) in enumerate(series):
        xs, ys, err_low, err_high = [], [], [], []
        for g, group in enumerate(groups):
            row = next(
                (
                    r
                    for r in shown
                    if (r["label"], r["router"]) == (label, router)
                    and (r["task"], r["metric"]) == group
                ),
                None,
            )
            if row is None:
                continue
            xs.append(g + (s - (len(series) - 1) / 2) * width)
            ys.append(row["retention"])
            low = row["ci_low"] if not math.isnan(row["ci_low"]) else row["retention"]
            high = row["ci_high"] if not math.isnan(row["ci_high"]) else row["retention"]
            err_low.append(max(0.0, row["retention"] - low))
            err_high.append(max(0.0, high - row["retention"]))
        ax.bar(xs, ys, width, yerr=[err_low, err_high], capsize=2, label=f"{label} + {router}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{t}\n{m}" for t, m in groups], fontsize=7)
    ax.set_ylabel("retention (routed / dense), 95% CI")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    total = sum(weights)
    return math.fsum(v * w for v, w in zip(values, weights, strict=True)) / total if total else 0.0


# ----------------------------------------------------------------------------- run targets
@dataclass(frozen=True)
class RunView:
    """What a stored run offers for evaluation."""

    run_id: int
    name: str
    config: Any  # search.config.RunConfig
    best: list[float] | None  # step 1's best schedule
    finetuned: list[float] | None  # the latest router's fine-tuned schedule
    router: str | None  # dynamic:<checkpoint> of the latest router
    router_id: int | None


def run_view(store: Any, ref: str) -> RunView:
    """Read a run's schedules and latest router; raises StorageError / ConfigError."""
    from search.records import RouterLabel
    from search.stored import load_run_config

    run = store.find_run(ref)
    routers = store.routers(run.id)
    router = router_id = finetuned = None
    if routers:
        latest = routers[-1]
        router, router_id = checkpoint_spec(latest.checkpoint), latest.id
        try:
            check_router_spec(router)
        except RouterSpecError as error:
            raise TaskError(f"run {run.name!r}: its latest router is unusable ({error})") from None
        wanted = RouterLabel.from_json(latest.label).finetuned
        rows = [
            h for h in store.heldout(run.id) if wanted is not None and h.label == wanted.to_json()
        ]
        finetuned = rows[-1].schedule if rows else None
    return RunView(
        run.id, run.name, load_run_config(run), run.best_schedule, finetuned, router, router_id
    )


def run_target(view: RunView, schedule: str | None, router: str | None) -> Callable[[int], Target]:
    """The target ``--run`` evaluates (default: the fine-tuned schedule with the latest
    router if the run has one, else the best schedule with the static router), as a function
    of the model's block count; raises TaskError for a choice the run cannot serve."""
    kinds = (*FIXED_ROUTERS, CHECKPOINT_SPEC)
    if router is not None and router not in kinds:
        raise TaskError(f"--router must be one of {', '.join(kinds)}, not {router!r}")
    if schedule is not None and schedule not in SCHEDULES:
        raise TaskError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    router = router or (CHECKPOINT_SPEC if view.router else "static")
    if schedule is None:
        schedule = "finetuned" if view.router and view.finetuned else "best"
    spec = view.router if router == CHECKPOINT_SPEC else router
    if spec is None:
        raise TaskError(f"run {view.name!r} has no trained router: use --router static|random")
    chosen = {"best": view.best, "finetuned": view.finetuned}.get(schedule)
    if schedule != "uniform" and chosen is None:
        raise TaskError(f"run {view.name!r} has no {schedule} schedule yet")
    target = view.config.target_sparsity

    def make(blocks: int) -> Target:
        values = [target] * blocks if schedule == "uniform" else list(chosen or [])
        return Target(schedule, values, spec)

    return make


def compare_targets(view: RunView, scorer: Any) -> list[Target]:
    """``--compare``: uniform, Block-Influence, searched and fine-tuned schedules with the
    static, random and dynamic routers (those the run has), at the run's sparsity."""
    from ftprune.bench.quality import influence_allocation

    schedules = [
        ("uniform", [view.config.target_sparsity] * scorer.num_blocks),
        ("block_influence", influence_allocation(scorer, view.config)),
    ]
    if view.best is not None:
        schedules.append(("searched", view.best))
    if view.finetuned is not None:
        schedules.append(("finetuned", view.finetuned))
    routers = ["static", "random"] + ([view.router] if view.router else [])
    return [Target(label, schedule, router) for label, schedule in schedules for router in routers]
