"""Who may drive a run: the lease a coordinator holds on it, and how its owner is named.

A lease is an owner id and an expiry time kept on the run's row (see
:meth:`storage.store.Store.acquire_lease`). An owner id names one coordinator process:
``host/pid/machine/nonce``, where ``machine`` fingerprints the kernel boot and the PID
namespace, so two containers that share a host name never mistake each other's processes,
and ``nonce`` makes every acquisition distinct even when a PID is reused.

Guarantees: :func:`owner_gone` is True only for an owner on this machine (same host name,
boot and PID namespace) whose process no longer exists or is a zombie; an owner anywhere
else is never declared gone, so its lease holds until it expires. :func:`refuse_held` and
:func:`refuse_lost` are the one statement of when a lease may be taken and when a write
given a lease may land; every store applies them to its own copy of the run.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from storage.engine import StorageError

LEASE_ENV = "FTPRUNE_LEASE_S"
DEFAULT_LEASE_S = 60.0


class LeaseHeld(StorageError):
    """Another live coordinator holds the run's lease."""


class LeaseLost(StorageError):
    """The run's lease is no longer this coordinator's (it expired and was taken over)."""


@dataclass(frozen=True)
class Lease:
    """A claim on a run by ``owner`` for ``duration_s`` seconds from each renewal."""

    owner: str
    duration_s: float

    def expiry(self, now: datetime) -> datetime:
        """When the lease lapses if renewed at ``now``."""
        return now + timedelta(seconds=self.duration_s)


def refuse_held(
    run: str, holder: str | None, until: datetime | None, lease: Lease, now: datetime
) -> None:
    """Raise :class:`LeaseHeld` (one line: who, until when) if the run ``run``'s lease,
    held by ``holder`` until ``until``, keeps ``lease`` from taking it at ``now``: another
    owner's unexpired lease, unless that owner is a process of this machine known to have
    exited (:func:`owner_gone`). One's own lease may always be taken again (renewed)."""
    if holder is None or holder == lease.owner or until is None or until <= now:
        return
    if owner_gone(holder):
        return
    raise LeaseHeld(
        f"run {run!r} is driven by another coordinator ({describe_owner(holder)}) whose "
        f"lease runs until {until:%Y-%m-%d %H:%M:%S} UTC ({(until - now).total_seconds():.0f} "
        "s from now): let it finish, or resume the run once the lease has expired"
    )


def refuse_lost(run: str, holder: str | None, lease: Lease) -> None:
    """Raise :class:`LeaseLost` unless the run ``run``'s lease, held by ``holder``, is
    ``lease.owner``'s: a write fenced by ``lease`` lands only then."""
    if holder != lease.owner:
        who = describe_owner(holder) if holder else "no coordinator"
        raise LeaseLost(
            f"run {run!r} is no longer driven by this coordinator ({who} holds its "
            "lease now): stopping without writing"
        )


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
