"""Scoring: turns a model, data and a schedule into numbers, in process or on Ray actors."""

from workers.data import BUILTIN_PYDOC, DataSpec, DataSpecError, build_sequences, check_source
from workers.pool import EvaluationPool, LocalPool, RayPool, make_pool
from workers.scoring import Evaluation, Scorer, ScorerSettings, WindowComparator, WindowMetrics

__all__ = [
    "BUILTIN_PYDOC", "DataSpec", "DataSpecError", "Evaluation", "EvaluationPool", "LocalPool",
    "RayPool", "Scorer", "ScorerSettings", "WindowComparator", "WindowMetrics",
    "build_sequences", "check_source", "make_pool",
]
