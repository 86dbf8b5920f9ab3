"""A Ray cluster whose hosts are Linux network namespaces, started with the README's recipe.

Three namespaces, ``<prefix>-head``, ``<prefix>-worker`` and ``<prefix>-submit``, each
with its own loopback interface and one address of the README's (``10.0.0.1`` the head,
``10.0.0.2`` the worker node, ``10.0.0.3`` the submitting machine). They exist only inside
the namespaces: the head's interface is a bridge, and each other host's ``eth0`` is one end
of a veth pair whose other end is a port of that bridge, so the hosts reach each other and
nothing else (no route leaves the namespaces, and this machine's own network never sees
them). Setting a host's ``eth0`` down cuts it off from the others (a partition).

Every command on a host runs through ``ip netns exec`` in a mount namespace of its own
where ``$TMPDIR`` (the same path on every host) is the host's own directory, so each node
has its own Ray temp dir, as separate machines do, at the path Ray gives all nodes. The
nodes start with the README's commands unchanged apart from resources: no loopback
workaround, Ray's default ports. The cluster's PostgreSQL server runs on the head, at
``10.0.0.1:5432`` (:mod:`tests.cluster.conftest`).

:meth:`NamespaceCluster.stop` signals every process inside the namespaces (all of them
were started there by the cluster or by Ray), deletes the namespaces (and with them their
interfaces) and the cluster's directory. Creating namespaces needs root and iproute2's
``ip``; without them :meth:`NamespaceCluster.start` raises :class:`NamespacesUnavailable`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.cluster.hosts import (
    WORKER_NODE,
    Cluster,
    ClusterError,
    base_env,
    names,
    replacements,
    signal_all,
    terminate,
)
from tests.cluster.recipe import Recipe

ADDRESSES = {"head": "10.0.0.1", WORKER_NODE: "10.0.0.2", "submit": "10.0.0.3"}
HOST_AT = {address: host for host, address in ADDRESSES.items()}
SUBNET = "10.0.0.0/24"
DB_PORT = 5432
BRIDGE = "lan"  # the head's interface
LINK = "eth0"  # every other host's interface
# bind the host's own directory at $TMPDIR in this command's mount namespace, then run it
OWN_TMP = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'


class NamespacesUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says why."""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Network:
    """The cluster's namespaces (see the module docstring), named ``<prefix>-<host>``."""

    prefix: str

    @classmethod
    def create(cls) -> "Network":
        """Make the namespaces, interfaces and addresses; raises
        :class:`NamespacesUnavailable` if this machine cannot make a namespace."""
        if os.geteuid() != 0:
            raise NamespacesUnavailable("making network namespaces needs root")
        if shutil.which("ip") is None:
            raise NamespacesUnavailable("no `ip` command (iproute2; `make system-deps`)")
        network = cls(f"ftprune-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            _ip("netns", "add", network.name("head"))
        except ClusterError as exc:
            raise NamespacesUnavailable(str(exc)) from None
        try:
            network._connect()
        except BaseException:
            network.delete()
            raise
        return network

    def _connect(self) -> None:
        head = self.name("head")
        for host in ADDRESSES:
            if host != "head":
                _ip("netns", "add", self.name(host))
            _ip("-n", self.name(host), "link", "set", "lo", "up")
        _ip("-n", head, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", head, "addr", "add", f"{ADDRESSES['head']}/24", "dev", BRIDGE)
        _ip("-n", head, "link", "set", BRIDGE, "up")
        for host in ADDRESSES:
            if host == "head":
                continue
            _ip("link", "add", host, "netns", head, "type", "veth",
                "peer", "name", LINK, "netns", self.name(host))  # fmt: skip
            _ip("-n", head, "link", "set", host, "master", BRIDGE, "up")
            _ip("-n", self.name(host), "addr", "add", f"{ADDRESSES[host]}/24", "dev", LINK)
            _ip("-n", self.name(host), "link", "set", LINK, "up")

    def name(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def exec(self, host: str) -> list[str]:
        """The prefix that runs a command on ``host``."""
        return ["ip", "netns", "exec", self.name(host)]

    def pids(self, host: str) -> list[int]:
        """The processes inside ``host``'s namespace."""
        done = subprocess.run(["ip", "netns", "pids", self.name(host)], capture_output=True)
        return [int(pid) for pid in done.stdout.split()]

    def inode(self, host: str) -> int:
        """The identity of ``host``'s namespace (as ``/proc/PID/ns/net`` shows it)."""
        return os.stat(f"/run/netns/{self.name(host)}").st_ino

    def addresses(self, host: str) -> set[str]:
        """The IPv4 and global IPv6 addresses of ``host``'s interfaces."""
        shown = _ip("-n", self.name(host), "-o", "addr", "show")
        return {
            line.split()[3].split("/")[0]
            for line in shown.splitlines()
            if " inet" in line and "scope link" not in line
        }

    def sockets(self, host: str) -> list[tuple[str, str, int, str]]:
        """Every TCP and UDP socket in ``host``'s namespace, as (state, local address, local
        port, peer address); ``*`` is any address, IPv4 addresses are never IPv6-mapped."""
        shown = subprocess.run(
            [*self.exec(host), "ss", "-H", "-tuan"], capture_output=True, text=True, check=True
        )
        found = []
        for line in shown.stdout.splitlines():
            _, state, _, _, local, peer = line.split()[:6]
            address, port = local.rsplit(":", 1)
            found.append((state, _address(address), int(port), _address(peer.rsplit(":", 1)[0])))
        return found

    def set_link(self, host: str, up: bool) -> None:
        """Set ``host``'s interface up or down."""
        _ip("-n", self.name(host), "link", "set", LINK, "up" if up else "down")

    def delete(self) -> None:
        """Signal every process inside the namespaces (SIGTERM, SIGKILL after 3 s), then
        delete the namespaces."""
        alive = [p for host in ADDRESSES for p in _processes(self.pids(host))]
        terminate(alive)
        for host in ADDRESSES:
            subprocess.run(["ip", "netns", "del", self.name(host)], capture_output=True)


@dataclass
class NamespaceCluster(Cluster):
    """The head, the worker node and the submitting machine, each in its namespace."""

    kind = "network namespaces"
    network: Network
    disturbed: set[str] = field(default_factory=set)  # nodes killed or cut off

    @classmethod
    def start(cls) -> "NamespaceCluster":
        """The README's recipe on fresh namespaces: the head, then the worker node."""
        network = Network.create()
        cluster = cls(Path(tempfile.mkdtemp(prefix="ftp-")), network=network)
        try:
            cluster.recipe = Recipe.read(replacements("", f"{ADDRESSES['head']}:{DB_PORT}"))
            cluster.make_home()
            for host in ADDRESSES:
                (cluster.root / "hosts" / host).mkdir(parents=True)
            (cluster.root / "tmp").mkdir()
            cluster.run_recipe("head", "ray start --head")
            cluster.run_recipe(WORKER_NODE, "ray start --address")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def gcs_address(self) -> str:
        return f"{ADDRESSES['head']}:6379"

    @property
    def dashboard_url(self) -> str:
        return f"http://{ADDRESSES['head']}:8265"

    @property
    def db_address(self) -> tuple[str, int]:
        return ADDRESSES["head"], DB_PORT

    def db_prefix(self) -> tuple[str, ...]:
        return tuple(self.network.exec("head"))

    def shell(self, host: str, script: str, *args: str) -> list[str]:
        own, shared = self.root / "hosts" / host, self.root / "tmp"
        return [
            *self.network.exec(host), "sh", "-c", OWN_TMP, "sh", str(own), str(shared),
            "bash", "-c", script, "bash", *args,
        ]  # fmt: skip

    def env(self, host: str, **extra: str) -> dict[str, str]:
        return base_env(HOME=str(self.home), TMPDIR=str(self.root / "tmp"), **extra)

    def processes(self, node: str) -> list[psutil.Process]:
        return _processes(self.network.pids(node))

    def node_name(self, node: dict[str, Any]) -> str:
        return HOST_AT[node["node_ip"]]

    def ray_dirs(self) -> list[Path]:
        return [self.root / "hosts" / host for host in ADDRESSES]

    def kill_node(self, node: str) -> list[int]:
        assert node != "head", "the head holds the GCS: stop the cluster instead"
        self.disturbed.add(node)
        victims = self.processes(node)
        signal_all(victims, signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)
        return [process.pid for process in victims]

    def cut(self, node: str) -> None:
        """Drop ``node``'s link to the others (its interface down)."""
        self.disturbed.add(node)
        self.network.set_link(node, up=False)

    def restore(self, node: str) -> None:
        """Bring ``node``'s link back up."""
        self.network.set_link(node, up=True)

    def ensure_node(self, node: str) -> None:
        if node not in self.disturbed and "raylet" in names(self.processes(node)):
            return
        self.restore(node)
        self.kill_node(node)
        self.run_recipe(node, "ray start --address")
        self.disturbed.discard(node)

    def stop(self) -> None:
        self.network.delete()
        shutil.rmtree(self.root, ignore_errors=True)


def _address(shown: str) -> str:
    """An address as ``ss`` shows it, plain: ``[::ffff:10.0.0.1]`` and ``10.0.0.1%eth0`` are
    ``10.0.0.1``, any address (``0.0.0.0``, ``[::]``) is ``*``."""
    plain = shown.strip("[]").split("%")[0].removeprefix("::ffff:")
    return "*" if plain in ("0.0.0.0", "::") else plain


def _processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return found
