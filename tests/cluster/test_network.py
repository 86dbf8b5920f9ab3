"""Where the clusters' traffic goes. Ray's local instance (a Ray pool without an address)
has 127.0.0.1 as its node address and binds every socket of its processes to a loopback
address. On the namespace cluster each node is a host of its own: its namespace holds its
processes, its address (which exists only there) is its address in Ray's node table, every
socket of its processes is on that address or its loopback, and nothing of the cluster runs
in this machine's own network. On the loopback cluster every node's address is 127.0.0.1
and every socket is on loopback. Either way, the dashboard answers only requests that carry
the cluster's token."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.cluster.hosts import ROOT, WORKER_NODE, Cluster, names
from tests.cluster.loopback import LoopbackCluster, non_loopback_sockets
from tests.cluster.netns import ADDRESSES, NamespaceCluster

# A driver that starts one actor on each live node, prints the node table, the GCS address
# and the actors' (pid, node id), and keeps them alive until it is stopped.
PROBE = """
import json, os, sys, time, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=0)
class Probe:
    def where(self):
        return os.getpid(), ray.get_runtime_context().get_node_id()
nodes = [n for n in ray.nodes() if n["Alive"]]
probes = [Probe.options(scheduling_strategy=On(n["NodeID"], soft=False)).remote() for n in nodes]
print(json.dumps({
    "nodes": nodes,
    "gcs": ray.get_runtime_context().gcs_address,
    "actors": ray.get([p.where.remote() for p in probes]),
}), flush=True)
time.sleep(600)
"""
# Requests to the jobs API without a token, with a wrong one and with the cluster's.
STATUSES = """
import os, sys, urllib.error, urllib.request
token = open(os.environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for sent in (None, "not-the-token", token):
    request = urllib.request.Request(sys.argv[1] + "/api/jobs/")
    if sent is not None:
        request.add_header("Authorization", f"Bearer {sent}")
    try:
        with opener.open(request, timeout=30) as response:
            print(response.status)
    except urllib.error.HTTPError as refused:
        print(refused.code)
"""
WILDCARD = {"0.0.0.0", "::"}


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
@pytest.mark.usefixtures("no_ray_instance")
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
def test_every_node_is_where_the_cluster_puts_it(cluster: Cluster) -> None:
    loopback = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray keeps 127.0.0.1 only then
    extra = loopback if isinstance(cluster, LoopbackCluster) else {}
    probe = cluster.command("head", ["python", "-c", PROBE, cluster.gcs_address], **extra)
    try:
        seen = first_json(probe)
        node_names = cluster.node_ids()
        nodes = {node_names[n["NodeID"]]: n for n in seen["nodes"]}
        assert sorted(nodes) == ["head", WORKER_NODE]
        assert seen["gcs"] == cluster.gcs_address
        probes = {node_names[node]: pid for pid, node in seen["actors"]}
        assert sorted(probes) == ["head", WORKER_NODE]  # one on each node
        processes = []
        for name in nodes:
            on_node = cluster.processes(name)
            assert probes[name] in {p.pid for p in on_node}
            assert names(on_node).count("raylet") == 1  # one raylet per node
            processes += on_node
        addresses = {name: n["NodeManagerAddress"] for name, n in nodes.items()}
        if isinstance(cluster, NamespaceCluster):
            assert addresses == {"head": ADDRESSES["head"], WORKER_NODE: ADDRESSES[WORKER_NODE]}
            ports = assert_inside_the_namespaces(cluster)
        else:
            assert set(addresses.values()) == {"127.0.0.1"}
            assert non_loopback_sockets(processes) == []
            ports = listening_ports(processes)
        assert int(cluster.gcs_address.rsplit(":", 1)[1]) in ports
        assert int(cluster.dashboard_url.rsplit(":", 1)[1]) in ports
        assert {n["NodeManagerPort"] for n in nodes.values()} <= ports
    finally:
        probe.terminate()
        probe.communicate(timeout=60)


def assert_inside_the_namespaces(cluster: NamespaceCluster) -> set[int]:
    """Each host has only its own address and loopback; every socket in its namespace is
    bound there (or to any address of the host) and connected only within the cluster's
    network; no process of the cluster is outside the namespaces. Returns the ports the
    nodes listen on."""
    listening, inside = set(), set()
    for host, address in ADDRESSES.items():
        own = {address, "127.0.0.1", "::1"}
        assert {address} <= cluster.network.addresses(host) <= own
        for state, local, port, peer in cluster.network.sockets(host):
            assert local in own | {"*"}, (host, local, port)
            assert peer in own | {"*", *ADDRESSES.values()}, (host, local, port, peer)
            if state == "LISTEN" and host != "submit":
                listening.add(port)
        inside |= {process.pid for process in cluster.processes(host)}
    mentions = [p for p in psutil.process_iter(["cmdline"]) if names_root(p, cluster.root)]
    assert mentions and {p.pid for p in mentions} <= inside
    return listening


def names_root(process: psutil.Process, root: Path) -> bool:
    return any(str(root) in part for part in process.info["cmdline"] or ())


def first_json(process: subprocess.Popen[str]) -> dict:
    """The first line of ``process``'s output that is a JSON object (Ray logs come first)."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            return json.loads(line)
    process.wait(timeout=30)
    raise AssertionError(f"no JSON from the probe (exit status {process.returncode})")


@pytest.mark.cluster
@pytest.mark.ray
def test_the_dashboard_answers_only_with_the_cluster_token(cluster: Cluster) -> None:
    asked = cluster.command("submit", ["python", "-c", STATUSES, cluster.dashboard_url])
    output, _ = asked.communicate(timeout=60)
    assert output.split()[-3:] == ["401", "403", "200"], output[-2000:]
