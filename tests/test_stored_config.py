"""Stored run configs: what a run records (a versioned config), and the one way a stored
config is rebuilt (older versions migrated, newer or invalid ones refused in one line),
down to resuming a run stored in the old shape to the uninterrupted result."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftprune.cli import app
from search.config import ConfigError, build_config
from search.coordinator import launch, run_search
from search.settings import scorer_settings
from search.stored import CONFIG_VERSION, load_config, stored_config
from storage import Store
from workers.pool import LocalPool

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
runner = CliRunner()


def test_a_stored_config_records_its_version_and_reads_back_equal():
    config = build_config(TINY, run_name="versioned")
    stored = stored_config(config)
    assert stored["config_version"] == CONFIG_VERSION == 2
    assert load_config(stored, "run 'versioned'") == config


def test_a_version_1_config_is_migrated():
    old = build_config(TINY).model_dump()  # what runs stored before versions were recorded
    assert "config_version" not in old
    assert load_config(old, "run 'old'") == build_config(TINY)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"config_version": 3}, "run 'r' was stored by a newer ftprune .*upgrade ftprune"),
        ({"config_version": "two"}, "run 'r': stored config has no valid config_version"),
        ({"generations": 10**12}, r"run 'r': its stored config \(version 1\) cannot be used: "),
        ({"population": 16}, "population: Extra inputs are not permitted"),
    ],
    ids=["newer", "malformed-version", "out-of-bounds", "unknown-field"],
)
def test_a_config_that_cannot_be_used_is_refused_in_one_line(change, message):
    data = {**build_config(TINY).model_dump(), **change}
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(data, "run 'r'")
    assert "\n" not in str(refused.value)


def _rows(store: Store, run_id: int) -> list[tuple]:
    return sorted(
        (r.generation, r.stage, tuple(r.schedule), r.fitness) for r in store.evaluations(run_id)
    )


def test_a_run_stored_in_the_old_shape_resumes_to_the_uninterrupted_result(tmp_path):
    """A run whose config was stored before versions were recorded (version 1: the plain
    field dump) and that stopped after one generation: ``search resume`` rebuilds its
    config through the migration and ends exactly where an uninterrupted run ends."""
    config = build_config(TINY, run_name="old-shape")
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    run = store.create_run(config.run_name, config.model_dump(), config.seed)
    assert "config_version" not in store.find_run(run.id).config
    with LocalPool(scorer_settings(config)) as pool:
        run_search(config.model_copy(update={"generations": 1}), store, pool, run.id, False)
    assert store.run_status(run.id)["generations"] == 1
    result = runner.invoke(app, ["search", "resume", "old-shape", "--db", url, "--quiet"])
    assert result.exit_code == 0, result.output

    reference = Store(f"sqlite:///{tmp_path / 'reference.db'}")
    expected = launch(config.model_copy(update={"run_name": "reference"}), reference, False)
    resumed = store.find_run(run.id)
    assert resumed.status == "finished"
    assert resumed.best_schedule == expected.search.best_schedule
    assert resumed.best_fitness == expected.search.best_fitness
    assert _rows(store, run.id) == _rows(reference, expected.run_id)
    assert [(h.label, h.kl) for h in store.heldout(run.id)] == [
        (h.label, h.kl) for h in reference.heldout(expected.run_id)
    ]
