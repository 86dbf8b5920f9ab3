"""A Ray cluster of separate nodes on 127.0.0.1, started with ``ray start`` and owned by
the tests: the cluster tests' variant for machines that cannot make network namespaces
(:mod:`tests.cluster.netns`, which runs the README's recipe unchanged, is the one they use
where they can).

Every node is its own raylet with its own ``--temp-dir``, CPU count and a custom resource
named after it; the head also runs the GCS and the dashboard with the jobs API, on
127.0.0.1 at free ports, so the cluster can run while other Ray instances exist. The head
runs in Ray's single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), the one mode in
which Ray keeps a loopback node address; worker nodes start through
:mod:`tests.cluster.raynode` (why: its docstring). The submitting machine is this one: it
runs the README's commands for it, with the cluster's and the database's loopback
addresses. The cluster uses Ray's token authentication and notices a dead node in about
two seconds (Ray's default: about thirty).

Only this cluster's processes are ever signalled: a node's processes are those whose
command line names the node's temp dir, and their descendants (worker processes rename
themselves, the jobs' drivers are children of the head's workers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.cluster.hosts import (
    BIN,
    NODE_CPUS,
    ROOT,
    WORKER_NODE,
    Cluster,
    ClusterError,
    base_env,
    replacements,
    signal_all,
    terminate,
)
from tests.cluster.recipe import Recipe
from tests.storage.postgres import _free_port

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@dataclass
class LoopbackCluster(Cluster):
    """The head and the worker node on 127.0.0.1; the submitting machine is this one."""

    kind = "loopback"
    gcs_port: int = field(default_factory=_free_port)
    dashboard_port: int = field(default_factory=_free_port)
    pg_port: int = field(default_factory=_free_port)
    nodes: dict[str, Path] = field(default_factory=dict)  # name -> temp dir

    @classmethod
    def start(cls) -> "LoopbackCluster":
        """A head node named ``head`` and the worker node, ``NODE_CPUS`` CPUs each. Each
        node has the custom resource ``node_<name>`` (1 unit)."""
        cluster = cls(Path(tempfile.mkdtemp(prefix="ftp-ray-")))  # short: socket paths
        try:
            cluster.recipe = Recipe.read(
                replacements(cluster.dashboard_url, f"127.0.0.1:{cluster.pg_port}")
            )
            cluster.make_home()
            cluster._start_head()
            cluster.add_node(WORKER_NODE)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def db_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.pg_port

    def db_prefix(self) -> tuple[str, ...]:
        return ()

    def shell(self, host: str, script: str, *args: str) -> list[str]:
        return ["bash", "-c", script, "bash", *args]

    def env(self, host: str = "head", **extra: str) -> dict[str, str]:
        """The environment of every process that talks to the cluster: the project's
        environment first on PATH (as after ``. .venv/bin/activate``), the cluster's token,
        the shared home."""
        return base_env(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            HOME=str(self.home),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.home / ".ray" / "auth_token"),
            **extra,
        )

    def _start_head(self) -> None:
        self._ray_start(
            "head",
            [str(BIN / "ray"), "start", "--head"],
            [
                "--port", str(self.gcs_port),
                "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(_free_port()),
            ],
            self.env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        )  # fmt: skip

    def add_node(self, name: str) -> None:
        """Start a worker node ``name`` (again, after :meth:`kill_node`)."""
        self._ray_start(
            name,
            [sys.executable, "-m", "tests.cluster.raynode", "start"],
            ["--address", self.gcs_address],
            self.env(),
        )

    def _ray_start(
        self, name: str, command: list[str], options: list[str], env: dict[str, str]
    ) -> None:
        temp_dir = self.root / name
        shutil.rmtree(temp_dir, ignore_errors=True)
        self.nodes[name] = temp_dir
        started = subprocess.run(
            [
                *command,
                *options,
                "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(NODE_CPUS),
                "--resources", json.dumps({f"node_{name}": 1}),
                "--dashboard-agent-listen-port", str(_free_port()),
                "--temp-dir", str(temp_dir),
                "--disable-usage-stats",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )  # fmt: skip
        if started.returncode != 0:
            raise ClusterError(f"ray start of {name} failed: {started.stderr[-2000:]}")

    def processes(self, node: str) -> list[psutil.Process]:
        """The live processes of ``node`` (see the module docstring)."""
        marker = f"{self.nodes[node]}{os.sep}"
        found: dict[int, psutil.Process] = {}
        for process in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in process.info["cmdline"] or ()):
                found[process.pid] = process
                try:
                    found.update((child.pid, child) for child in process.children(True))
                except psutil.NoSuchProcess:
                    pass
        return list(found.values())

    def has_raylet(self, name: str) -> bool:
        """Whether node ``name`` is up (its raylet runs)."""
        for process in self.processes(name):
            try:
                if process.name() == "raylet" and process.status() != psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                pass
        return False

    def node_name(self, node: dict[str, Any]) -> str:
        (name,) = [r[5:] for r in node["resources_total"] if r.startswith("node_")]
        return name

    def ray_dirs(self) -> list[Path]:
        return list(self.nodes.values())

    def kill_node(self, node: str) -> list[int]:
        assert node != "head", "the head holds the GCS: stop the cluster instead"
        victims = self.processes(node)
        signal_all(victims, signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)
        return [process.pid for process in victims]

    def ensure_node(self, node: str) -> None:
        if not self.has_raylet(node):
            self.add_node(node)

    def stop(self) -> None:
        """Stop every process of the cluster and delete the cluster's directory."""
        terminate([process for name in self.nodes for process in self.processes(name)])
        shutil.rmtree(self.root, ignore_errors=True)


def non_loopback_sockets(processes: list[psutil.Process]) -> list[str]:
    """Every internet socket of ``processes`` bound to an address outside the loopback
    range (listening or connected), as ``name pid: address``."""
    found = []
    for process in processes:
        try:
            sockets = process.net_connections(kind="inet")
            name = process.name()
        except psutil.NoSuchProcess:
            continue
        found += [
            f"{name} {process.pid}: {s.laddr.ip}:{s.laddr.port} {s.status}"
            for s in sockets
            if s.laddr and s.laddr.ip not in LOOPBACK
        ]
    return found
