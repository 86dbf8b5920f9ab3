"""The routed model: token-wise pruning of decoder blocks, usable on its own.

>>> from router import load_model, route
>>> model, tokenizer = load_model("smollm2-135m")
>>> routing = route(model, [0.3] * 30)          # static position-priority router
>>> logits = model(input_ids).logits
>>> routing.last_state.realized_sparsity, routing.last_state.flop_saving
>>> model.generate(input_ids, max_new_tokens=20)  # per-layer KV cache of the kept tokens
>>> route(model, schedule, make_router("dynamic:out/router"))  # any spec of router.registry

This package knows nothing of search, Ray or SQL.
"""

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
    make_router,
    router_kind,
)
from router.routers import RandomRouter, StaticRouter, TokenRouter
from router.state import FlopModel, ForwardState

__all__ = [
    "DECODE_POLICIES",
    "FlopModel",
    "ForwardState",
    "ModelSpecError",
    "ROUTER_SPECS",
    "RandomRouter",
    "RouterSpecError",
    "Routing",
    "SMOLLM2_ALIAS",
    "StaticRouter",
    "TokenRouter",
    "check_model_spec",
    "check_router_spec",
    "decoder_layers",
    "keep_count",
    "load_model",
    "make_router",
    "route",
    "router_kind",
    "routing_of",
    "unroute",
]
