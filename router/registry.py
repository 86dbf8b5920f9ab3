"""The one registry of routers: the kinds that exist, the spec strings that name them, and
the checkpoint kinds of those that train.

A router *spec* names the router that scores a schedule: a fixed router by name
(``static``: FTP's position priority; ``random``: the seeded baseline) or
``dynamic:<checkpoint dir>``, a trained router of any checkpoint kind. A *checkpoint
kind* is a router that trains and lives in a :mod:`router.checkpoint` directory:
``dynamic`` (FTP's router over per-token factors) and ``hidden_state`` (the baseline over
the block's input hidden state).

Guarantees:

- Specs and kinds are listed here only: the scorer, router training, the run config and
  checkpoints ask this module, so adding a router means writing its class in its own
  module and adding one entry below.
- A trained kind's entry says how to make an untrained router for a model, which fields
  (besides ``hidden``, the MLP width, and ``nested``, its selection semantics, which every
  trained router has) describe its shape in a checkpoint, and how to rebuild it from them:
  :func:`router_fields` and :func:`restore_router` give back the same router.
- A spec or kind that names nothing raises :class:`RouterSpecError` with one line that
  lists the choices; :func:`check_router_spec` reads no weights.

The router a spec names is made by :func:`router.checkpoint.make_router` (a checkpoint
loads there; this module imports no checkpoint code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from router.dynamic import DynamicRouter, HiddenStateRouter
from router.routers import RandomRouter, StaticRouter, TokenRouter
from router.specs import CHECKPOINT_SPEC as CHECKPOINT_SPEC  # re-exported
from router.specs import ROUTER_SPECS as ROUTER_SPECS  # re-exported
from router.specs import RouterSpecError as RouterSpecError  # re-exported
from router.specs import check_router_spec as check_router_spec  # re-exported
from router.specs import checkpoint_dir as checkpoint_dir  # re-exported
from router.specs import checkpoint_spec as checkpoint_spec  # re-exported
from router.specs import router_kind as router_kind  # re-exported

LearnedRouter = DynamicRouter | HiddenStateRouter  # the classes of the TRAINED kinds


@dataclass(frozen=True)
class TrainedKind:
    """A router that trains and is saved as a checkpoint.

    ``new(model_hidden_size, factors)`` is an untrained router for a model (each kind
    reads what it needs); ``shape(router)`` the checkpoint fields that describe it beyond
    ``hidden`` and ``nested``; ``restore(fields)`` the router those fields (``hidden``
    included) describe, before :func:`restore_router` sets ``nested``.
    A ``hidden_size`` field is the model hidden size the router reads: a checkpoint
    holding one loads only onto a model of that size. ``learned_from`` is the first block
    whose scores the router learns (the blocks before it are routed by static priority).
    """

    cls: type[LearnedRouter]
    new: Callable[[int, Sequence[str]], LearnedRouter]
    shape: Callable[[Any], dict[str, Any]]
    restore: Callable[[dict[str, Any]], LearnedRouter]
    learned_from: int


FIXED: dict[str, Callable[[], TokenRouter]] = {
    "static": StaticRouter,
    "random": lambda: RandomRouter(seed=0),
}

TRAINED: dict[str, TrainedKind] = {
    "dynamic": TrainedKind(
        DynamicRouter,
        new=lambda _size, factors: DynamicRouter(factors),
        shape=lambda router: {"factors": list(router.factors)},
        restore=lambda fields: DynamicRouter(fields["factors"], fields["hidden"]),
        learned_from=1,
    ),
    "hidden_state": TrainedKind(
        HiddenStateRouter,
        new=lambda size, _factors: HiddenStateRouter(size),
        shape=lambda router: {"hidden_size": router.hidden_size},
        restore=lambda fields: HiddenStateRouter(fields["hidden_size"], fields["hidden"]),
        learned_from=0,
    ),
}


def trained_kind(name: str) -> TrainedKind:
    """The entry of a checkpoint kind; :class:`RouterSpecError` if there is none."""
    if name not in TRAINED:
        raise RouterSpecError(f"unknown router kind {name!r}; choose one of {', '.join(TRAINED)}")
    return TRAINED[name]


def kind_of(router: object) -> str | None:
    """The checkpoint kind of a router (exact class match); None if it is no trained kind."""
    return next((name for name, kind in TRAINED.items() if type(router) is kind.cls), None)


def new_router(
    kind: str, hidden_size: int, factors: Sequence[str], nested: bool = False
) -> LearnedRouter:
    """An untrained router of checkpoint kind ``kind`` for a model of ``hidden_size``
    (``factors``: the inputs of a ``dynamic`` router; other kinds ignore them) that routes
    with nested selection if ``nested``."""
    router = trained_kind(kind).new(hidden_size, factors)
    router.nested = nested
    return router


def router_fields(router: LearnedRouter) -> dict[str, Any]:
    """The fields that describe a trained router (its kind aside): ``hidden``, ``nested``
    and its kind's shape fields."""
    kind = kind_of(router)
    if kind is None:
        raise RouterSpecError(f"{type(router).__name__} is no trained router kind")
    return {"hidden": router.hidden, "nested": router.nested, **TRAINED[kind].shape(router)}


def restore_router(kind: str, fields: dict[str, Any]) -> LearnedRouter:
    """The untrained router of ``kind`` that :func:`router_fields` describe (a checkpoint
    without ``nested`` predates nested selection: False)."""
    router = trained_kind(kind).restore(fields)
    router.nested = bool(fields.get("nested", False))
    return router
