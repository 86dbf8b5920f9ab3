"""Plotly figures of the dashboard, built from the frames of :mod:`dashboards.queries`.

Every function is pure: it reads only its arguments, never the database or Streamlit, and
returns a new ``plotly.graph_objects.Figure``. An empty frame gives a figure with no traces
and a one-line note saying what is missing, never an exception.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

FITNESS = "window KL (fitness)"
X_AXES = {"generation": "generation", "forward_tokens": "forward tokens spent"}


def empty_figure(message: str) -> go.Figure:
    """A figure without traces that shows ``message`` in its middle."""
    figure = go.Figure()
    figure.add_annotation(
        text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 14}
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return _layout(figure)


def convergence_figure(frame: pd.DataFrame, x: str = "generation") -> go.Figure:
    """Best and median fitness of each selection stage per generation (one solid and one
    dotted line per stage) and the run's best so far, against the generation or the forward
    tokens spent (``x``: ``generation`` or ``forward_tokens``; stages without a token count
    are left out of the latter). Fitness is on a log axis."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}")
    frame = frame.dropna(subset=[x])
    if frame.empty:
        return empty_figure("no generation recorded yet")
    figure = go.Figure()
    for stage, rows in frame.groupby("stage", dropna=False, sort=True):
        fidelity = rows["fidelity"].dropna()
        name = f"stage {_text(stage)}" + (
            f" ({int(fidelity.iloc[-1])} positions)" if not fidelity.empty else ""
        )
        figure.add_scatter(
            x=rows[x],
            y=rows["best_fitness"],
            mode="lines+markers",
            name=f"{name}: best",
            legendgroup=name,
        )
        figure.add_scatter(
            x=rows[x],
            y=rows["median_fitness"],
            mode="lines",
            line={"dash": "dot"},
            name=f"{name}: median",
            legendgroup=name,
        )
    last = frame.groupby("generation", as_index=False).tail(1)
    figure.add_scatter(
        x=last[x],
        y=last["best_so_far"],
        mode="lines",
        name="best so far",
        line={"width": 4, "color": "black"},
    )
    figure.update_xaxes(title=X_AXES[x], dtick=1 if x == "generation" else None)
    figure.update_yaxes(title=FITNESS, type="log")
    return _layout(figure)


def schedule_heatmap(matrix: pd.DataFrame) -> go.Figure:
    """Generation x block heatmap of each generation's best schedule (cell: the block's
    sparsity; rows from :func:`dashboards.queries.schedule_matrix`)."""
    if matrix.empty:
        return empty_figure("no generation recorded yet")
    figure = go.Figure(
        go.Heatmap(
            z=matrix.to_numpy(),
            x=list(matrix.columns),
            y=list(matrix.index),
            colorscale="Viridis",
            colorbar={"title": {"text": "sparsity"}},
            hovertemplate="generation %{y}, block %{x}: %{z:.3f}<extra></extra>",
        )
    )
    figure.update_xaxes(title="block", dtick=1 if matrix.shape[1] <= 32 else None)
    figure.update_yaxes(title="generation", autorange="reversed", dtick=1)
    return _layout(figure)


def allocation_bars(frame: pd.DataFrame) -> go.Figure:
    """Per-block sparsity of each allocation side by side (grouped bars; frame from
    :func:`dashboards.queries.allocations`)."""
    if frame.empty:
        return empty_figure("no best schedule yet")
    figure = px.bar(frame, x="block", y="sparsity", color="allocation", barmode="group")
    figure.update_xaxes(dtick=1 if frame["block"].nunique() <= 32 else None)
    return _layout(figure)


def population_scatter(frame: pd.DataFrame) -> go.Figure:
    """Fitness against realized sparsity of every evaluation, coloured by generation, one
    marker per selection stage; fitness on a log axis."""
    if frame.empty:
        return empty_figure("no evaluation recorded yet")
    shown = frame.assign(stage=frame["stage"].map(_text).map(lambda s: f"stage {s}"))
    figure = px.scatter(
        shown,
        x="realized_sparsity",
        y="fitness",
        color="generation",
        symbol="stage",
        log_y=True,
        color_continuous_scale="Viridis",
        hover_data={"id": True, "fidelity": True, "top1": ":.3f", "mean_sparsity": ":.3f"},
        labels={"realized_sparsity": "realized sparsity", "fitness": FITNESS},
    )
    figure.update_layout(coloraxis_colorbar={"title": {"text": "generation"}})
    return _layout(figure)


def comparison_schedules(frame: pd.DataFrame) -> go.Figure:
    """The best schedule of each run overlaid (one line per run, sparsity per block)."""
    if frame.empty:
        return empty_figure("none of the chosen runs has a best schedule yet")
    return _layout(px.line(frame, x="block", y="sparsity", color="run", markers=True))


def comparison_curves(frame: pd.DataFrame, x: str = "generation") -> go.Figure:
    """Each run's best fitness so far overlaid, against generation or forward tokens."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}")
    frame = frame.dropna(subset=[x])
    if frame.empty:
        return empty_figure("none of the chosen runs has a generation yet")
    figure = px.line(
        frame,
        x=x,
        y="best_so_far",
        color="run",
        markers=True,
        log_y=True,
        labels={x: X_AXES[x], "best_so_far": f"best {FITNESS}"},
    )
    return _layout(figure)


def router_curves_figure(frame: pd.DataFrame) -> go.Figure:
    """One panel per training-curve series (each loss term and the total), one line per
    router, y axes independent."""
    if frame.empty:
        return empty_figure("no router trained for this run yet")
    figure = px.line(
        frame,
        x="step",
        y="value",
        color="label",
        facet_col="series",
        facet_col_wrap=2,
        facet_row_spacing=0.12,
    )
    figure.update_yaxes(matches=None, showticklabels=True, title=None)
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return _layout(figure, height=220 * ((frame["series"].nunique() + 1) // 2) + 80)


def trial_history(frame: pd.DataFrame, objective: str, minimize: bool = True) -> go.Figure:
    """An Optuna study's objective per trial number and the best value so far (complete
    trials only)."""
    done = frame[frame["state"] == "complete"].dropna(subset=[objective])
    if done.empty:
        return empty_figure("no complete trial yet")
    best = done[objective].cummin() if minimize else done[objective].cummax()
    figure = go.Figure()
    figure.add_scatter(x=done["number"], y=done[objective], mode="markers", name=objective)
    figure.add_scatter(
        x=done["number"], y=best, mode="lines", name="best so far", line={"shape": "hv"}
    )
    figure.update_xaxes(title="trial")
    figure.update_yaxes(title=objective)
    return _layout(figure)


def trial_params(frame: pd.DataFrame, objective: str, params: Sequence[str]) -> go.Figure:
    """The objective against each sampled parameter (one panel per parameter; complete
    trials only; the best-front trials highlighted)."""
    done = frame[frame["state"] == "complete"].dropna(subset=[objective])
    params = [p for p in params if p in done and pd.api.types.is_numeric_dtype(done[p])]
    if done.empty or not params:
        return empty_figure("no complete trial with numeric parameters yet")
    figure = make_subplots(rows=1, cols=len(params), shared_yaxes=True, subplot_titles=list(params))
    colors = done["pareto"].map({True: "crimson", False: "steelblue"})
    for column, name in enumerate(params, start=1):
        figure.add_scatter(
            x=done[name],
            y=done[objective],
            mode="markers",
            name=name,
            marker={"color": colors},
            showlegend=False,
            text=done["number"].map(lambda n: f"trial {n}"),
            row=1,
            col=column,
        )
    figure.update_yaxes(title=objective, row=1, col=1)
    return _layout(figure)


def pareto_front(frame: pd.DataFrame, objectives: Sequence[str]) -> go.Figure:
    """The first two objectives of every complete trial, the best front highlighted; a
    single-objective study has no front to draw."""
    if len(objectives) < 2:
        return empty_figure("a single-objective study has no Pareto front")
    first, second = objectives[:2]
    done = frame[frame["state"] == "complete"].dropna(subset=[first, second])
    if done.empty:
        return empty_figure("no complete trial yet")
    shown = done.assign(front=done["pareto"].map({True: "Pareto front", False: "dominated"}))
    figure = px.scatter(
        shown,
        x=first,
        y=second,
        color="front",
        hover_data=["number"],
        color_discrete_map={"Pareto front": "crimson", "dominated": "lightgray"},
    )
    return _layout(figure)


def retention_figure(frame: pd.DataFrame) -> go.Figure:
    """Retention (routed / dense) per task and metric, one bar per schedule and router, with
    the rows' 95% intervals where known; a dotted line marks full retention."""
    cells = frame["task"].str.count("/").eq(2) & frame["task"].str.startswith("retrieval:")
    shown = frame[~cells].dropna(subset=["retention"])  # retrieval cells: the heatmap
    if shown.empty:
        return empty_figure("no task result with a retention yet")
    shown = shown.assign(
        task_metric=shown["task"] + " · " + shown["metric"],
        target=shown["label"] + " + " + shown["router"],
        plus=shown["ci_high"] - shown["retention"],
        minus=shown["retention"] - shown["ci_low"],
    )
    figure = px.bar(
        shown,
        x="task_metric",
        y="retention",
        color="target",
        barmode="group",
        error_y="plus",
        error_y_minus="minus",
        hover_data={"dense": ":.3f", "routed": ":.3f", "samples": True},
        labels={"task_metric": "task · metric"},
    )
    figure.add_hline(y=1.0, line_dash="dot")
    return _layout(figure)


def speedup_figure(frame: pd.DataFrame) -> go.Figure:
    """Measured speedup against the ideal 1 / (1 - S) of routing benchmark rows, coloured by
    sequence length, one marker per scope; the diagonal is the ideal."""
    needed = {"speedup", "ideal_speedup"}
    if frame.empty or not needed <= set(frame.columns):
        return empty_figure("no routing benchmark with speedups yet")
    shown = frame.dropna(subset=list(needed))
    if shown.empty:
        return empty_figure("no routing benchmark with speedups yet")
    color = "seq_len" if "seq_len" in shown else None
    symbol = "scope" if "scope" in shown else None
    figure = px.scatter(
        shown,
        x="ideal_speedup",
        y="speedup",
        color=color,
        symbol=symbol,
        hover_data=[c for c in ("model", "target_sparsity", "batch", "dtype") if c in shown],
        labels={"ideal_speedup": "ideal speedup 1/(1-S)", "speedup": "measured speedup"},
    )
    top = float(max(shown["ideal_speedup"].max(), shown["speedup"].max()))
    figure.add_scatter(
        x=[1.0, top],
        y=[1.0, top],
        mode="lines",
        name="ideal",
        line={"dash": "dot", "color": "gray"},
    )
    return _layout(figure)


def _text(value: object) -> str:
    return "?" if pd.isna(value) else str(value)


def _layout(figure: go.Figure, height: int = 380) -> go.Figure:
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


def retrieval_heatmap(frame: pd.DataFrame, metric: str = "acc") -> go.Figure:
    """Retrieval accuracy (``acc``: the key's answer chosen among four) per key depth (rows)
    and prompt length (columns): one panel per
    family and series (dense, then every schedule + router), as ``ftprune eval
    --retrieval`` stores its cells (task ``retrieval:<family>/<length>/<depth %>``)."""
    from plotly.subplots import make_subplots

    from evaluation.retrieval import parse_cell

    cells = frame[frame["metric"] == metric].assign(cell=frame["task"].map(parse_cell))
    cells = cells.dropna(subset=["cell"])
    if cells.empty:
        return empty_figure("no retrieval result yet: ftprune eval --run RUN --retrieval ...")
    cells = cells.assign(
        family=cells["cell"].str[0],
        length=cells["cell"].str[1],
        depth=cells["cell"].str[2],
        series=cells["label"] + " + " + cells["router"],
    )
    dense = cells.drop_duplicates(["family", "length", "depth"]).assign(
        series="dense", routed=lambda f: f["dense"]
    )
    cells = pd.concat([dense, cells])
    families, series = list(dict.fromkeys(cells["family"])), list(dict.fromkeys(cells["series"]))
    figure = make_subplots(
        rows=len(families),
        cols=len(series),
        subplot_titles=[f"{f} · {s}" for f in families for s in series],
        shared_yaxes=True,
    )
    for i, family in enumerate(families, start=1):
        for j, name in enumerate(series, start=1):
            part = cells[(cells["family"] == family) & (cells["series"] == name)]
            grid = part.pivot_table(index="depth", columns="length", values="routed")
            figure.add_trace(
                go.Heatmap(
                    z=grid.values,
                    x=[str(n) for n in grid.columns],
                    y=[f"{d}%" for d in grid.index],
                    zmin=0.0,
                    zmax=1.0,
                    colorscale="RdYlGn",
                    showscale=(i, j) == (1, 1),
                    hovertemplate="%{y} deep, %{x} tokens: %{z:.2f}<extra></extra>",
                ),
                row=i,
                col=j,
            )
    return _layout(figure, height=max(380, 300 * len(families)))
