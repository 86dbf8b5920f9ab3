"""What the cluster tests need of a test cluster, whichever way its hosts are made.

A cluster has three hosts: ``head`` and ``worker`` (the Ray nodes) and ``submit`` (the
machine jobs are submitted from). Every host shares one home directory (``$HOME``, like a
network home: the token and the password file are at the same path everywhere) and works
in one checkout there (``$HOME/ftprune``: ``.venv`` and ``configs`` of this repository), so
the README's relative paths (``. .venv/bin/activate``, ``mkdir -p job``) mean what they say
without touching the repository. Each host runs bash scripts that start with the README's
shell set-up for that host; every README command a host ran is kept, in order, in
:attr:`Cluster.ran`.

:class:`Cluster` implements the commands every variant shares (the recipe's submitting
machine, Ray's state API through the ``ray`` command line); the variants
(:mod:`tests.cluster.netns`, :mod:`tests.cluster.loopback`) say how a host runs a command and
how nodes start, die and come back.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from tests.cluster.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKER_NODE = "worker"
NODE_CPUS = 2
DB_PASSWORD = "cluster-s3cret"  # must never reach Ray or a job's output
RUN = "llama2-7b-s30"  # the README's run name, replaced by each job's
# GCS health checks every 0.5 s, a node dead after 3 missed ones (Ray's: tens of seconds)
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
# actors go to the least-loaded node, so a search's workers spread over the nodes
SPREAD = {"RAY_scheduler_spread_threshold": "0"}


class ClusterError(RuntimeError):
    """A host's command failed; the message holds the tail of its output."""


def replacements(dashboard: str, db_address: str) -> dict[str, str]:
    """What the tests change in the README's recipe: resources, the database's address and
    the names (password, config file); ``dashboard`` replaces the jobs API's address where
    the nodes do not have the README's addresses (empty: kept)."""
    table = {
        "--num-cpus 16 --num-gpus 8": f"--num-cpus {NODE_CPUS} --num-gpus 0",
        "db.internal:5432": db_address,
        "SECRET": DB_PASSWORD,
        "configs/demo.yaml": "configs/tiny.yaml",
    }
    if dashboard:
        table["http://10.0.0.1:8265"] = dashboard
    return table


@dataclass
class Cluster(ABC):
    """A running test cluster; ``start`` (in each variant) builds one, :meth:`stop` removes
    every process and file it made."""

    kind: ClassVar[str]  # which variant ran, as the tests report it
    root: Path
    recipe: Recipe = field(init=False)
    ran: list[tuple[str, str]] = field(default_factory=list, init=False)  # (host, command)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def checkout(self) -> Path:
        return self.home / "ftprune"

    @property
    def token(self) -> str:
        return (self.home / ".ray" / "auth_token").read_text()

    def make_home(self) -> None:
        """The shared home: the checkout and the cluster's token (made once, as
        ``ray get-auth-token --generate`` makes one: 32 random bytes in hex)."""
        self.checkout.mkdir(parents=True)
        for name in (".venv", "configs"):
            (self.checkout / name).symlink_to(ROOT / name)
        token = self.home / ".ray" / "auth_token"
        token.parent.mkdir()
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)

    @property
    @abstractmethod
    def gcs_address(self) -> str: ...

    @property
    @abstractmethod
    def dashboard_url(self) -> str: ...

    @property
    @abstractmethod
    def db_address(self) -> tuple[str, int]:
        """Where the cluster's PostgreSQL server listens (host, port)."""

    @abstractmethod
    def db_prefix(self) -> tuple[str, ...]:
        """The prefix that runs the PostgreSQL server's commands on the head host."""

    @abstractmethod
    def shell(self, host: str, script: str, *args: str) -> list[str]:
        """The command line that runs bash ``script`` (with ``args``) on ``host``."""

    @abstractmethod
    def env(self, host: str, **extra: str) -> dict[str, str]:
        """The environment of a command on ``host``."""

    @abstractmethod
    def processes(self, node: str) -> list[psutil.Process]:
        """The live processes of ``node``."""

    @abstractmethod
    def node_name(self, node: dict[str, Any]) -> str:
        """The name of a node of Ray's node table."""

    @abstractmethod
    def ray_dirs(self) -> list[Path]:
        """Every directory Ray writes to on the cluster's hosts."""

    @abstractmethod
    def kill_node(self, node: str) -> list[int]:
        """SIGKILL every process of worker node ``node``; returns their pids."""

    @abstractmethod
    def ensure_node(self, node: str) -> None:
        """Start worker node ``node`` again if a test killed or cut it off."""

    @abstractmethod
    def stop(self) -> None: ...

    def popen(self, host: str, script: str, *args: str, **extra: str) -> subprocess.Popen[str]:
        """Start ``script`` on ``host``; its output (stderr in stdout) in a pipe."""
        return subprocess.Popen(
            self.shell(host, script, *args),
            cwd=self.checkout,
            env=self.env(host, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, host: str, script: str, *args: str, timeout: float = 180) -> str:
        """Run ``script`` on ``host``; its output. Raises :class:`ClusterError` if it fails."""
        process = self.popen(host, script, *args)
        output, _ = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise ClusterError(f"on {host}: {script!r} failed:\n{output[-3000:]}")
        return output

    def recipe_script(self, host: str, command: str, run_name: str = RUN) -> str:
        """The script that runs the README's ``command`` on ``host`` (its run name replaced
        by ``run_name``), after the README's set-up; recorded in :attr:`ran`."""
        self.ran.append((host, command))
        return self.recipe.script(host, command.replace(RUN, run_name))

    def run_recipe(self, host: str, start: str, run_name: str = RUN) -> str:
        """Run the README command of ``host`` that starts with ``start`` (for the search
        ``run_name``); its output."""
        command = self.recipe.action(host, start)
        return self.run(host, self.recipe_script(host, command, run_name))

    def command(self, host: str, argv: list[str], **extra: str) -> subprocess.Popen[str]:
        """Start ``argv`` on ``host`` after the README's set-up (``extra``: environment)."""
        return self.popen(host, self.recipe.script(host, 'exec "$@"'), *argv, **extra)

    def set_up_submitter(self) -> None:
        """Run the submitting machine's README commands that come before ``ray job submit``
        (the password file, ``ftprune db upgrade``, the job's directory)."""
        for action in self.recipe.actions("submit"):
            if action.startswith("ray job submit"):
                return
            self.run("submit", self.recipe_script("submit", action))

    def submit(self, run_name: str) -> subprocess.Popen[str]:
        """Start the README's ``ray job submit`` of the search ``run_name``."""
        command = self.recipe.action("submit", "ray job submit")
        return self.popen("submit", self.recipe_script("submit", command, run_name))

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the ``ray`` command line on the submitting machine (stdout and stderr apart)."""
        return subprocess.run(
            self.shell("submit", self.recipe.script("submit", 'exec "$@"'), "ray", *args),
            cwd=self.checkout,
            env=self.env("submit"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def state(self, *what: str) -> list[dict[str, Any]]:
        """``ray list WHAT --detail`` through the jobs API (Ray's state API), as JSON."""
        listed = self.ray(
            "list", *what, "--detail", "--format", "json", "--limit", "10000",
            "--address", self.dashboard_url,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr[-2000:]
        return json.loads(listed.stdout)

    def node_ids(self) -> dict[str, str]:
        """Node id -> node name (dead nodes included)."""
        return {node["node_id"]: self.node_name(node) for node in self.state("nodes")}

    def alive_nodes(self) -> set[str]:
        """The names of the nodes Ray's node table holds alive."""
        return {self.node_name(n) for n in self.state("nodes") if n["state"] == "ALIVE"}

    def actor_nodes(self, submission_id: str, class_name: str = "_ScorerActor") -> dict[int, str]:
        """Pid -> node name of every ``class_name`` actor the job ``submission_id`` ran (an
        actor never placed, such as a replacement still waiting for room when the job
        ended, ran nothing and is left out)."""
        (job_id,) = [
            job["job_id"] for job in self.state("jobs") if job["submission_id"] == submission_id
        ]
        names = self.node_ids()
        return {
            actor["pid"]: names[actor["node_id"]]
            for actor in self.state("actors")
            if actor["job_id"] == job_id
            and actor["class_name"] == class_name
            and actor["node_id"] is not None
        }


def base_env(**extra: str) -> dict[str, str]:
    """The environment every host's commands start from: this one without a Ray address of
    the caller's, with the settings the test cluster runs under, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIRTUAL_ENV")}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **FAST_NODE_DEATH,
        **SPREAD,
    )
    env.update(extra)
    return env


def names(processes: list[psutil.Process]) -> list[str]:
    """The names of those of ``processes`` that still run."""
    found = []
    for process in processes:
        try:
            found.append(process.name())
        except psutil.NoSuchProcess:
            pass
    return found


def signal_all(processes: list[psutil.Process], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``processes`` that still runs."""
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM ``processes``, SIGKILL what is left after 3 s (the GCS and the autoscaler's
    monitor ignore SIGTERM)."""
    signal_all(processes, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=3)
    signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
