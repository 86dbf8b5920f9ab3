"""The query API on SQLite and PostgreSQL: values, order, and the same columns and dtypes on
both backends, empty or not."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from storage import RunPlan, Store, queries
from tests.storage.helpers import Metrics, scored

CURVES = {"step": [0, 10, 20], "loss": [3.0, 2.0, 1.5], "guide": [1.0, 0.5, 0.2]}


@pytest.fixture
def filled(db_url):
    """A finished two-generation run (two fidelities in generation 0) with held-out results,
    a trained router, task results and benchmark rows, plus an empty later run."""
    store = Store(db_url)
    run = store.create_run("q", {"generations": 2}, 1, plan=RunPlan("m", 0.3, 2))
    store.record_generation(
        run.id,
        0,
        [
            scored(0.5, [0.3, 0.3], duration_s=1.0),
            scored(0.4, [0.2, 0.4], duration_s=1.0),
            scored(0.45, [0.2, 0.4], positions=256, duration_s=4.0),
        ],
        0.4,
        [0.2, 0.4],
    )
    store.record_generation(
        run.id, 1, [scored(0.3, [0.1, 0.5]), scored(0.3, [0.5, 0.1])], 0.3, [0.1, 0.5]
    )
    store.add_heldout(run.id, "best", scored(0.35, [0.1, 0.5]))
    store.add_heldout(run.id, "uniform", scored(0.55, [0.3, 0.3]))
    router_id = store.add_router(
        run.id,
        "trial-0",
        [0.1, 0.5],
        {"guide": 1.0, "sparse": 0.5, "distill": 2.0},
        "/ckpt/router.pt",
        "ab" * 32,
        CURVES,
        {"steps": 20},
        heldout=Metrics(kl=0.2, top1=0.95, ppl=9.0, realized_sparsity=0.31),
        train_s=12.5,
    )
    store.add_eval_results(
        run.id,
        "best",
        "dynamic",
        [
            {
                "task": "arc_easy",
                "metric": "acc",
                "dense": 0.8,
                "routed": 0.76,
                "samples": 100,
                "ci_low": 0.9,
                "ci_high": 1.01,
                "realized_sparsity": 0.3,
                "flop_saving": 0.33,
            },
            {"task": "toy", "metric": "acc", "dense": 0.0, "routed": 0.0, "ci_low": float("nan")},
        ],
        router_id=router_id,
    )
    store.add_benchmark_rows(
        "routing",
        [
            {"model": "m", "seq_len": 512, "speedup": 1.3},
            {"model": "m", "seq_len": 1024, "speedup": 1.5, "scope": "blocks"},
        ],
    )
    store.add_benchmark_rows("search", [{"method": "ga", "evaluations": 5}], run_id=run.id)
    store.set_status(run.id, "finished")
    later = store.create_run("later", {}, 2)
    return store, run.id, later.id, router_id


def test_runs(filled):
    store, run_id, later_id, _ = filled
    frame = queries.runs(store)
    assert frame["id"].tolist() == [later_id, run_id]
    q = frame.set_index("name").loc["q"]
    assert (q["status"], q["model"], q["target_sparsity"]) == ("finished", "m", 0.3)
    assert (q["generations_done"], q["generations_planned"], q["evaluations"]) == (2, 2, 5)
    assert q["best_fitness"] == 0.3 and q["best_schedule"] == [0.1, 0.5]
    assert q["wall_s"] >= 0 and q["config"]["generations"] == 2
    later = frame.set_index("name").loc["later"]
    assert later["evaluations"] == 0 and pd.isna(later["finished_at"])
    assert pd.isna(later["generations_planned"]) and later["wall_s"] >= 0
    assert str(frame["created_at"].dtype).endswith("UTC]")


def test_generation_stages_per_generation_and_stage(filled):
    store, run_id, _, _ = filled
    frame = queries.generation_stages(store, run_id)
    assert list(zip(frame["generation"], frame["stage"], frame["fidelity"], strict=True)) == [
        (0, 0, 64),
        (0, 1, 256),
        (1, 0, 64),
    ]
    assert frame["evaluations"].tolist() == [2, 1, 2]
    assert frame["best_fitness"].tolist() == [0.4, 0.45, 0.3]
    assert frame["worst_fitness"].tolist() == [0.5, 0.45, 0.3]
    assert frame["best_so_far"].tolist() == [0.4, 0.4, 0.3]
    assert frame["compute_s"].tolist() == [2.0, 4.0, 1.0]


def test_best_per_generation_prefers_the_highest_fidelity(filled):
    store, run_id, _, _ = filled
    frame = queries.best_per_generation(store, run_id)
    assert frame["generation"].tolist() == [0, 1]
    assert frame["fidelity"].tolist() == [256, 64]
    assert frame["fitness"].tolist() == [0.45, 0.3]
    assert frame["schedule"].tolist() == [[0.2, 0.4], [0.1, 0.5]]  # a tie goes to the first
    assert list(frame.columns) == list(queries.evaluations(store, run_id).columns)


def test_evaluations_of_a_run_or_one_generation(filled):
    store, run_id, _, _ = filled
    everything = queries.evaluations(store, run_id)
    assert everything["generation"].tolist() == [0, 0, 0, 1, 1]
    assert everything["fitness"].tolist() == [0.5, 0.4, 0.45, 0.3, 0.3]
    one = queries.evaluations(store, run_id, generation=1)
    assert one["schedule"].tolist() == [[0.1, 0.5], [0.5, 0.1]]
    assert set(one["worker"]) == {"w:1"} and one["id"].is_monotonic_increasing


def test_heldout_results(filled):
    store, run_id, _, _ = filled
    frame = queries.heldout_results(store, run_id)
    assert frame["label"].tolist() == ["best", "uniform"]
    assert frame["kl"].tolist() == [0.35, 0.55]


def test_routers_and_their_curves(filled):
    store, run_id, _, router_id = filled
    frame = queries.routers(store, run_id)
    row = frame.iloc[0]
    assert (row["id"], row["label"], row["checkpoint"]) == (router_id, "trial-0", "/ckpt/router.pt")
    assert (row["lambda_guide"], row["lambda_sparse"], row["lambda_distill"]) == (1, 0.5, 2)
    assert (row["heldout_kl"], row["heldout_top1"], row["train_s"]) == (0.2, 0.95, 12.5)
    assert row["checkpoint_sha256"] == "ab" * 32 and row["config"] == {"steps": 20}
    curves = queries.training_curves(store, run_id)
    assert curves["series"].tolist() == ["guide"] * 3 + ["loss"] * 3
    assert curves["step"].tolist() == [0, 10, 20] * 2
    assert curves["value"].tolist() == CURVES["guide"] + CURVES["loss"]
    assert set(curves["router_id"]) == {router_id}
    assert queries.routers(store, run_id + 1000).empty


def test_eval_results_with_retention(filled):
    store, run_id, _, router_id = filled
    frame = queries.eval_results(store, run_id)
    assert frame["task"].tolist() == ["arc_easy", "toy"]
    assert frame["retention"].iloc[0] == pytest.approx(0.95)
    assert math.isnan(frame["retention"].iloc[1])
    assert frame["samples"].tolist()[0] == 100 and pd.isna(frame["samples"].iloc[1])
    assert frame["router_id"].tolist() == [router_id, router_id]
    first = frame.iloc[0]
    assert (first["ci_low"], first["ci_high"]) == (0.9, 1.01)
    assert (first["realized_sparsity"], first["flop_saving"]) == (0.3, 0.33)
    assert frame.iloc[1][["ci_low", "ci_high", "flop_saving"]].isna().all()  # NaN stored NULL


def test_benchmark_rows_expand_their_fields(filled):
    store, run_id, _, _ = filled
    routing = queries.benchmark_rows(store, "routing")
    assert routing["seq_len"].tolist() == [512, 1024]
    assert routing["speedup"].tolist() == [1.3, 1.5]
    assert pd.isna(routing["scope"].iloc[0]) and routing["scope"].iloc[1] == "blocks"
    assert routing["run_id"].isna().all() and set(routing["code_version"]) == {"0.1.0"}
    everything = queries.benchmark_rows(store)
    assert everything["kind"].tolist() == ["routing", "routing", "search"]
    assert everything["run_id"].tolist()[2] == run_id


ALL_QUERIES = {
    "runs": lambda store: queries.runs(store),
    "generation_stages": lambda store: queries.generation_stages(store, 1),
    "best_per_generation": lambda store: queries.best_per_generation(store, 1),
    "evaluations": lambda store: queries.evaluations(store, 1),
    "heldout_results": lambda store: queries.heldout_results(store, 1),
    "routers": lambda store: queries.routers(store),
    "training_curves": lambda store: queries.training_curves(store),
    "eval_results": lambda store: queries.eval_results(store),
}


@pytest.mark.parametrize("name", ALL_QUERIES)
def test_empty_results_have_the_same_columns_and_dtypes(db_url, tmp_path, name):
    query = ALL_QUERIES[name]
    empty = query(Store(db_url))
    full_store = Store(f"sqlite:///{tmp_path / 'full.db'}")
    run = full_store.create_run("r", {}, 0)
    full_store.record_generation(run.id, 0, [scored(0.1, [0.1])], 0.1, [0.1])
    full_store.add_heldout(run.id, "best", scored(0.1, [0.1]))
    full_store.add_router(
        run.id,
        "r",
        [0.1],
        {"guide": 1, "sparse": 1, "distill": 1},
        "c",
        "0" * 64,
        {"loss": [1.0]},
        {},
    )
    full_store.add_eval_results(
        run.id, "best", "static", [{"task": "t", "metric": "acc", "dense": 1, "routed": 1}]
    )
    full = query(full_store)
    assert empty.empty and not full.empty
    assert list(empty.columns) == list(full.columns)
    assert empty.dtypes.to_dict() == full.dtypes.to_dict()


def test_dtypes_agree_across_backends(sqlite_url, postgresql_url):
    frames = {}
    for url in (sqlite_url, postgresql_url):
        store = Store(url)
        run = store.create_run("r", {}, 0, plan=RunPlan(target_sparsity=0.3))
        store.record_generation(run.id, 0, [scored(0.1, [0.1]), scored(0.2, [0.2])], 0.1, [0.1])
        store.add_eval_results(
            run.id, "best", "static", [{"task": "t", "metric": "acc", "dense": 1, "routed": 1}]
        )
        store.add_benchmark_rows("routing", [{"speedup": 1.2}])
        frames[url] = {
            name: query(store).dtypes.astype(str).to_dict()
            for name, query in {
                **ALL_QUERIES,
                "benchmark_rows": lambda s: queries.benchmark_rows(s),
            }.items()
        }
    sqlite, postgresql = frames.values()
    assert sqlite == postgresql
