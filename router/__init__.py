"""The routed model: token-wise pruning of decoder blocks, usable on its own.

>>> from router import load_model, route
>>> model, tokenizer = load_model("smollm2-135m")
>>> routing = route(model, [0.3] * 30)          # static position-priority router
>>> logits = model(input_ids).logits
>>> routing.last_state.realized_sparsity, routing.last_state.flop_saving
>>> model.generate(input_ids, max_new_tokens=20)  # per-layer KV cache of the kept tokens
>>> route(model, schedule, make_router("dynamic:out/router"))  # any spec of router.registry

This package knows nothing of search, Ray or SQL. The names below load their module on
first use, so checking a model spec (``router.loading``) never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "DECODE_POLICIES": "engine",
    "Routing": "engine",
    "decoder_layers": "engine",
    "keep_count": "engine",
    "route": "engine",
    "routing_of": "engine",
    "unroute": "engine",
    "SMOLLM2_ALIAS": "loading",
    "ModelSpecError": "loading",
    "check_model_spec": "loading",
    "load_model": "loading",
    "ROUTER_SPECS": "registry",
    "RouterSpecError": "registry",
    "check_router_spec": "registry",
    "make_router": "checkpoint",
    "router_kind": "registry",
    "RandomRouter": "routers",
    "StaticRouter": "routers",
    "TokenRouter": "routers",
    "FlopModel": "state",
    "ForwardState": "state",
}
__all__ = sorted(_HOMES)

if TYPE_CHECKING:
    from router.checkpoint import make_router
    from router.engine import (
        DECODE_POLICIES,
        Routing,
        decoder_layers,
        keep_count,
        route,
        routing_of,
        unroute,
    )
    from router.loading import SMOLLM2_ALIAS, ModelSpecError, check_model_spec, load_model
    from router.registry import (
        ROUTER_SPECS,
        RouterSpecError,
        check_router_spec,
        router_kind,
    )
    from router.routers import RandomRouter, StaticRouter, TokenRouter
    from router.state import FlopModel, ForwardState


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    return getattr(importlib.import_module(f"router.{home}"), name)
