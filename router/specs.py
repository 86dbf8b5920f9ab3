"""Router specs and checkpoint metadata, in plain Python (no torch): what checks before any
model loads need to know about routers.

A router *spec* names the router that scores a schedule: a fixed router by name
(:data:`FIXED_ROUTERS`) or ``dynamic:<checkpoint dir>``, a trained router of any checkpoint
kind (:data:`TRAINED_KINDS`). :mod:`router.registry` builds the routers these names stand
for (a test keeps the two lists equal); :mod:`router.checkpoint` saves and loads them.
Every problem raises a one-line :class:`RouterSpecError` or :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHECKPOINT_SPEC = "dynamic"  # the spec prefix of a trained router: dynamic:<checkpoint dir>
FIXED_ROUTERS = ("static", "random")
TRAINED_KINDS = ("dynamic", "hidden_state")
ROUTER_SPECS = (*FIXED_ROUTERS, f"{CHECKPOINT_SPEC}:<checkpoint dir>")
DECODE_POLICIES = ("all", "threshold")
WEIGHTS = "router.safetensors"
META = "router.json"
FORMAT = 1


class RouterSpecError(ValueError):
    """A router spec or kind that names nothing usable; the message is one line."""


class CheckpointError(ValueError):
    """A router checkpoint that cannot be used; the message is one line for the user."""


def checkpoint_spec(directory: object) -> str:
    """The spec of the trained router saved in ``directory`` (the inverse of
    :func:`checkpoint_dir`)."""
    return f"{CHECKPOINT_SPEC}:{directory}"


def checkpoint_dir(spec: str) -> str | None:
    """The checkpoint directory a spec names; None for a fixed router. Raises
    :class:`RouterSpecError` for a spec that is neither."""
    if spec in FIXED_ROUTERS:
        return None
    prefix, _, directory = spec.partition(":")
    if prefix == CHECKPOINT_SPEC and directory:
        return directory
    raise RouterSpecError(f"unknown router {spec!r}; choose one of {', '.join(ROUTER_SPECS)}")


def router_kind(spec: str) -> str:
    """What the database records for a spec: the fixed router's name, or ``dynamic`` for any
    checkpoint (its path lives in the run's config)."""
    return spec if checkpoint_dir(spec) is None else CHECKPOINT_SPEC


def check_router_spec(spec: str) -> None:
    """Raise :class:`RouterSpecError` unless ``spec`` names a fixed router or a directory
    holding a readable router checkpoint. Reads no weights."""
    directory = checkpoint_dir(spec)
    if directory is not None:
        try:
            read_meta(directory)
        except CheckpointError as error:
            raise RouterSpecError(str(error)) from None


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The checked metadata of a checkpoint directory (reads no weights)."""
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"not a router checkpoint (no {META}): {directory}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
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
    if meta["kind"] not in TRAINED_KINDS:
        raise CheckpointError(
            f"{path}: unknown router kind {meta['kind']!r}; kinds: {', '.join(TRAINED_KINDS)}"
        )
    if meta["decode"] not in DECODE_POLICIES:
        raise CheckpointError(f"{path}: unknown decode policy {meta['decode']!r}")
    return meta


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 (hex) of a checkpoint directory's weights file, for recording and verifying
    that the weights on disk are the ones that were measured."""
    return hashlib.sha256((Path(directory) / WEIGHTS).read_bytes()).hexdigest()


def weights_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header alone (8 bytes of
    little-endian length, then JSON); CheckpointError for a file that has none."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= min(path.stat().st_size - 8, 100_000_000):
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(size))
        return {
            name: tuple(int(d) for d in entry["shape"])
            for name, entry in header.items()
            if name != "__metadata__"
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None
