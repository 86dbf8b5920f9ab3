"""The dashboard's query functions on a database filled by a real tiny pipeline: values that
agree with storage's own queries, the same columns on an empty database, and Optuna's
studies read without writing anything."""

from __future__ import annotations

import hashlib
import math

import optuna
import pandas as pd
import pytest

from dashboards import queries
from storage import RunPlan, Store, open_reader
from storage import queries as storage_queries
from tests.storage.helpers import scored


@pytest.fixture
def reader(filled):
    with open_reader(filled.url) as store:
        yield store


def _ids(store) -> dict[str, int]:
    runs = queries.run_table(store)
    return dict(zip(runs["name"], runs["id"], strict=True))


def test_run_table_shows_every_run_with_status_parent_and_error(reader):
    table = queries.run_table(reader).set_index("name")
    assert list(table.columns) == [c for c in queries.RUN_COLUMNS if c != "name"]
    assert table.loc["tiny", "status"] == "finished"
    assert table.loc["tiny-finetune-1", "seed_run"] == "tiny"
    assert pd.isna(table.loc["tiny", "seed_run"])
    assert table.loc["broken", "status"] == "failed"
    assert "Ray worker died" in table.loc["broken", "error"]
    assert table.loc["live", "status"] == "running" and table.loc["live", "best_fitness"] == 0.02
    assert table.loc["tiny", "model"] == "random:llama-tiny"
    assert table.loc["tiny", "target_sparsity"] == 0.3


def test_convergence_has_medians_and_cumulative_tokens_of_each_stage(reader):
    run_id = _ids(reader)["tiny"]
    frame = queries.convergence(reader, run_id)
    assert list(zip(frame["generation"], frame["stage"], strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    evaluations = storage_queries.evaluations(reader, run_id)
    medians = evaluations.groupby(["generation", "stage"])["fitness"].median().tolist()
    assert frame["median_fitness"].tolist() == pytest.approx(medians)
    assert (
        frame["best_fitness"].tolist()
        == storage_queries.generation_stages(reader, run_id)["best_fitness"].tolist()
    )
    tokens = frame["forward_tokens"].astype(float).tolist()
    assert tokens == sorted(tokens) and tokens[0] > 0
    assert tokens[-1] == evaluations["forward_tokens"].sum()


def test_schedule_matrix_and_allocations_follow_the_run(reader):
    ids = _ids(reader)
    scored = queries.schedule_matrix(reader, ids["tiny"], so_far=False)
    best = storage_queries.best_per_generation(reader, ids["tiny"])
    assert scored.index.tolist() == [0, 1] and scored.shape == (2, 4)
    assert scored.to_numpy().tolist() == best["schedule"].tolist()
    assert scored.mean(axis=1).tolist() == pytest.approx([0.3, 0.3])
    incumbents = queries.schedule_matrix(reader, ids["tiny"])
    evaluations = storage_queries.evaluations(reader, ids["tiny"])
    fitness = {
        tuple(s): f
        for s, f, fidelity in evaluations[["schedule", "fitness", "fidelity"]].itertuples(
            index=False
        )
        if fidelity == evaluations["fidelity"].max()
    }
    so_far = (
        storage_queries.generation_stages(reader, ids["tiny"])
        .groupby("generation")["best_so_far"]
        .last()
        .tolist()
    )
    assert [fitness[tuple(row)] for row in incumbents.to_numpy().tolist()] == so_far
    run = queries.run_table_row(reader, ids["tiny"])
    assert incumbents.to_numpy().tolist()[-1] == run["best_schedule"]
    allocations = queries.allocations(reader, ids["tiny"])
    named = {a: rows["sparsity"].tolist() for a, rows in allocations.groupby("allocation")}
    run = queries.run_table_row(reader, ids["tiny"])
    assert named["searched"] == run["best_schedule"] and named["uniform"] == [0.3] * 4
    influence = reader.search_state(ids["tiny"])["influence_schedule"]
    assert influence is not None and len(influence) == 4
    if influence not in (named["searched"], named["uniform"]):
        assert named["block_influence"] == influence
    assert all(len(values) == 4 for values in named.values())
    assert len({tuple(v) for v in named.values()}) == len(named)  # no schedule twice
    assert queries.allocations(reader, ids["broken"]).empty


def test_compare_runs_overlays_the_chosen_runs(reader):
    ids = _ids(reader)
    schedules, curves = queries.compare_runs(
        reader, [ids["tiny"], ids["tiny-finetune-1"], ids["broken"]]
    )
    assert schedules["run"].unique().tolist() == ["tiny", "tiny-finetune-1"]
    assert curves.groupby("run")["generation"].apply(list).to_dict() == {
        "tiny": [0, 1],
        "tiny-finetune-1": [0],
    }


def test_routers_population_and_curves(reader):
    run_id = _ids(reader)["tiny"]
    routers = queries.routers_table(reader, run_id)
    assert routers["label"].tolist() == ["round-1"]
    curves = queries.router_curves(reader, run_id)
    assert {"loss", "guide", "sparse", "distill"} <= set(curves["series"])
    assert not curves["series"].str.startswith("lambda_").any()
    population = queries.population(reader, run_id)
    assert population["mean_sparsity"].tolist() == pytest.approx([0.3] * len(population))


def test_eval_rows_carry_their_stored_intervals(reader):
    frame = storage_queries.eval_results(reader).set_index("metric")
    acc = frame.loc["acc"]
    assert acc["retention"] == pytest.approx(0.9)
    assert (acc["ci_low"], acc["ci_high"]) == (0.8, 1.0)
    assert (acc["realized_sparsity"], acc["flop_saving"]) == (0.3, 0.32)
    assert math.isnan(frame.loc["window_kl", "ci_low"])  # stored without an interval


def test_benchmarks_come_per_kind_without_empty_columns(reader):
    kinds = queries.benchmark_kinds(reader)
    assert list(kinds) == ["routing"]
    routing = kinds["routing"]
    assert len(routing) == 4 and {"speedup", "ideal_speedup", "seq_len"} <= set(routing)
    assert not routing.isna().all().any()


def test_optuna_studies_and_trials_are_read(reader):
    studies = queries.optuna_studies(reader).set_index("study")
    assert studies.loc["tune-tiny", "trials"] == 6
    assert studies.loc["tune-tiny-pareto", "directions"] == "minimize,maximize"
    single, objectives, params = queries.optuna_trials(reader, "tune-tiny")
    assert objectives == ["value"] and params == ["lambda_guide", "lr"]
    assert single.loc[single["pareto"], "value"].tolist() == [single["value"].min()]
    double, objectives, _ = queries.optuna_trials(reader, "tune-tiny-pareto")
    assert objectives == ["value_0", "value_1"] and double["pareto"].any()
    with pytest.raises(KeyError):
        queries.optuna_trials(reader, "absent")


def test_optuna_is_read_through_connections_that_cannot_write(filled, reader):
    before = hashlib.sha256(filled.path.read_bytes()).digest()
    storage = queries._optuna_storage(reader)
    with pytest.raises(Exception) as refused:
        storage.create_new_study([], "sneaky")
    assert "readonly database" in _chain(refused.value)
    assert hashlib.sha256(filled.path.read_bytes()).digest() == before


def test_an_empty_database_gives_empty_frames_with_the_same_columns(filled, reader, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(url).close()
    with open_reader(url) as empty:
        assert queries.optuna_studies(empty).empty
        assert queries.run_table(empty).columns.tolist() == queries.RUN_COLUMNS
        ids = _ids(reader)
        for name in ("convergence", "population", "router_curves", "routers_table"):
            got = getattr(queries, name)(empty, 1)
            full = getattr(queries, name)(reader, ids["tiny"])
            assert got.empty and got.columns.tolist() == full.columns.tolist(), name
        none = queries.allocations(reader, ids["broken"])  # a run without a best schedule
        assert none.empty and none.columns.tolist() == queries.ALLOCATION_COLUMNS
        assert queries.schedule_matrix(empty, 1).empty
        assert (
            storage_queries.eval_results(empty).columns.tolist()
            == storage_queries.eval_results(reader).columns.tolist()
        )
        assert queries.benchmark_kinds(empty) == {}
        with pytest.raises(KeyError):
            queries.run_table_row(empty, 1)
    assert not {"studies", "version_info"} & set(_tables(tmp_path / "empty.db"))


def test_postgresql_is_read_the_same_way_optuna_included(postgresql_url):
    store = Store(postgresql_url)
    run = store.create_run("pg", {}, 0, plan=RunPlan("m", 0.3))
    store.record_generation(
        run.id, 0, [scored(0.2, [0.3, 0.3]), scored(0.1, [0.2, 0.4])], 0.1, [0.2, 0.4]
    )
    store.close()
    storage = optuna.storages.RDBStorage(postgresql_url)
    optuna.create_study(study_name="pg-study", storage=storage).optimize(
        lambda t: t.suggest_float("lambda_guide", 0, 2), n_trials=2
    )
    storage.engine.dispose()
    with open_reader(postgresql_url) as reader:
        assert queries.run_table(reader)["name"].tolist() == ["pg"]
        assert queries.schedule_matrix(reader, run.id).to_numpy().tolist() == [[0.2, 0.4]]
        assert queries.optuna_studies(reader)["trials"].tolist() == [2]
        trials, _, params = queries.optuna_trials(reader, "pg-study")
        assert len(trials) == 2 and params == ["lambda_guide"]
        with pytest.raises(Exception) as refused:
            queries._optuna_storage(reader).create_new_study([], "sneaky")
        assert "read-only transaction" in _chain(refused.value)


def _chain(error: BaseException) -> str:
    """The messages of an exception and everything that caused it."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def _tables(path) -> list[str]:
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return [r[0] for r in connection.execute("SELECT name FROM sqlite_master")]
