"""A Ray cluster of separate nodes on 127.0.0.1, started with ``ray start`` and owned by
the tests.

Every node is its own raylet with its own ``--temp-dir``, CPU count and a custom resource
named after it; the head also runs the GCS and the dashboard with the jobs API, on
127.0.0.1 at free ports, so the cluster can run while other Ray instances exist. The head
runs in Ray's single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), the one mode in
which Ray keeps a loopback node address; worker nodes start through
:mod:`tests.cluster.raynode` (why: its docstring). The cluster uses Ray's token
authentication with a token of its own, and notices a dead node in about two seconds
(Ray's default: about thirty).

Only this cluster's processes are ever signalled: a node's processes are those whose
command line names the node's temp dir, and their descendants (worker processes rename
themselves, the jobs' drivers are children of the head's workers).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.storage.postgres import _free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
# GCS health checks every 0.5 s, a node dead after 3 missed ones
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
# actors go to the least-loaded node, so a search's workers spread over the nodes
SPREAD = {"RAY_scheduler_spread_threshold": "0"}


class ClusterError(RuntimeError):
    """A node failed to start; the message holds the tail of its output."""


@dataclass
class LoopbackCluster:
    """A running cluster; :meth:`start` builds one, :meth:`stop` removes every trace."""

    root: Path
    gcs_port: int = field(default_factory=_free_port)
    dashboard_port: int = field(default_factory=_free_port)
    nodes: dict[str, Path] = field(default_factory=dict)  # name -> temp dir

    @classmethod
    def start(cls, head_cpus: int, workers: dict[str, int]) -> "LoopbackCluster":
        """A head node named ``head`` and one worker node per entry of ``workers`` (name:
        CPUs). Each node has the custom resource ``node_<name>`` (1 unit)."""
        cluster = cls(Path(tempfile.mkdtemp(prefix="ftp-ray-")))  # short: socket paths
        token = cluster.root / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        try:
            cluster._start_head(head_cpus)
            for name, cpus in workers.items():
                cluster.add_node(name, cpus)
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
    def token(self) -> str:
        return (self.root / "token").read_text()

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every process that talks to the cluster: the project's
        environment first on PATH (as after ``. .venv/bin/activate``), the cluster's token,
        no ``RAY_ADDRESS`` of the caller's."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.root / "token"),
            RAY_USAGE_STATS_ENABLED="0",
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            **FAST_NODE_DEATH,
            **SPREAD,
        )
        env.update(extra)
        return env

    def _start_head(self, cpus: int) -> None:
        self._ray_start(
            "head",
            [str(BIN / "ray"), "start", "--head"],
            [
                "--port", str(self.gcs_port),
                "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(_free_port()),
            ],
            cpus,
            self.env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        )  # fmt: skip

    def add_node(self, name: str, cpus: int) -> None:
        """Start a worker node ``name`` (again, after :meth:`kill_node`)."""
        self._ray_start(
            name,
            [sys.executable, "-m", "tests.cluster.raynode", "start"],
            ["--address", self.gcs_address],
            cpus,
            self.env(),
        )

    def _ray_start(
        self, name: str, command: list[str], options: list[str], cpus: int, env: dict
    ) -> None:
        temp_dir = self.root / name
        shutil.rmtree(temp_dir, ignore_errors=True)
        self.nodes[name] = temp_dir
        started = subprocess.run(
            [
                *command,
                *options,
                "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(cpus),
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

    def processes(self, name: str) -> list[psutil.Process]:
        """The live processes of node ``name`` (see the module docstring)."""
        marker = f"{self.nodes[name]}{os.sep}"
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

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of worker node ``name``; returns their pids."""
        assert name != "head", "the head holds the GCS: stop the cluster instead"
        victims = self.processes(name)
        for process in victims:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)
        return [process.pid for process in victims]

    def stop(self) -> None:
        """SIGTERM every process of the cluster, SIGKILL what is left after 3 s (the GCS
        and the autoscaler's monitor ignore SIGTERM), and delete the cluster's directory."""
        alive = [process for name in self.nodes for process in self.processes(name)]
        for process in alive:
            _signal(process, signal.SIGTERM)
        _, alive = psutil.wait_procs(alive, timeout=3)
        for process in alive:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the ``ray`` command line against this cluster (its environment, the repo as
        working directory)."""
        return subprocess.run(
            [str(BIN / "ray"), *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def actors(self) -> list[dict]:
        """Every actor the cluster has run, live and dead (Ray's state API): ``pid``,
        ``node_id``, ``class_name``, ``state``, ..."""
        listed = self.ray(
            "list", "actors", "--detail", "--format", "json", "--limit", "10000",
            "--address", self.dashboard_url,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout)

    def actor_nodes(self, submission_id: str, class_name: str = "_ScorerActor") -> dict[int, str]:
        """Pid -> node name of every ``class_name`` actor the job ``submission_id`` ran (an
        actor never placed, such as a replacement still waiting for room when the job
        ended, ran nothing and is left out)."""
        listed = self.ray("list", "jobs", "--format", "json", "--address", self.dashboard_url)
        assert listed.returncode == 0, listed.stderr
        (job_id,) = [
            job["job_id"] for job in json.loads(listed.stdout)
            if job["submission_id"] == submission_id
        ]  # fmt: skip
        names = self.node_ids()
        return {
            actor["pid"]: names[actor["node_id"]]
            for actor in self.actors()
            if actor["job_id"] == job_id
            and actor["class_name"] == class_name
            and actor["node_id"] is not None
        }

    def node_ids(self) -> dict[str, str]:
        """Node id -> node name, from each node's custom resource (dead nodes included)."""
        listed = self.ray(
            "list", "nodes", "--detail", "--format", "json", "--address", self.dashboard_url
        )
        assert listed.returncode == 0, listed.stderr
        names = {}
        for node in json.loads(listed.stdout):
            (name,) = [r[5:] for r in node["resources_total"] if r.startswith("node_")]
            names[node["node_id"]] = name
        return names


def _signal(process: psutil.Process, sig: signal.Signals) -> None:
    try:
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


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
