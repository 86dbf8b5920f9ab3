"""What the dashboard shows, as pandas DataFrames: :mod:`storage.queries` results reshaped with
pandas (no SQL here), plus the Optuna studies that share the database.

Guarantees:

- Every function only reads: it takes a store from :func:`storage.open_reader` and never
  writes, whatever the data (Optuna's studies are read through that store's read-only
  connections, and only where Optuna's tables already exist).
- A function's columns do not depend on the data: an empty database, a run with no
  generation yet, a running search and a failed run give frames with the same columns as a
  finished run (empty where there is nothing to show).
- Rows come in a stable order, stated per function.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import pandas as pd

from storage import Store, queries

RUN_COLUMNS = [
    "id",
    "name",
    "status",
    "model",
    "target_sparsity",
    "best_fitness",
    "generations_done",
    "generations_planned",
    "evaluations",
    "wall_s",
    "seed_run",
    "created_at",
    "error",
]
STAGE_COLUMNS = [
    "generation",
    "stage",
    "fidelity",
    "evaluations",
    "best_fitness",
    "median_fitness",
    "best_so_far",
    "forward_tokens",
]
ALLOCATION_COLUMNS = ["allocation", "block", "sparsity"]
ROUTER_COLUMNS = [
    "label",
    "lambda_guide",
    "lambda_sparse",
    "lambda_distill",
    "heldout_kl",
    "heldout_top1",
    "heldout_ppl",
    "realized_sparsity",
    "train_s",
    "checkpoint",
    "created_at",
]
TRIAL_SYSTEM_COLUMNS = ["study", "number", "state", "pareto"]


def run_table(store: Store) -> pd.DataFrame:
    """One row per run, newest first (:data:`RUN_COLUMNS`): ``seed_run`` names the run a
    fine-tuning search started from (NA otherwise), ``wall_s`` runs to the last update while
    the run is still running, ``error`` is set on failed runs."""
    frame = queries.runs(store)
    seed_run = pd.array([config.get("seed_run") for config in frame["config"]], dtype="str")
    return frame.assign(seed_run=seed_run)[RUN_COLUMNS].reset_index(drop=True)


def filter_runs(
    frame: pd.DataFrame,
    statuses: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    sparsity: tuple[float, float] | None = None,
    name: str = "",
) -> pd.DataFrame:
    """The rows of a :func:`run_table` frame that match every filter given: status and model
    among those listed (None: any), target sparsity within ``sparsity`` (inclusive; runs
    without one are kept only when no range is given) and ``name`` as a case-insensitive
    substring. Order is kept."""
    keep = pd.Series(True, index=frame.index)
    if statuses is not None:
        keep &= frame["status"].isin(list(statuses))
    if models is not None:
        keep &= frame["model"].isin(list(models))
    if sparsity is not None:
        low, high = sparsity
        keep &= frame["target_sparsity"].between(low, high).fillna(False).astype(bool)
    if name:
        keep &= frame["name"].str.contains(name, case=False, regex=False)
    return frame[keep]


def convergence(store: Store, run_id: int) -> pd.DataFrame:
    """Per generation and selection stage, in the order they ran (:data:`STAGE_COLUMNS`): the
    stage's best and median fitness, the run's best so far after the generation, and the
    forward tokens the run had spent by the end of the stage (cumulative; NA once a stage
    lacks the count, on rows recorded before it was kept)."""
    stages = queries.generation_stages(store, run_id)
    evaluations = queries.evaluations(store, run_id)
    grouped = evaluations.groupby(["generation", "stage"], dropna=False)
    per_stage = pd.DataFrame(
        {
            "median_fitness": grouped["fitness"].median(),
            "tokens": grouped["forward_tokens"].sum(min_count=1),
        }
    ).reset_index()
    per_stage["generation"] = per_stage["generation"].astype("int64")
    per_stage["stage"] = per_stage["stage"].astype("Int64")
    stages = stages.assign(stage=stages["stage"].astype("Int64"))
    frame = stages.merge(per_stage, on=["generation", "stage"], how="left")
    tokens = frame["tokens"].astype("Float64")
    cumulative = tokens.cumsum().where(tokens.notna().cummin(), pd.NA)
    frame["forward_tokens"] = cumulative.astype("Float64")
    frame["median_fitness"] = frame["median_fitness"].astype("float64")
    return frame[STAGE_COLUMNS]


def schedule_matrix(store: Store, run_id: int, so_far: bool = True) -> pd.DataFrame:
    """One schedule per generation as a matrix: one row per generation (ascending, the
    index), one column per block (0, 1, ...).

    ``so_far``: the run's best schedule after the generation, the incumbent (the lowest
    fitness among every evaluation up to it at the run's highest fidelity, which the final
    selection stage scores; the incumbent itself is not scored again, so a generation's own
    evaluations may not hold it). Otherwise the best schedule scored in the generation
    itself, at its highest fidelity."""
    best = queries.best_per_generation(store, run_id)
    generations = best["generation"].tolist()
    rows = [list(schedule) for schedule in best["schedule"]]
    if so_far and rows:
        scored = queries.evaluations(store, run_id)
        top = (
            scored[scored["fidelity"] == scored["fidelity"].max()]
            if scored["fidelity"].notna().any()
            else scored
        )
        for index, generation in enumerate(generations):
            upto = top[top["generation"] <= generation]
            if not upto.empty:
                rows[index] = list(upto.loc[upto["fitness"].idxmin(), "schedule"])
    width = max((len(row) for row in rows), default=0)
    return pd.DataFrame(
        rows,
        index=pd.Index(generations, name="generation"),
        columns=pd.RangeIndex(width, name="block"),
        dtype="float64",
    )


def allocations(store: Store, run_id: int) -> pd.DataFrame:
    """Per-block sparsity of the run's allocations in long form (:data:`ALLOCATION_COLUMNS`),
    blocks ascending within each: ``searched`` (the run's best schedule so far), ``uniform``
    (the target at every block), ``block_influence`` (the Block-Influence allocation the search
    seeded, when it had one) and each further schedule the run evaluated on held-out text
    (e.g. ``finetuned-1``) that differs from both. Empty until the run has a best
    schedule."""
    run = run_table_row(store, run_id)
    best = run.get("best_schedule")
    if not isinstance(best, list) or not best:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(ALLOCATION_COLUMNS, ("str", "int64", "float64"), strict=True)
            }
        )
    named: dict[str, list[float]] = {"searched": list(best)}
    target = run.get("target_sparsity")
    if target is not None and not pd.isna(target):
        named["uniform"] = [float(target)] * len(best)
    # The search state (search.ga's JSON) keeps the Block-Influence allocation it seeded.
    influence = (store.search_state(run_id) or {}).get("influence_schedule")
    if influence and len(influence) == len(best) and influence not in named.values():
        named["block_influence"] = [float(s) for s in influence]
    for label, schedule in queries.heldout_results(store, run_id)[["label", "schedule"]].itertuples(
        index=False
    ):
        if list(schedule) not in named.values() and len(schedule) == len(best):
            named[label] = list(schedule)
    records = [
        (label, block, float(value))
        for label, schedule in named.items()
        for block, value in enumerate(schedule)
    ]
    return pd.DataFrame(records, columns=ALLOCATION_COLUMNS).astype(
        {"allocation": "str", "block": "int64", "sparsity": "float64"}
    )


def run_table_row(store: Store, run_id: int) -> dict[str, Any]:
    """Everything :func:`storage.queries.runs` holds about one run (KeyError if absent)."""
    frame = queries.runs(store)
    match = frame[frame["id"] == run_id]
    if match.empty:
        raise KeyError(run_id)
    return match.iloc[0].to_dict()


def population(store: Store, run_id: int) -> pd.DataFrame:
    """Every evaluation of the run in the order recorded (the columns of
    :func:`storage.queries.evaluations`) plus ``mean_sparsity``, the schedule's mean."""
    frame = queries.evaluations(store, run_id)
    means = [sum(s) / len(s) if len(s) else math.nan for s in frame["schedule"]]
    return frame.assign(mean_sparsity=pd.array(means, dtype="float64"))


def compare_runs(store: Store, run_ids: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For overlaying runs, in the order of ``run_ids``: (best schedules in long form: run,
    block, sparsity; the last stage of each generation: run, generation, forward_tokens,
    best_so_far). Runs without a best schedule or a generation contribute no rows."""
    runs = queries.runs(store)
    names = dict(zip(runs["id"], runs["name"], strict=True))
    schedules, curves = [], []
    for run_id in run_ids:
        searched = allocations(store, run_id)
        searched = searched[searched["allocation"] == "searched"]
        schedules.append(
            searched.assign(run=names.get(run_id, str(run_id)))[["run", "block", "sparsity"]]
        )
        stages = convergence(store, run_id)
        last = stages.groupby("generation", as_index=False).tail(1)
        curves.append(
            last.assign(run=names.get(run_id, str(run_id)))[
                ["run", "generation", "forward_tokens", "best_so_far"]
            ]
        )
    empty_schedule = pd.DataFrame(
        {
            "run": pd.Series(dtype="str"),
            "block": pd.Series(dtype="int64"),
            "sparsity": pd.Series(dtype="float64"),
        }
    )
    empty_curve = pd.DataFrame(
        {
            "run": pd.Series(dtype="str"),
            "generation": pd.Series(dtype="int64"),
            "forward_tokens": pd.Series(dtype="Float64"),
            "best_so_far": pd.Series(dtype="float64"),
        }
    )
    return (
        pd.concat([empty_schedule, *schedules], ignore_index=True),
        pd.concat([empty_curve, *curves], ignore_index=True),
    )


def routers_table(store: Store, run_id: int) -> pd.DataFrame:
    """The run's trained routers in the order recorded: label, loss weights, held-out window
    metrics, realized sparsity, training time and checkpoint."""
    return queries.routers(store, run_id)[ROUTER_COLUMNS]


def router_curves(store: Store, run_id: int) -> pd.DataFrame:
    """The training curves of the run's routers (:func:`storage.queries.training_curves`, long
    form) without ``lambda_*`` schedule series: one series per loss term and the total."""
    curves = queries.training_curves(store, run_id)
    return curves[~curves["series"].str.startswith("lambda_")].reset_index(drop=True)


def benchmark_kinds(store: Store) -> dict[str, pd.DataFrame]:
    """Benchmark rows per kind (kinds in the order first recorded, rows oldest first; the
    frames of :func:`storage.queries.benchmark_rows`), each without the columns no row of
    its kind fills. Empty when there are none."""
    frame = queries.benchmark_rows(store)
    return {
        str(kind): rows.dropna(axis=1, how="all").reset_index(drop=True)
        for kind, rows in frame.groupby("kind", sort=False)
    }


def optuna_studies(store: Store) -> pd.DataFrame:
    """The Optuna studies in the store's database, oldest first: study, directions, trials,
    best value (of single-objective studies) and start time (Optuna's, naive local time).
    Empty when Optuna's tables are
    absent (nothing is created)."""
    columns = {
        "study": "str",
        "directions": "str",
        "trials": "int64",
        "best_value": "float64",
        "started": "datetime64[us]",
    }
    storage = _optuna_storage(store)
    records = []
    if storage is not None:
        import optuna

        for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
            best = summary.best_trial if len(summary.directions) == 1 else None
            records.append(
                (
                    summary.study_name,
                    ",".join(d.name.lower() for d in summary.directions),
                    summary.n_trials,
                    best.value if best is not None else math.nan,
                    summary.datetime_start,
                )
            )
    return pd.DataFrame(records, columns=list(columns)).astype(columns)


def optuna_trials(store: Store, study: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(one row per trial of ``study`` by number, objective names, parameter names). Each row
    has :data:`TRIAL_SYSTEM_COLUMNS` (``pareto``: on the study's best front — the best trial
    of a single-objective study), one column per objective (``value`` or ``value_<i>``) and
    one per sampled parameter. KeyError if the study is absent."""
    import optuna

    storage = _optuna_storage(store)
    if storage is None:
        raise KeyError(study)
    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        raise KeyError(study) from None
    multi = len(loaded.directions) > 1
    objectives = [f"value_{i}" for i in range(len(loaded.directions))] if multi else ["value"]
    trials = loaded.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = (
        {t.number for t in loaded.best_trials}
        if multi
        else ({loaded.best_trial.number} if done else set())
    )
    params = sorted({name for t in trials for name in t.params})
    records = []
    for t in trials:
        values = list(t.values) if t.values is not None else [math.nan] * len(objectives)
        records.append(
            [
                study,
                t.number,
                t.state.name.lower(),
                t.number in front,
                *values,
                *(t.params.get(name, math.nan) for name in params),
            ]
        )
    frame = pd.DataFrame(records, columns=TRIAL_SYSTEM_COLUMNS + objectives + params)
    frame = frame.astype(
        {
            "study": "str",
            "number": "int64",
            "state": "str",
            "pareto": "bool",
            **{name: "float64" for name in objectives},
        }
    )
    return frame, objectives, params


def _optuna_storage(store: Store) -> Any:
    """Optuna's storage over ``store``'s own read-only connection pool, or None when the
    database holds no Optuna tables. Sharing the pool means every statement Optuna issues
    runs on a connection that cannot write (see :func:`storage.open_reader`)."""
    from sqlalchemy import inspect

    if not {"studies", "trials", "version_info"} <= set(inspect(store.engine).get_table_names()):
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = store.engine.url.render_as_string(hide_password=False)
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"pool": store.engine.pool}, skip_table_creation=True
    )
