"""Scoring: turns a model, data and a schedule into numbers, in process or on Ray actors.

The names below load their module on first use, so ``workers.heap`` (and ``--help``)
never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "BUILTIN_PYDOC": "data",
    "DataSpec": "data",
    "DataSpecError": "data",
    "build_sequences": "data",
    "check_source": "data",
    "DeviceError": "devices",
    "check_device_spec": "devices",
    "resolve_device": "devices",
    "EvaluationPool": "pool",
    "LocalPool": "pool",
    "RayPool": "pool",
    "make_pool": "pool",
    "Evaluation": "scoring",
    "Scorer": "scoring",
    "ScorerSettings": "settings",
    "WindowComparator": "scoring",
    "WindowMetrics": "scoring",
    "TrainRequest": "training",
    "TrainedRouterState": "training",
}
__all__ = sorted(_HOMES)

if TYPE_CHECKING:
    from workers.data import BUILTIN_PYDOC, DataSpec, DataSpecError, build_sequences, check_source
    from workers.devices import DeviceError, check_device_spec, resolve_device
    from workers.pool import EvaluationPool, LocalPool, RayPool, make_pool
    from workers.scoring import Evaluation, Scorer, WindowComparator, WindowMetrics
    from workers.settings import ScorerSettings
    from workers.training import TrainedRouterState, TrainRequest


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"workers.{home}"), name)
