"""Where a worker puts its model: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

A device spec is checked twice. :func:`check_device_spec` checks its form (cheap, no torch,
used by the run config); :func:`check_device_available` checks, before any work starts,
that this machine can honour it. :func:`resolve_device` turns a spec into a
``torch.device`` where the model is loaded, i.e. in the worker: ``auto`` means CUDA if the
worker sees a CUDA device, else the CPU. A Ray actor sees only the GPUs it reserved, so
there ``cuda:N`` indexes its own reservation.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_SPECS = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A device spec that is malformed or that this machine cannot honour (one line)."""


def check_device_spec(spec: str) -> None:
    """Raise :class:`DeviceError` unless ``spec`` has the form auto, cpu, cuda or cuda:N."""
    if not _SPEC.fullmatch(spec):
        raise DeviceError(f"unknown device {spec!r}; choose {DEVICE_SPECS}")


def _index(spec: str) -> int:
    return int(spec.partition(":")[2] or 0)


def check_device_available(
    spec: str, gpus_per_worker: float | None = None, remote: bool = False
) -> None:
    """Raise :class:`DeviceError` unless the workers can put a model on ``spec``.

    ``gpus_per_worker=None``: the worker is this process, which must see the CUDA device.
    A number: the workers are Ray actors holding that many GPUs each; a ``cuda`` spec then
    needs a reservation that covers its index, and unless the workers are ``remote`` (on a
    cluster this process cannot inspect) this machine must have the GPUs Ray will hand out.
    """
    check_device_spec(spec)
    cuda = spec.startswith("cuda")
    if gpus_per_worker is not None and cuda and _index(spec) >= math.ceil(gpus_per_worker):
        raise DeviceError(
            f"device {spec}: each Ray worker sees only the GPUs it reserves, "
            f"and gpus_per_worker is {gpus_per_worker:g} (raise it; fractions "
            "share a GPU)"
        )
    wants_gpu = cuda if gpus_per_worker is None else gpus_per_worker > 0
    if not wants_gpu or remote:
        return
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    asked = f"device {spec}" if gpus_per_worker is None else f"gpus_per_worker {gpus_per_worker:g}"
    if visible == 0:
        raise DeviceError(f"{asked}: this machine has no CUDA device")
    if gpus_per_worker is None and _index(spec) >= visible:
        raise DeviceError(f"{asked}: this machine has {visible} CUDA device(s)")


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` for ``spec`` in this process; ``auto`` picks CUDA if available.

    Any torch device string is accepted here (``meta`` included, for tests); the run config
    admits only the forms of :func:`check_device_spec`.
    """
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
