"""Shared fixtures. Tiny random models (built in memory, seeded) keep unit tests fast; the
embedded pretrained model is only used by tests marked ``model``. Tests that run Ray pools
in this process share one local Ray instance (``ray_instance``)."""

from __future__ import annotations

import os
import sys
from typing import Iterator

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


_SHARED_RAY: dict[str, list[str]] = {}  # the environment variables its start set


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """One local Ray instance for the session's in-process pools: started the first time a
    test asks for it, the way a pool starts its own (:func:`workers.pool._start_ray`:
    loopback only, a private token), and shut down when the session ends. A pool that
    finds Ray running uses it and leaves it running, so a test pays for its pool's
    workers, not for starting and stopping Ray."""
    import ray

    from workers.pool import _start_ray

    if not ray.is_initialized():
        _SHARED_RAY["env"] = _start_ray(None)
    yield
    _stop_shared_ray()


@pytest.fixture
def no_ray_instance() -> None:
    """No Ray instance in this process (the shared one, if running, is shut down): for a
    test of the instance a pool starts for itself."""
    _stop_shared_ray()


def _stop_shared_ray() -> None:
    if "ray" not in sys.modules:
        return
    import ray

    from workers.pool import _unset

    if ray.is_initialized():
        ray.shutdown()
    _unset(_SHARED_RAY.pop("env", []))
