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

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence, cast

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from router.engine import DECODE_POLICIES, Routing, decoder_layers, route
from router.loading import ModelSpecError, load_model
from router.registry import TRAINED, LearnedRouter, kind_of, restore_router, router_fields

WEIGHTS = "router.safetensors"
META = "router.json"
FORMAT = 1


class CheckpointError(ValueError):
    """A router checkpoint that cannot be used; the message is one line for the user."""


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
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        router = restore_router(meta["kind"], meta)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / META}: bad router description ({error})") from None
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"router checkpoint has no weights file: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None
    expected = router.state_dict()
    if set(tensors) != set(expected):
        raise CheckpointError(
            f"{path}: tensors {sorted(tensors)} do not match the "
            f"{meta['kind']} router's {sorted(expected)}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the router needs {tuple(expected[name].shape)}"
            )
    router.load_state_dict(tensors)
    return router.eval(), meta


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


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 (hex) of a checkpoint directory's weights file, for recording and verifying
    that the weights on disk are the ones that were measured."""
    return hashlib.sha256((Path(directory) / WEIGHTS).read_bytes()).hexdigest()


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The checked metadata of a checkpoint directory (reads no weights)."""
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"not a router checkpoint (no {META}): {directory}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a format-{FORMAT} router checkpoint")
    required = {
        "kind": str,
        "hidden": int,
        "schedule": list,
        "decode": str,
        "model": str,
        "dtype": str,
    }
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    if meta["kind"] not in TRAINED:
        raise CheckpointError(
            f"{path}: unknown router kind {meta['kind']!r}; kinds: {', '.join(TRAINED)}"
        )
    if meta["decode"] not in DECODE_POLICIES:
        raise CheckpointError(f"{path}: unknown decode policy {meta['decode']!r}")
    return meta


def _versions() -> dict[str, str]:
    found = {}
    for name in ("ftprune", "torch", "transformers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found
