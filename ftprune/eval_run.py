"""Executing a prepared ``ftprune eval`` request (:mod:`ftprune.eval_request`): the model
loaded once, the dense model and every target scored on the same examples, the tables
printed, a run's rows stored against it, the files written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ftprune.eval_compare import differences

if TYPE_CHECKING:
    from ftprune.eval import EvalPlan, Evaluator, Target
    from ftprune.eval_request import Extras, Prepared

Echo = Callable[[str], None]


def execute(
    prepared: Prepared,
    out: Echo,
    progress: Echo | None,
    json_out: Path | None = None,
    plot_out: Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the prepared request: print its tables with ``out``, progress lines with
    ``progress`` (None: quiet), store a run's rows, write ``json_out`` and ``plot_out``;
    returns the rows (with the paired differences to a baseline)."""
    from ftprune.eval import Evaluator
    from ftprune.eval_rows import format_table, json_rows, plot

    plan, extras = prepared.plan, prepared.extras
    evaluator = Evaluator(plan, progress=progress is not None, echo=progress or (lambda _: None))
    rows: list[dict[str, Any]] = []
    for target in _chosen_targets(prepared, evaluator):
        target_rows = evaluator.evaluate(target)
        rows += target_rows
        _store_rows(prepared, target, target_rows)
    out(
        f"{plan.settings.model}: dense and routed on the same examples; retention = "
        f"routed / dense, 95% paired bootstrap CI ({plan.resamples} resamples)"
    )
    out(format_table(rows))
    _report_extras(evaluator, rows, extras, plan, out)
    if prepared.store is not None and prepared.view is not None:
        out(f"stored {len(rows)} rows against run {prepared.view.name!r}")
    if extras.baseline is not None:
        rows = rows + differences(evaluator.scores, extras.baseline, plan.resamples, plan.seed)
    if json_out is not None:
        json_out.write_text(json.dumps(json_rows(rows), indent=2) + "\n")
        out(f"wrote {len(rows)} rows to {json_out}")
    if plot_out is not None:
        plot([r for r in rows if "baseline" not in r], plot_out)
        out(f"wrote {plot_out}")
    return rows


def _chosen_targets(prepared: Prepared, evaluator: Evaluator) -> list[Target]:
    """The request's targets for the loaded model, only ``--rows`` if given."""
    from ftprune.eval_targets import compare_targets

    if prepared.targets is None:
        assert prepared.view is not None
        every = compare_targets(prepared.view, evaluator.scorer)
    else:
        every = prepared.targets(evaluator.num_blocks)
    wanted = prepared.extras.rows
    return [t for t in every if not wanted or t.name in wanted]


def _store_rows(prepared: Prepared, target: Target, rows: list[dict[str, Any]]) -> None:
    """A run's rows of one target, stored against the run (and its router, for a trained
    one)."""
    from router.specs import checkpoint_dir

    store, view = prepared.store, prepared.view
    if store is None or view is None:
        return
    store.add_eval_results(
        view.run_id,
        target.label,
        target.router_kind,
        [{**row, "samples": row["n"]} for row in rows],
        router_id=view.router_id if checkpoint_dir(target.router) else None,
    )


def _report_extras(
    evaluator: Evaluator, rows: list[dict[str, Any]], extras: Extras, plan: EvalPlan, out: Echo
) -> None:
    """The retrieval grid (and heatmap) and the paired differences to the baseline."""
    from ftprune.eval_retrieval import format_grid, plot_heatmap

    if plan.retrieval is not None:
        out(format_grid(rows, "acc"))
        out(format_grid(rows, "exact_match"))
        if extras.heatmap is not None:
            plot_heatmap(rows, extras.heatmap)
            out(f"wrote {extras.heatmap}")
    if extras.baseline is not None:
        from ftprune.eval_compare import format_differences

        out(
            f"paired differences to {extras.baseline} (points of accuracy, 95% paired "
            "bootstrap CI; McNemar's exact p)"
        )
        out(
            format_differences(
                differences(evaluator.scores, extras.baseline, plan.resamples, plan.seed)
            )
        )
