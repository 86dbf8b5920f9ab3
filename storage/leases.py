"""Who may drive a run: the lease a coordinator holds on it, and how its owner is named.

A lease is an owner id and an expiry time kept on the run's row (see
:meth:`storage.store.Store.acquire_lease`). An owner id names one coordinator process:
``host/pid/machine/nonce``, where ``machine`` fingerprints the kernel boot and the PID
namespace, so two containers that share a host name never mistake each other's processes,
and ``nonce`` makes every acquisition distinct even when a PID is reused.

Guarantees: :func:`owner_gone` is True only for an owner on this machine (same host name,
boot and PID namespace) whose process no longer exists or is a zombie; an owner anywhere
else is never declared gone, so its lease holds until it expires.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from storage.engine import StorageError

LEASE_ENV = "FTPRUNE_LEASE_S"
DEFAULT_LEASE_S = 60.0


@dataclass(frozen=True)
class Lease:
    """A claim on a run by ``owner`` for ``duration_s`` seconds from each renewal."""

    owner: str
    duration_s: float


def machine_key() -> str:
    """A short fingerprint of this kernel boot and PID namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return hashlib.sha256(f"{boot}|{namespace}".encode()).hexdigest()[:12]


def new_owner() -> str:
    """A fresh owner id for this process (see the module docstring)."""
    return f"{socket.gethostname()}/{os.getpid()}/{machine_key()}/{uuid.uuid4().hex[:8]}"


def describe_owner(owner: str) -> str:
    """``host pid N`` for messages."""
    host, pid, *_ = owner.split("/") + ["?"]
    return f"{host} pid {pid}"


def owner_gone(owner: str) -> bool:
    """Whether ``owner`` is a process of this machine that has exited (see the module
    docstring); False whenever that cannot be known."""
    parts = owner.split("/")
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    host, pid, machine, _ = parts
    if host != socket.gethostname() or machine != machine_key():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def lease_seconds() -> float:
    """How long a coordinator's lease lasts: ``$FTPRUNE_LEASE_S``, else 60 seconds."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0.0 < seconds < float("inf"):
        raise StorageError(f"{LEASE_ENV} must be a positive number of seconds, got {text!r}")
    return seconds
