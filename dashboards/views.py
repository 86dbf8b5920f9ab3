"""The dashboard's views: each draws one page from :mod:`dashboards.queries` frames and
:mod:`dashboards.figures` figures, for the run chosen in the sidebar (None: the database
holds no run). Views only read, and each says in one line what is missing when there is
nothing to show (an empty database, a run with no generation yet, a failed run)."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd
import streamlit as st

from dashboards import figures, queries
from storage import Store
from storage.queries import eval_results

View = Callable[[Store, "int | None"], None]
NO_RUNS = (
    "No runs in this database yet: start one with `ftprune search launch --config "
    "configs/tiny.yaml` (or `ftprune demo`), then watch it here."
)
X_CHOICES = {"generation": "generation", "forward_tokens": "forward tokens"}


def runs_view(store: Store, _run_id: int | None) -> None:
    """Every run with its status, model, target sparsity, best fitness and duration."""
    st.header("Runs")
    table = queries.run_table(store)
    if table.empty:
        st.info(NO_RUNS)
        return
    left, middle, right, last = st.columns(4)
    statuses = left.multiselect("Status", sorted(table["status"].unique()), key="f_status")
    models = middle.multiselect("Model", sorted(table["model"].dropna().unique()), key="f_model")
    name = last.text_input("Name contains", key="f_name")
    targets = table["target_sparsity"].dropna()
    sparsity = None
    if targets.nunique() > 1:
        low, high = float(targets.min()), float(targets.max())
        sparsity = right.slider("Target sparsity", low, high, (low, high), key="f_sparsity")
    shown = queries.filter_runs(table, statuses or None, models or None, sparsity, name)
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={
            "target_sparsity": st.column_config.NumberColumn("target S", format="%.3f"),
            "best_fitness": st.column_config.NumberColumn("best window KL", format="%.4f"),
            "wall_s": st.column_config.NumberColumn("duration (s)", format="%.0f"),
            "generations_done": "generations",
            "generations_planned": "of",
        },
    )
    for run in shown[shown["status"] == "failed"].itertuples():
        st.error(f"{run.name} failed: {run.error}")


def overview_view(store: Store, run_id: int | None) -> None:
    """The chosen run at a glance: convergence, final schedule, best schedule per generation."""
    run = _run_header(store, run_id, "Overview")
    if run is None:
        return
    left, right = st.columns(2)
    left.subheader("Convergence")
    left.plotly_chart(
        figures.convergence_figure(queries.convergence(store, run["id"])), key="ov_convergence"
    )
    right.subheader("Final schedule per block")
    right.plotly_chart(
        figures.allocation_bars(queries.allocations(store, run["id"])), key="ov_allocations"
    )
    st.subheader("Best schedule so far, per generation")
    st.plotly_chart(
        figures.schedule_heatmap(queries.schedule_matrix(store, run["id"])), key="ov_heatmap"
    )


def convergence_view(store: Store, run_id: int | None) -> None:
    """Best and median fitness per generation and stage, optionally against tokens."""
    run = _run_header(store, run_id, "Convergence")
    if run is None:
        return
    x = st.radio(
        "x axis", list(X_CHOICES), format_func=X_CHOICES.__getitem__, horizontal=True, key="conv_x"
    )
    stages = queries.convergence(store, run["id"])
    st.plotly_chart(figures.convergence_figure(stages, x), key="convergence")
    with st.expander("Per generation and stage"):
        st.dataframe(stages, hide_index=True, width="stretch")


def schedules_view(store: Store, run_id: int | None) -> None:
    """The best schedule of every generation, and the final one beside other allocations."""
    run = _run_header(store, run_id, "Schedules")
    if run is None:
        return
    st.subheader("Best schedule per generation")
    so_far = st.radio(
        "Rows",
        [True, False],
        horizontal=True,
        key="heatmap_rows",
        format_func={
            True: "best so far (the incumbent)",
            False: "best scored in the generation",
        }.__getitem__,
    )
    matrix = queries.schedule_matrix(store, run["id"], so_far=so_far)
    st.plotly_chart(figures.schedule_heatmap(matrix), key="heatmap")
    st.subheader("Final schedule per block")
    st.caption(
        "`searched`: this run's best schedule; `uniform`: the target sparsity at "
        "every block; other bars: further schedules the run scored on held-out text."
    )
    st.plotly_chart(
        figures.allocation_bars(queries.allocations(store, run["id"])), key="allocations"
    )


def population_view(store: Store, run_id: int | None) -> None:
    """Every evaluation: fitness against realized sparsity."""
    run = _run_header(store, run_id, "Population")
    if run is None:
        return
    frame = queries.population(store, run["id"])
    generations = sorted(frame["generation"].unique().tolist())
    chosen = st.multiselect("Generations (all if none)", generations, key="pop_generations")
    if chosen:
        frame = frame[frame["generation"].isin(chosen)]
    st.plotly_chart(figures.population_scatter(frame), key="population")


def compare_view(store: Store, run_id: int | None) -> None:
    """Schedules and fitness curves of several runs overlaid."""
    st.header("Compare runs")
    table = queries.run_table(store)
    if table.empty:
        st.info(NO_RUNS)
        return
    names = dict(zip(table["id"].tolist(), table["name"].tolist(), strict=True))
    default = [run_id] if run_id is not None else []
    default += [
        int(r.id)
        for r in table.itertuples()
        if run_id is not None and r.seed_run == names.get(run_id)
    ]
    chosen = st.multiselect(
        "Runs", list(names), default=default, format_func=names.__getitem__, key="cmp_runs"
    )
    x = st.radio(
        "x axis", list(X_CHOICES), format_func=X_CHOICES.__getitem__, horizontal=True, key="cmp_x"
    )
    schedules, curves = queries.compare_runs(store, chosen)
    left, right = st.columns(2)
    left.subheader("Best schedules")
    left.plotly_chart(figures.comparison_schedules(schedules), key="cmp_schedules")
    right.subheader("Best fitness so far")
    right.plotly_chart(figures.comparison_curves(curves, x), key="cmp_curves")


def routers_view(store: Store, run_id: int | None) -> None:
    """The run's trained routers: loss weights, held-out metrics and each loss curve."""
    run = _run_header(store, run_id, "Routers")
    if run is None:
        return
    routers = queries.routers_table(store, run["id"])
    if routers.empty:
        st.info(
            "No router trained for this run yet (`ftprune router train --run "
            f"{run['name']}`, or step 2 of `ftprune pipeline`)."
        )
        return
    st.dataframe(routers, hide_index=True, width="stretch")
    st.plotly_chart(
        figures.router_curves_figure(queries.router_curves(store, run["id"])), key="router_curves"
    )


def tuning_view(store: Store, _run_id: int | None) -> None:
    """Optuna studies in the same database: history, objective vs each weight, front."""
    st.header("Tuning (Optuna)")
    studies = queries.optuna_studies(store)
    if studies.empty:
        st.info(
            "No Optuna study in this database yet: `ftprune tune --run RUN --trials N` "
            "tunes the router's loss weights and stores its study here."
        )
        return
    st.dataframe(studies, hide_index=True, width="stretch")
    study = st.selectbox("Study", studies["study"].tolist(), index=len(studies) - 1, key="study")
    trials, objectives, params = queries.optuna_trials(store, study)
    directions = studies.set_index("study").loc[study, "directions"].split(",")
    objective = st.selectbox("Objective", objectives, key="objective")
    minimize = directions[objectives.index(objective)] == "minimize"
    left, right = st.columns(2)
    left.subheader("History")
    left.plotly_chart(figures.trial_history(trials, objective, minimize), key="history")
    right.subheader("Pareto front")
    right.plotly_chart(figures.pareto_front(trials, objectives), key="pareto")
    st.subheader("Objective against each parameter")
    st.plotly_chart(figures.trial_params(trials, objective, params), key="params")
    with st.expander("Trials"):
        st.dataframe(trials, hide_index=True, width="stretch")


def evaluation_view(store: Store, run_id: int | None) -> None:
    """Task results (dense, routed, retention with intervals) and benchmark tables."""
    st.header("Evaluation")
    only_run = run_id is not None and st.toggle(
        "Only the chosen run", value=False, key="eval_only_run"
    )
    results = eval_results(store, run_id if only_run else None)
    if results.empty:
        st.info("No task results yet: `ftprune eval --run RUN` stores them here.")
    else:
        st.caption(
            "Intervals: 95% paired bootstrap of the retention, as `ftprune eval` printed them."
        )
        st.plotly_chart(figures.retention_figure(results), key="retention")
        if results["task"].str.startswith("retrieval:").any():
            st.subheader("Retrieval: accuracy by key depth and prompt length")
            st.plotly_chart(figures.retrieval_heatmap(results), key="retrieval")
        st.dataframe(results, hide_index=True, width="stretch")
    st.header("Benchmarks")
    benchmarks = queries.benchmark_kinds(store)
    if not benchmarks:
        st.info("No benchmark rows yet: `ftprune bench ... --db URL` stores them here.")
        return
    for kind, frame in benchmarks.items():
        st.subheader(kind)
        if kind == "routing":
            st.plotly_chart(figures.speedup_figure(frame), key="speedup")
        st.dataframe(frame, hide_index=True, width="stretch")


def _run_header(store: Store, run_id: int | None, title: str) -> dict[str, Any] | None:
    """Draw the view's title and the run's status line; None when there is no run."""
    st.header(title)
    if run_id is None:
        st.info(NO_RUNS)
        return None
    try:
        run = queries.run_table_row(store, run_id)
    except KeyError:
        st.warning(f"run {run_id} is no longer in the database")
        return None
    cells = st.columns(5)
    cells[0].metric("run", run["name"])
    cells[1].metric("status", run["status"])
    planned = run["generations_planned"]
    cells[2].metric(
        "generations", f"{run['generations_done']}" + ("" if pd.isna(planned) else f" / {planned}")
    )
    cells[3].metric("evaluations", f"{run['evaluations']}")
    best = run["best_fitness"]
    cells[4].metric("best window KL", "—" if pd.isna(best) else f"{best:.4f}")
    if run["status"] == "failed":
        st.error(f"{run['name']} failed: {run['error']}")
    elif run["status"] == "running":
        st.info(f"{run['name']} is running: with live refresh on (sidebar) this view follows it.")
    return run


VIEWS: dict[str, View] = {
    "Overview": overview_view,
    "Runs": runs_view,
    "Convergence": convergence_view,
    "Schedules": schedules_view,
    "Population": population_view,
    "Compare runs": compare_view,
    "Routers": routers_view,
    "Tuning": tuning_view,
    "Evaluation": evaluation_view,
}
