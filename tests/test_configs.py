"""Every shipped config validates, and the demo config states the defaults exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.config import RunConfig, build_config

# devsuite*.yaml are evaluation suites, not run configs (tests/eval/test_devsuite.py).
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
    if not p.name.startswith("devsuite")
)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path):
    build_config(path)


def test_demo_config_equals_defaults():
    demo = yaml.safe_load((CONFIGS[0].parent / "demo.yaml").read_text())
    defaults = RunConfig().model_dump()
    demo.setdefault("run_name", None)
    assert demo == defaults


def test_router_training_settings_reach_the_training_library():
    """Each ``router_training`` field a run config sets is the TrainConfig it trains with
    (the key gate included: off unless the config asks for it)."""
    from search.config import build_config
    from search.settings import train_config

    assert train_config(build_config()).key_gate is False
    config = build_config(
        monotone=True,
        router_training={"key_gate": True, "nested": True, "init": "static", "steps": 7},
    )
    trained = train_config(config, show_progress=False)
    assert (trained.key_gate, trained.nested, trained.init, trained.steps) == (
        True,
        True,
        "static",
        7,
    )
