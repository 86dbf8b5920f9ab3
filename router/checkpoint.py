"""Router checkpoints: weights in safetensors, everything else in a small JSON.

A checkpoint directory holds ``router.safetensors`` (the router's state dict) and
``router.json``: the router's checkpoint kind and shape (hidden units, nested selection and
the fields its :data:`router.registry.TRAINED` entry lists), the schedule, the decode
policy, the base model spec and dtype, and the library versions that wrote it.
Loading reads safetensors and JSON only (never pickle). Every problem with a checkpoint
(missing file, bad JSON, unknown kind, wrong tensor names or shapes, a schedule that does
not fit the model) raises :class:`CheckpointError` with a one-line message.

>>> save_router("out/router", router, schedule, model_spec="smollm2-135m")
>>> model, tokenizer, routing = load_routed("out/router")
>>> model.generate(input_ids, max_new_tokens=20)
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence, cast

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from router.engine import Routing, decoder_layers, route
from router.loading import ModelSpecError, load_model
from router.registry import (
    FIXED,
    TRAINED,
    LearnedRouter,
    kind_of,
    restore_router,
    router_fields,
)
from router.routers import TokenRouter
from router.specs import (
    FORMAT,
    META,
    WEIGHTS,
    CheckpointError,
    check_router_spec,
    checkpoint_dir,
    read_meta,
    weights_header,
    weights_sha256,
)

__all__ = [
    "META",
    "WEIGHTS",
    "CheckpointError",
    "check_checkpoint",
    "load_routed",
    "load_router",
    "read_meta",
    "save_router",
    "weights_sha256",
    "weights_header",
]


def save_router(
    directory: str | Path,
    router: nn.Module,
    schedule: Sequence[float],
    model_spec: str,
    dtype: str = "float32",
    decode: str = "all",
) -> Path:
    """Write ``router`` and its metadata into ``directory`` (created); returns it."""
    kind = kind_of(router)
    if kind is None:
        raise CheckpointError(
            f"cannot save a {type(router).__name__}; routers: "
            f"{', '.join(k.cls.__name__ for k in TRAINED.values())}"
        )
    meta: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "schedule": [float(s) for s in schedule],
        "decode": decode,
        "model": model_spec,
        "dtype": dtype,
        "versions": _versions(),
        **router_fields(cast(LearnedRouter, router)),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in router.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS))
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_router(directory: str | Path) -> tuple[LearnedRouter, dict[str, Any]]:
    """The router (eval mode, on the CPU) and the metadata of a checkpoint directory."""
    router, meta = _described_router(Path(directory))
    path = Path(directory) / WEIGHTS
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None
    _check_tensors(path, {name: tuple(t.shape) for name, t in tensors.items()}, router, meta)
    router.load_state_dict(tensors)
    return router.eval(), meta


def check_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint directory, after checking what :func:`load_router`
    would check (the description, and the weights file's tensor names and shapes, read
    from its safetensors header) without reading a weight; raises CheckpointError."""
    router, meta = _described_router(Path(directory))
    path = Path(directory) / WEIGHTS
    _check_tensors(path, weights_header(path), router, meta)
    return meta


def _described_router(directory: Path) -> tuple[LearnedRouter, dict[str, Any]]:
    """The untrained router the metadata describes, and the metadata."""
    meta = read_meta(directory)
    try:
        router = restore_router(meta["kind"], meta)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / META}: bad router description ({error})") from None
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"router checkpoint has no weights file: {directory / WEIGHTS}")
    return router, meta


def _check_tensors(
    path: Path, shapes: dict[str, tuple[int, ...]], router: nn.Module, meta: dict[str, Any]
) -> None:
    expected = {name: tuple(t.shape) for name, t in router.state_dict().items()}
    if set(shapes) != set(expected):
        raise CheckpointError(
            f"{path}: tensors {sorted(shapes)} do not match the "
            f"{meta['kind']} router's {sorted(expected)}"
        )
    for name, shape in shapes.items():
        if shape != expected[name]:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {shape}, the router needs {expected[name]}"
            )


def load_routed(directory: str | Path, device: str = "cpu") -> tuple[Any, Any, Routing]:
    """``(model, tokenizer, routing)``: the checkpoint's base model, routed with its router
    and schedule; works with ``model(input_ids)`` and ``generate()``."""
    router, meta = load_router(directory)
    try:
        model, tokenizer = load_model(meta["model"], meta["dtype"], device)
    except ModelSpecError as error:
        raise CheckpointError(f"{Path(directory) / META}: {error}") from None
    blocks = len(decoder_layers(model))
    if len(meta["schedule"]) != blocks:
        raise CheckpointError(
            f"{Path(directory) / META}: schedule has "
            f"{len(meta['schedule'])} entries but {meta['model']} has "
            f"{blocks} decoder blocks"
        )
    if meta.get("hidden_size", model.config.hidden_size) != model.config.hidden_size:
        raise CheckpointError(
            f"{Path(directory) / META}: router reads hidden size "
            f"{meta['hidden_size']}, {meta['model']} has "
            f"{model.config.hidden_size}"
        )
    router.to(device)
    try:
        routing = route(model, meta["schedule"], router, decode=meta["decode"])
    except ValueError as error:
        raise CheckpointError(f"{Path(directory) / META}: {error}") from None
    return model, tokenizer, routing


def make_router(spec: str) -> TokenRouter:
    """The router a spec names (:mod:`router.registry`): a fixed router, or a checkpoint
    loaded on the CPU, in eval mode."""
    check_router_spec(spec)
    directory = checkpoint_dir(spec)
    if directory is None:
        return FIXED[spec]()
    return load_router(directory)[0]


def _versions() -> dict[str, str]:
    found = {}
    for name in ("ftprune", "torch", "transformers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found
