"""Follow-the-nodes mode and ``pdserve pools`` on a real local Ray with several nodes.

One ``ray.cluster_utils.Cluster`` for the module: a head offering no pool resource (as the Helm
chart's head) and nodes offering ``pdserve_prefill`` or ``pdserve_decode`` one unit each (as the
chart's worker pods). The pool manager is created with a reconcile interval longer than the
module in the first tests, so it starts no worker actor: they check what it reads from the
real ``ray.nodes()``, that the bootstrap creates it exactly once, and that the ``pdserve pools``
command re-creates it when it is gone and stops cleanly on SIGTERM. No test here starts an
engine (a vLLM engine inside a node of this multi-node cluster stalled for minutes on the
2-core machines); following with real worker actors is left to the pure logic's tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from polling import wait_for

from pdserve.config import PdserveConfig
from pdserve.ray_runtime.bootstrap import (
    BootstrapError,
    PoolManagerOptions,
    ensure_pool_manager,
)
from pdserve.ray_runtime.names import POOL_MANAGER_NAME, RAY_NAMESPACE
from pdserve.ray_runtime.pool_manager import PoolManager, follow_targets

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

NEVER_S = 3600.0
"""Reconcile interval of the managers created here: no reconcile (no worker) during the tests."""
OPTIONS = PoolManagerOptions(follow_nodes=True, reconcile_interval_s=NEVER_S)


def _config() -> dict[str, Any]:
    config = PdserveConfig()
    config.redis.url = "redis://127.0.0.1:1/0"  # never contacted: no worker is created
    return config.to_dict()


def _manager_id() -> str | None:
    try:
        handle = ray.get_actor(POOL_MANAGER_NAME, namespace=RAY_NAMESPACE)
    except ValueError:
        return None
    return str(handle._actor_id.hex())


@pytest.fixture(scope="module")
def nodes_cluster() -> Iterator[Any]:
    if ray.is_initialized():
        ray.shutdown()
    # Ray gives each raylet a fixed 30 s to register with the GCS; on a loaded 2-core machine
    # that can run out, so a start that timed out is tried again (a real failure fails all 3).
    for attempt in range(3):
        cluster = cluster_utils.Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False},
        )
        try:
            # one CPU each: a CPU worker actor asks for half of one
            prefill = [cluster.add_node(num_cpus=1, resources={"pdserve_prefill": 1})
                       for _ in range(2)]
            decode = cluster.add_node(num_cpus=1, resources={"pdserve_decode": 1})
            break
        except Exception as exc:
            cluster.shutdown()
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
    try:
        ray.init(address=cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False)
        cluster.prefill_nodes = prefill
        cluster.decode_node = decode
        yield cluster
    finally:
        if ray.is_initialized():
            try:
                ray.kill(ray.get_actor(POOL_MANAGER_NAME, namespace=RAY_NAMESPACE),
                         no_restart=True)
            except ValueError:
                pass
            ray.shutdown()
        cluster.shutdown()


def test_node_counting_reads_the_real_ray_nodes(nodes_cluster: Any) -> None:
    nodes = wait_for("4 alive nodes", lambda: len([n for n in ray.nodes() if n["Alive"]]) == 4
                      and ray.nodes(), 60)
    assert follow_targets(nodes) == {"prefill": 2, "decode": 1}
    # what drain() reports (the worker's socket.gethostname()) is Ray's node hostname: the pod
    # name on Kubernetes
    assert {n["NodeManagerHostname"] for n in nodes if n["Alive"]} == {socket.gethostname()}


def test_bootstrap_creates_the_detached_manager_exactly_once(nodes_cluster: Any) -> None:
    handle, created = ensure_pool_manager(_config(), OPTIONS)
    assert created is True
    again, created_again = ensure_pool_manager(_config(), OPTIONS)
    assert created_again is False
    assert again._actor_id == handle._actor_id
    named = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"] == POOL_MANAGER_NAME]
    assert named == [{"name": POOL_MANAGER_NAME, "namespace": RAY_NAMESPACE}]
    described = ray.get(handle.describe.remote(), timeout=60)
    assert described["follow_nodes"] is True
    # it runs on the head, not on a worker node that a scale-down may delete
    from ray._private import state

    info = state.actors(actor_id=handle._actor_id.hex())
    head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in
            n["Resources"]]
    assert info["Address"]["NodeID"] == head[0]
    # how drain() finds the node of a drained worker: the actor table, not the hostname, which
    # all the nodes of this one machine share
    assert PoolManager._node_of(handle) == head[0]
    assert PoolManager._node_by_hostname(socket.gethostname()) == ""
    assert PoolManager._node_by_hostname("no-such-pod") == ""
    with pytest.raises(BootstrapError, match="follow_nodes=True, not False"):
        ensure_pool_manager(_config(), PoolManagerOptions(follow_nodes=False))


def test_manager_follows_the_nodes_and_refuses_scale(nodes_cluster: Any) -> None:
    handle, _ = ensure_pool_manager(_config(), OPTIONS)
    assert ray.get(handle.node_targets.remote(), timeout=60) == {"prefill": 2, "decode": 1}
    with pytest.raises(Exception, match="follows the Ray nodes"):
        ray.get(handle.scale.remote("prefill", 5), timeout=60)
    assert ray.get(handle.drain.remote("prefill", 1), timeout=60) == []  # no worker to drain
    nodes_cluster.remove_node(nodes_cluster.prefill_nodes.pop())
    wait_for(
        "the pool manager to see the prefill node leave",
        lambda: ray.get(handle.node_targets.remote(), timeout=60)
        == {"prefill": 1, "decode": 1},
        60,
        every_s=0.5,
    )


def test_pools_command_recreates_a_gone_manager_and_stops_on_sigterm(
    nodes_cluster: Any, tmp_path: Path
) -> None:
    ensure_pool_manager(_config(), OPTIONS)
    first = _manager_id()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config()))
    log = tmp_path / "pools.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDSERVE_", "RAY_ADDRESS"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pdserve.cli", "--log-level", "INFO", "pools",
             "--config", str(config), "--ray-address", nodes_cluster.address, "--follow-nodes",
             "--check-interval", "0.5", "--reconcile-interval", str(NEVER_S)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        wait_for("pdserve pools to find the manager",
                  lambda: proc.poll() is not None or "found" in log.read_text(), 90)
        assert proc.poll() is None, log.read_text()
        assert _manager_id() == first
        ray.kill(ray.get_actor(POOL_MANAGER_NAME, namespace=RAY_NAMESPACE), no_restart=True)
        second = wait_for("a new pool manager", lambda: (_manager_id() or first) != first
                           and _manager_id(), 60)
        handle = ray.get_actor(POOL_MANAGER_NAME, namespace=RAY_NAMESPACE)
        assert ray.get(handle.describe.remote(), timeout=60)["follow_nodes"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "created" in text and "stopping" in text, text
    assert _manager_id() == second  # the manager outlives the command


def _alive_with(resource: str) -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]
