"""Shared fixtures. Tiny random models (built in memory, seeded) keep unit tests fast; the
embedded pretrained model is only used by tests marked ``model``."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("llama", "qwen2", "mistral")


@pytest.fixture(scope="session")
def tiny_models():
    """One tiny random model per supported family, loaded once: {family: (model, tokenizer)}."""
    from router import load_model

    return {family: load_model(f"random:{family}-tiny") for family in FAMILIES}


@pytest.fixture
def tiny_llama(tiny_models):
    from router import unroute

    model, tokenizer = tiny_models["llama"]
    unroute(model)
    yield model, tokenizer
    unroute(model)


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'ftprune.db'}"
