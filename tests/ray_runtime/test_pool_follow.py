"""The pool manager's follow-the-nodes logic without Ray: node lists -> pool sizes, drained nodes,
which members go when there are more workers than nodes, and the ``pdserve pools`` arguments."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve.cli import build_parser
from pdserve.ray_runtime.bootstrap import HEAD_NODE_RESOURCE, _actor_options, run_pools
from pdserve.ray_runtime.names import POOL_MANAGER_NAME, RAY_NAMESPACE
from pdserve.ray_runtime.pool import MemberState
from pdserve.ray_runtime.pool_manager import (
    DrainedNodes,
    alive_node_ids,
    follow_surplus,
    follow_targets,
)


def node(node_id: str, alive: bool = True, host: str = "", **resources: float) -> dict[str, Any]:
    """One entry of ``ray.nodes()`` (the keys the pool manager reads)."""
    return {
        "NodeID": node_id,
        "Alive": alive,
        "NodeManagerHostname": host or f"pod-{node_id}",
        "Resources": {"CPU": 4.0, f"node:10.0.0.{len(node_id)}": 1.0, **resources},
    }


HEAD = node("head", CPU=2.0)
HEAD["Resources"][HEAD_NODE_RESOURCE] = 1.0


def test_targets_count_the_alive_nodes_offering_each_pool() -> None:
    nodes = [
        HEAD,
        node("p1", pdserve_prefill=1.0),
        node("p2", pdserve_prefill=1.0),
        node("p3", alive=False, pdserve_prefill=1.0),
        node("d1", pdserve_decode=1.0),
    ]
    assert follow_targets(nodes) == {"prefill": 2, "decode": 1}
    assert follow_targets([HEAD]) == {"prefill": 0, "decode": 0}
    assert follow_targets([]) == {"prefill": 0, "decode": 0}
    assert alive_node_ids(nodes) == {"head", "p1", "p2", "d1"}


def test_a_node_offering_several_units_hosts_several_workers() -> None:
    nodes = [node("local", pdserve_prefill=64.0, pdserve_decode=2.999999999999)]
    assert follow_targets(nodes) == {"prefill": 64, "decode": 3}
    assert follow_targets([node("x", pdserve_decode=0.5)]) == {"prefill": 0, "decode": 0}


def test_drained_workers_keep_their_node_out_until_it_leaves() -> None:
    nodes = [node("p1", pdserve_prefill=1.0), node("p2", pdserve_prefill=1.0),
             node("d1", pdserve_decode=1.0)]
    drained = DrainedNodes(hold_s=600.0)
    drained.add("p2", "prefill", "pod-p2", now=0.0)
    assert follow_targets(nodes, drained) == {"prefill": 1, "decode": 1}
    # a drained prefill worker does not lower the decode pool of the same node
    assert drained.count("p2", "decode") == 0
    assert drained.describe() == [
        {"node_id": "p2", "hostname": "pod-p2", "role": "prefill", "drained": 1}
    ]
    # still there: still excluded
    assert drained.prune(alive_node_ids(nodes), now=10.0) == []
    assert follow_targets(nodes, drained) == {"prefill": 1, "decode": 1}
    # KubeRay deleted the pod: the node is gone, and forgotten
    nodes[1]["Alive"] = False
    assert drained.prune(alive_node_ids(nodes), now=20.0) == ["pod-p2"]
    assert drained.count("p2", "prefill") == 0
    assert follow_targets(nodes, drained) == {"prefill": 1, "decode": 1}
    # a new pod (a new node id) counts at once
    nodes.append(node("p4", pdserve_prefill=1.0))
    assert follow_targets(nodes, drained) == {"prefill": 2, "decode": 1}


def test_a_drained_node_kept_too_long_is_filled_again() -> None:
    nodes = [node("p1", pdserve_prefill=1.0)]
    drained = DrainedNodes(hold_s=60.0)
    drained.add("p1", "prefill", now=0.0)
    assert follow_targets(nodes, drained) == {"prefill": 0, "decode": 0}
    assert drained.prune({"p1"}, now=59.0) == []
    assert follow_targets(nodes, drained) == {"prefill": 0, "decode": 0}
    assert drained.prune({"p1"}, now=61.0) == ["p1"]
    assert follow_targets(nodes, drained) == {"prefill": 1, "decode": 0}


def test_more_drained_than_offered_counts_zero_not_negative() -> None:
    drained = DrainedNodes()
    drained.add("p1", "prefill", now=0.0)
    drained.add("p1", "prefill", now=0.0)
    nodes = [node("p1", pdserve_prefill=1.0), node("p2", pdserve_prefill=1.0)]
    assert follow_targets(nodes, drained) == {"prefill": 1, "decode": 0}


def test_drained_nodes_reject_bad_entries() -> None:
    drained = DrainedNodes()
    with pytest.raises(ValueError, match="node id"):
        drained.add("", "prefill")
    with pytest.raises(ValueError, match="unknown pool"):
        drained.add("p1", "encode")


def test_surplus_removes_members_not_ready_first_then_the_newest() -> None:
    members = {
        0: MemberState.READY,
        1: MemberState.READY,
        2: MemberState.STARTING,  # e.g. Ray restarting it after its node left
        3: MemberState.READY,
        4: MemberState.DRAINING,
        5: MemberState.FAILED,
    }
    assert follow_surplus(members, 5) == []
    assert follow_surplus(members, 4) == [5]
    assert follow_surplus(members, 3) == [5, 2]
    assert follow_surplus(members, 2) == [5, 2, 3]
    assert follow_surplus(members, 0) == [5, 2, 3, 1, 0]
    assert follow_surplus({}, 0) == []


def test_pools_subcommand_arguments() -> None:
    args = build_parser().parse_args(
        ["pools", "--config", "/etc/pdserve/config.yaml", "--ray-address",
         "ray://127.0.0.1:10001", "--follow-nodes", "--drain-timeout", "45"]
    )
    assert args.handler is run_pools
    assert args.follow_nodes is True
    assert args.ray_address == "ray://127.0.0.1:10001"
    assert args.drain_timeout == 45.0
    assert args.check_interval == 5.0
    assert args.once is False
    args.check_interval = 0.0
    with pytest.raises(SystemExit, match="--check-interval must be > 0"):
        run_pools(args)


def test_pool_manager_actor_options_pin_it_to_the_head_when_ray_says_which() -> None:
    options = _actor_options({"CPU": 4.0, HEAD_NODE_RESOURCE: 1.0})
    assert options["name"] == POOL_MANAGER_NAME
    assert options["namespace"] == RAY_NAMESPACE
    assert options["lifetime"] == "detached"
    assert options["get_if_exists"] is True
    assert options["max_restarts"] == -1
    assert options["num_cpus"] == 0
    assert 0 < options["resources"][HEAD_NODE_RESOURCE] <= 1
    assert "resources" not in _actor_options({"CPU": 4.0})
