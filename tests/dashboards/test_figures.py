"""The dashboard's figure functions on hand-made frames: what each trace holds, and a note
instead of an exception when there is nothing to draw."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dashboards import figures
from dashboards.queries import filter_runs

NA = pd.NA


def _stages() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "generation": [0, 0, 1, 1, 2, 2],
            "stage": pd.array([0, 1, 0, 1, 0, 1], dtype="Int64"),
            "fidelity": pd.array([64, 256, 64, 256, 64, 256], dtype="Int64"),
            "evaluations": [8, 2, 8, 2, 8, 2],
            "best_fitness": [0.5, 0.4, 0.45, 0.35, 0.3, 0.3],
            "median_fitness": [0.9, 0.45, 0.7, 0.4, 0.6, 0.32],
            "best_so_far": [0.4, 0.4, 0.35, 0.35, 0.3, 0.3],
            "forward_tokens": pd.array([100, 150, 250, NA, 400, 450], dtype="Float64"),
        }
    )


def _texts(figure) -> list[str]:
    return [a.text for a in figure.layout.annotations]


def test_convergence_has_best_and_median_per_stage_and_the_best_so_far():
    figure = figures.convergence_figure(_stages())
    names = [t.name for t in figure.data]
    assert names == [
        "stage 0 (64 positions): best",
        "stage 0 (64 positions): median",
        "stage 1 (256 positions): best",
        "stage 1 (256 positions): median",
        "best so far",
    ]
    assert list(figure.data[2].y) == [0.4, 0.35, 0.3]
    assert list(figure.data[3].y) == [0.45, 0.4, 0.32]
    assert list(figure.data[-1].x) == [0, 1, 2] and list(figure.data[-1].y) == [0.4, 0.35, 0.3]
    assert figure.layout.yaxis.type == "log"


def test_convergence_against_forward_tokens_leaves_out_stages_without_a_count():
    figure = figures.convergence_figure(_stages(), x="forward_tokens")
    assert list(figure.data[2].x) == [150, 450]  # generation 1 stage 1 has no count
    assert figure.layout.xaxis.title.text == "forward tokens spent"
    with pytest.raises(ValueError):
        figures.convergence_figure(_stages(), x="wall_clock")


@pytest.mark.parametrize(
    "draw, frame",
    [
        (figures.convergence_figure, _stages().iloc[:0]),
        (figures.schedule_heatmap, pd.DataFrame()),
        (figures.allocation_bars, pd.DataFrame(columns=["allocation", "block", "sparsity"])),
        (figures.population_scatter, pd.DataFrame(columns=["realized_sparsity", "fitness"])),
        (figures.comparison_schedules, pd.DataFrame(columns=["run", "block", "sparsity"])),
        (figures.router_curves_figure, pd.DataFrame(columns=["label", "series", "step", "value"])),
        (figures.speedup_figure, pd.DataFrame(columns=["speedup"])),
    ],
)
def test_nothing_to_draw_is_a_note_not_an_error(draw, frame):
    figure = draw(frame)
    assert len(figure.data) == 0
    assert len(_texts(figure)) == 1 and _texts(figure)[0]


def test_heatmap_is_generation_by_block():
    matrix = pd.DataFrame(
        [[0.1, 0.5], [0.2, 0.4], [0.3, 0.3]], index=pd.Index([0, 1, 2], name="generation")
    )
    heatmap = figures.schedule_heatmap(matrix).data[0]
    assert [list(row) for row in heatmap.z] == [[0.1, 0.5], [0.2, 0.4], [0.3, 0.3]]
    assert list(heatmap.y) == [0, 1, 2] and list(heatmap.x) == [0, 1]


def test_allocation_bars_group_one_trace_per_allocation():
    frame = pd.DataFrame(
        {
            "allocation": ["searched"] * 3 + ["uniform"] * 3,
            "block": [0, 1, 2] * 2,
            "sparsity": [0.1, 0.3, 0.5, 0.3, 0.3, 0.3],
        }
    )
    figure = figures.allocation_bars(frame)
    assert figure.layout.barmode == "group"
    assert {t.name: list(t.y) for t in figure.data} == {
        "searched": [0.1, 0.3, 0.5],
        "uniform": [0.3, 0.3, 0.3],
    }


def test_population_scatter_plots_every_evaluation_on_a_log_fitness_axis():
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "generation": [0, 0, 1, 1],
            "stage": pd.array([0, 1, 0, NA], dtype="Int64"),
            "fidelity": [64, 256, 64, 64],
            "top1": [0.9] * 4,
            "fitness": [0.5, 0.4, 0.3, 0.2],
            "realized_sparsity": [0.29, 0.3, 0.31, 0.3],
            "mean_sparsity": [0.3] * 4,
        }
    )
    figure = figures.population_scatter(frame)
    assert sum(len(t.x) for t in figure.data) == 4
    assert {t.name for t in figure.data} == {"stage 0", "stage 1", "stage ?"}
    assert figure.layout.yaxis.type == "log"


def test_comparisons_draw_one_line_per_run():
    schedules = pd.DataFrame(
        {"run": ["a", "a", "b", "b"], "block": [0, 1, 0, 1], "sparsity": [0.2, 0.4, 0.3, 0.3]}
    )
    assert [t.name for t in figures.comparison_schedules(schedules).data] == ["a", "b"]
    curves = pd.DataFrame(
        {
            "run": ["a", "a", "b"],
            "generation": [0, 1, 0],
            "forward_tokens": pd.array([10, 20, NA], dtype="Float64"),
            "best_so_far": [0.5, 0.4, 0.6],
        }
    )
    assert [t.name for t in figures.comparison_curves(curves).data] == ["a", "b"]
    by_tokens = figures.comparison_curves(curves, "forward_tokens")
    assert [t.name for t in by_tokens.data] == ["a"] and list(by_tokens.data[0].x) == [10, 20]


def test_router_curves_get_one_panel_per_series():
    frame = pd.DataFrame(
        {
            "label": ["r1"] * 6 + ["r2"] * 3,
            "series": ["loss"] * 3 + ["guide"] * 3 + ["loss"] * 3,
            "step": [0, 1, 2] * 3,
            "value": [3.0, 2.0, 1.0, 0.7, 0.5, 0.2, 2.5, 2.0, 1.8],
        }
    )
    figure = figures.router_curves_figure(frame)
    assert sorted(_texts(figure)) == ["guide", "loss"]
    assert sorted((t.name, tuple(t.y)) for t in figure.data) == [
        ("r1", (0.7, 0.5, 0.2)),
        ("r1", (3.0, 2.0, 1.0)),
        ("r2", (2.5, 2.0, 1.8)),
    ]


def _trials() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "study": ["s"] * 5,
            "number": [0, 1, 2, 3, 4],
            "state": ["complete", "complete", "pruned", "complete", "complete"],
            "pareto": [False, True, False, True, False],
            "value_0": [0.5, 0.2, math.nan, 0.3, 0.6],
            "value_1": [0.1, 0.2, math.nan, 0.4, 0.3],
            "lambda_guide": [1.0, 0.5, 1.5, 0.8, 1.2],
            "lr": [1e-3, 2e-3, 1e-3, 5e-4, 1e-3],
        }
    )


def test_trial_history_tracks_the_best_so_far_in_the_study_direction():
    lowest = figures.trial_history(_trials(), "value_0", minimize=True)
    assert list(lowest.data[0].x) == [0, 1, 3, 4]  # complete trials only
    assert list(lowest.data[1].y) == [0.5, 0.2, 0.2, 0.2]
    highest = figures.trial_history(_trials(), "value_1", minimize=False)
    assert list(highest.data[1].y) == [0.1, 0.2, 0.4, 0.4]


def test_trial_params_draw_one_panel_per_parameter_with_the_front_highlighted():
    figure = figures.trial_params(_trials(), "value_0", ["lambda_guide", "lr"])
    assert [list(t.x) for t in figure.data] == [[1.0, 0.5, 0.8, 1.2], [1e-3, 2e-3, 5e-4, 1e-3]]
    assert list(figure.data[0].marker.color) == ["steelblue", "crimson", "crimson", "steelblue"]
    assert sorted(_texts(figure)) == ["lambda_guide", "lr"]


def test_pareto_front_separates_the_front_and_needs_two_objectives():
    figure = figures.pareto_front(_trials(), ["value_0", "value_1"])
    points = {t.name: sorted(zip(t.x, t.y, strict=True)) for t in figure.data}
    assert points == {
        "Pareto front": [(0.2, 0.2), (0.3, 0.4)],
        "dominated": [(0.5, 0.1), (0.6, 0.3)],
    }
    single = figures.pareto_front(_trials(), ["value_0"])
    assert len(single.data) == 0 and "single-objective" in _texts(single)[0]


def test_retention_bars_carry_their_intervals_and_skip_rows_without_retention():
    frame = pd.DataFrame(
        {
            "task": ["arc", "text", "text"],
            "metric": ["acc", "top1", "kl"],
            "label": ["best"] * 3,
            "router": ["static"] * 3,
            "dense": [0.8, 1.0, 0.0],
            "routed": [0.72, 0.9, 0.1],
            "samples": [100, 4, 4],
            "retention": [0.9, 0.9, math.nan],
            "ci_low": [0.8, math.nan, math.nan],
            "ci_high": [0.95, math.nan, math.nan],
        }
    )
    figure = figures.retention_figure(frame)
    (bars,) = figure.data
    assert list(bars.x) == ["arc · acc", "text · top1"]
    assert list(bars.y) == [0.9, 0.9]
    assert bars.error_y.array[0] == pytest.approx(0.05)
    assert bars.error_y.arrayminus[0] == pytest.approx(0.1)
    assert math.isnan(bars.error_y.array[1])


def test_speedup_is_plotted_against_the_ideal_with_the_diagonal():
    frame = pd.DataFrame(
        {
            "seq_len": [512, 1024],
            "scope": ["blocks", "blocks"],
            "speedup": [1.2, 1.3],
            "ideal_speedup": [1 / 0.75, 1 / 0.6],
        }
    )
    figure = figures.speedup_figure(frame)
    ideal = [t for t in figure.data if t.name == "ideal"]
    assert len(ideal) == 1 and list(ideal[0].x) == list(ideal[0].y)
    assert sorted(y for t in figure.data if t.name != "ideal" for y in t.y) == [1.2, 1.3]


def test_filter_runs_applies_every_filter_given():
    frame = pd.DataFrame(
        {
            "name": ["demo", "demo-finetune-1", "probe"],
            "status": ["finished", "running", "failed"],
            "model": ["smollm2-135m", "smollm2-135m", "random:llama-tiny"],
            "target_sparsity": pd.array([0.3, 0.3, NA], dtype="Float64"),
        }
    )
    assert filter_runs(frame)["name"].tolist() == ["demo", "demo-finetune-1", "probe"]
    assert filter_runs(frame, statuses=["running", "failed"])["name"].tolist() == [
        "demo-finetune-1",
        "probe",
    ]
    assert filter_runs(frame, models=["smollm2-135m"], name="FINE")["name"].tolist() == [
        "demo-finetune-1"
    ]
    assert filter_runs(frame, sparsity=(0.25, 0.3))["name"].tolist() == ["demo", "demo-finetune-1"]


def _retrieval_rows() -> pd.DataFrame:
    rows = []
    for router, routed in (("static", [0.5, 0.25]), ("random", [0.0, 0.25])):
        for (length, depth), value in zip([(512, 0), (512, 50)], routed, strict=True):
            rows.append(
                {
                    "task": f"retrieval:niah_single/{length}/{depth}",
                    "metric": "acc",
                    "label": "uniform",
                    "router": router,
                    "dense": 1.0 - depth / 100,
                    "routed": value,
                    "retention": value,
                    "ci_low": 0.0,
                    "ci_high": 1.0,
                    "samples": 4,
                }
            )
    rows.append(
        {
            "task": "retrieval:niah_single/512",
            "metric": "acc",
            "label": "uniform",
            "router": "static",
            "dense": 0.75,
            "routed": 0.375,
            "retention": 0.5,
            "ci_low": 0.2,
            "ci_high": 0.8,
            "samples": 8,
        }
    )
    return pd.DataFrame(rows)


def test_retrieval_heatmap_has_a_panel_per_series_with_depth_rows():
    figure = figures.retrieval_heatmap(_retrieval_rows())
    assert [t.text for t in figure.layout.annotations] == [
        "niah_single · dense",
        "niah_single · uniform + static",
        "niah_single · uniform + random",
    ]
    dense, static, random = figure.data
    assert list(dense.y) == ["0%", "50%"] and list(dense.x) == ["512"]
    assert [row[0] for row in dense.z] == [1.0, 0.5]
    assert [row[0] for row in static.z] == [0.5, 0.25]
    assert [row[0] for row in random.z] == [0.0, 0.25]


def test_retention_bars_leave_retrieval_cells_to_the_heatmap():
    (bars,) = figures.retention_figure(_retrieval_rows()).data
    assert list(bars.x) == ["retrieval:niah_single/512 · acc"]


def test_retrieval_heatmap_without_cells_says_so():
    frame = _retrieval_rows().iloc[-1:]
    assert "no retrieval result" in _texts(figures.retrieval_heatmap(frame))[0]
