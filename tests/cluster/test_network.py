"""No Ray traffic leaves the loopback range: the local instance a Ray pool starts and every
node of the test cluster have 127.0.0.1 as their address in Ray's node table, and every
socket of their processes (servers and workers alike) is bound to a loopback address. The
cluster's dashboard answers only requests that carry the cluster's token."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.cluster.conftest import WORKER_NODE
from tests.cluster.loopback import ROOT, LoopbackCluster, non_loopback_sockets

# A driver that starts one actor on each node (by the node's custom resource), prints the
# node table, the GCS address and the actors' pids, and keeps them alive until stdin closes.
PROBE = """
import json, os, sys, ray
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=0)
class Probe:
    def where(self):
        return os.getpid(), ray.get_runtime_context().get_node_id()
probes = [Probe.options(resources={f"node_{n}": 0.01}).remote() for n in sys.argv[2:]]
print(json.dumps({
    "nodes": [n for n in ray.nodes() if n["Alive"]],
    "gcs": ray.get_runtime_context().gcs_address,
    "actors": ray.get([p.where.remote() for p in probes]),
}), flush=True)
sys.stdin.read()
"""


def listening_ports(processes: list[psutil.Process]) -> set[int]:
    return {
        s.laddr.port
        for p in processes
        if p.is_running()
        for s in p.net_connections(kind="tcp")
        if s.status == psutil.CONN_LISTEN
    }


def ray_processes_of_this_process() -> list[psutil.Process]:
    """This process and every descendant that belongs to Ray (GCS, raylet, agents, workers)."""
    me = psutil.Process()
    found = [me]
    for child in me.children(recursive=True):
        try:
            if "ray" in child.name() + " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.ray
def test_the_local_instance_of_a_ray_pool_is_on_loopback_only() -> None:
    import ray

    from search.config import build_config
    from search.settings import scorer_settings
    from workers.pool import RayPool

    assert not ray.is_initialized()  # so the pool starts its own instance
    config = build_config(Path(ROOT / "configs/tiny.yaml"), pool="ray", workers=1)
    pool = RayPool(scorer_settings(config), workers=1)
    try:
        nodes = ray.nodes()
        gcs_host, gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
        processes = ray_processes_of_this_process()
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
        assert gcs_host == "127.0.0.1"
        assert int(gcs_port) in listening_ports(processes)
        assert {"gcs_server", "raylet"} <= {p.name() for p in processes}
        assert len(processes) >= 4  # this driver, the GCS, the raylet and the actor at least
        assert non_loopback_sockets(processes) == []
    finally:
        pool.close()


@pytest.mark.cluster
@pytest.mark.ray
def test_every_node_and_socket_of_the_cluster_is_on_loopback(cluster: LoopbackCluster) -> None:
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, cluster.gcs_address, "head", WORKER_NODE],
        cwd=ROOT,
        env=cluster.env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert probe.stdout is not None
        seen = json.loads(probe.stdout.readline())
        processes = cluster.processes("head") + cluster.processes(WORKER_NODE)
        processes.append(psutil.Process(probe.pid))
        nodes = seen["nodes"]
        assert len(nodes) == 2 and len({n["NodeID"] for n in nodes}) == 2
        assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
        assert seen["gcs"] == cluster.gcs_address
        (head,) = [n["NodeID"] for n in nodes if "node_head" in n["Resources"]]
        assert [node == head for _, node in seen["actors"]] == [True, False]
        raylets = [p for p in processes if p.name() == "raylet"]
        assert len(raylets) == 2  # separate raylets, one per node
        assert {pid for pid, _ in seen["actors"]} <= {p.pid for p in processes}
        ports = listening_ports(processes)
        assert {cluster.gcs_port, cluster.dashboard_port} <= ports
        assert {n["NodeManagerPort"] for n in nodes} <= ports
        assert non_loopback_sockets(processes) == []
    finally:
        probe.communicate(timeout=60)


@pytest.mark.cluster
@pytest.mark.ray
def test_the_dashboard_answers_only_with_the_cluster_token(cluster: LoopbackCluster) -> None:
    def status(token: str | None) -> int:
        request = urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as refused:
            return refused.code

    assert status(None) == 401
    assert status("not-the-token") == 403
    assert status(cluster.token) == 200
