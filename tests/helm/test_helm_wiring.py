"""The chart is wired to the code it runs: the Ray resources the worker groups offer are what the
worker actors request, the planner's Role grants exactly the API calls its actuator makes, and
the pool-manager sidecar reaches the head and reads the same config as the other pods.

The actuator is driven against the local Kubernetes API stand-in of
tests/planner/test_planner_kubernetes.py, serving the RayCluster this chart renders.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helm_chart_support import (
    FULLNAME,
    NAMESPACE,
    PRESETS,
    REPO_ROOT,
    Manifest,
    container,
    env_of,
    one,
    pod_specs,
    ray_custom_resources,
    render,
    worker_group,
)
from kubernetes import client

from pdserve.cli import build_parser
from pdserve.planner.cli import build_actuator
from pdserve.ray_runtime.bootstrap import run_pools
from pdserve.ray_runtime.placement import PlacementError, worker_actor_options
from pdserve.ray_runtime.pool_manager import follow_targets

ROLES = ("prefill", "decode")
GPU = "nvidia.com/gpu"


def _standin() -> ModuleType:
    """tests/planner/test_planner_kubernetes.py, loaded under a name of its own."""
    name = "_helm_wiring_kubernetes_standin"
    if name not in sys.modules:
        path = REPO_ROOT / "tests" / "planner" / "test_planner_kubernetes.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module", params=PRESETS)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


# --- Ray resources ---------------------------------------------------------------------------


def _ray_nodes(raycluster: Manifest) -> list[dict[str, Any]]:
    """The ``ray.nodes()`` of the rendered cluster at its initial replicas: what each pod's
    ``ray start`` offers (custom resources and GPUs)."""
    head = raycluster["spec"]["headGroupSpec"]
    head_params = head["rayStartParams"]
    head_resources: dict[str, float] = {"CPU": 1.0}
    if "resources" in head_params:
        head_resources.update(ray_custom_resources(head_params["resources"]))
    head_resources["GPU"] = float(head_params.get("num-gpus", 0))
    nodes = [{"NodeID": "head", "Alive": True, "Resources": head_resources}]
    for group in raycluster["spec"]["workerGroupSpecs"]:
        offered = {k: float(v) for k, v in ray_custom_resources(
            group["rayStartParams"]["resources"]).items()}
        gpus = container(group["template"], "ray-worker")["resources"].get("limits", {}).get(GPU)
        if gpus:
            offered["GPU"] = float(gpus)
        for i in range(group["replicas"]):
            nodes.append({"NodeID": f"{group['groupName']}-{i}", "Alive": True,
                          "Resources": {"CPU": 1.0, **offered}})
    return nodes


def _total(nodes: list[dict[str, Any]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for n in nodes:
        for k, v in n["Resources"].items():
            total[k] = total.get(k, 0.0) + v
    return total


def test_worker_groups_offer_what_worker_actors_request(manifests: list[Manifest]) -> None:
    raycluster = one(manifests, "RayCluster")
    nodes = _ray_nodes(raycluster)
    for role in ROLES:
        group = worker_group(raycluster, role)
        offered = ray_custom_resources(group["rayStartParams"]["resources"])
        gpus = container(group["template"], "ray-worker")["resources"].get("limits", {}).get(GPU)
        options = worker_actor_options(role, 0, model="m", cluster_resources=_total(nodes))
        # every custom resource the actor asks for, the group's pods offer; and exactly one
        # actor's worth, so that each pod hosts one worker
        assert set(options["resources"]) <= set(offered), (role, options, offered)
        for name, amount in options["resources"].items():
            assert offered[name] // amount == 1, (role, name)
        other = worker_group(raycluster, "decode" if role == "prefill" else "prefill")
        assert not set(options["resources"]) & set(
            ray_custom_resources(other["rayStartParams"]["resources"])
        )
        # a GPU is asked for exactly when the group's pods get one
        assert options.get("num_gpus", 0) == (1 if gpus else 0), (role, gpus)
        if gpus:
            assert options["num_gpus"] <= int(gpus)


def test_the_head_offers_no_pool_resource(manifests: list[Manifest]) -> None:
    raycluster = one(manifests, "RayCluster")
    head_only = _ray_nodes(raycluster)[:1]
    assert head_only[0]["Resources"]["GPU"] == 0
    for role in ROLES:
        with pytest.raises(PlacementError, match=f"pdserve_{role}"):
            worker_actor_options(role, 0, model="m", cluster_resources=_total(head_only))


def test_following_the_nodes_gives_one_worker_per_worker_pod(manifests: list[Manifest]) -> None:
    raycluster = one(manifests, "RayCluster")
    expected = {role: worker_group(raycluster, role)["replicas"] for role in ROLES}
    assert follow_targets(_ray_nodes(raycluster)) == expected


def test_worker_pod_names_fit_a_hostname() -> None:
    """``drain()`` reports ``socket.gethostname()`` as the pod name for ``workersToDelete``: a
    pod's hostname is its name cut to 63 characters, so KubeRay's worker pod names
    (``<raycluster>-<group>-worker-<5 random>``) must fit in 63."""
    raycluster = one(render("default", {"fullnameOverride": "x" * 80}), "RayCluster")
    name = raycluster["metadata"]["name"]
    for group in raycluster["spec"]["workerGroupSpecs"]:
        assert len(f"{name}-{group['groupName']}-worker-abcde") <= 63
        assert group["template"]["spec"].get("hostname") is None
        assert group["template"]["spec"].get("setHostnameAsFQDN") is not True


# --- the planner's RBAC against its actuator ------------------------------------------------

_API_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)/"
    r"(?P<resource>[^/?]+)(?:/(?P<name>[^/?]+))?"
)
_VERBS = {"PATCH": "patch", "PUT": "update", "POST": "create"}


def _rbac_request(method: str, path: str) -> tuple[str, str, str, str, str]:
    """(verb, apiGroup, resource, resourceName, namespace) an API request needs."""
    match = _API_PATH.match(path)
    assert match, f"not a namespaced API request: {path}"
    name = match["name"] or ""
    if method == "GET":
        verb = "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS[method]
    return verb, match["group"], match["resource"], name, match["namespace"]


@pytest.fixture
def planner_apiserver() -> Iterator[tuple[Any, list[Manifest]]]:
    """The API stand-in serving this chart's RayCluster, and the chart rendered so that the
    RayCluster has the name and namespace the stand-in serves."""
    standin = _standin()
    manifests = render("default", {"fullnameOverride": standin.NAME})
    raycluster = copy.deepcopy(one(manifests, "RayCluster"))
    raycluster["metadata"].update(namespace=NAMESPACE, resourceVersion="1")
    assert (raycluster["metadata"]["name"], NAMESPACE) == (standin.NAME, standin.NAMESPACE)
    with standin.serving(standin.StandIn(obj=raycluster)) as state:
        yield state, manifests


class _PoolManager:
    def __init__(self) -> None:
        self.drained: list[tuple[str, int]] = []

    async def drain(self, role: str, count: int) -> list[str]:
        self.drained.append((role, count))
        return [f"pdserve-{role}-worker-{i:05d}" for i in range(count)]


async def test_planner_role_grants_exactly_what_its_actuator_uses(
    planner_apiserver: tuple[Any, list[Manifest]],
) -> None:
    state, manifests = planner_apiserver
    name = one(manifests, "RayCluster")["metadata"]["name"]
    deployment = one(manifests, "Deployment", f"{name}-planner")
    command = container(deployment["spec"]["template"], "planner")["command"]
    assert command[:2] == ["pdserve", "planner"]
    args = build_parser().parse_args(command[1:])
    manager = _PoolManager()
    api = client.ApiClient(client.Configuration(host=state.url))
    actuator, kube = build_actuator(
        args, api_client=api, pool_manager_lookup=lambda *_: manager
    )
    assert kube is not None and actuator is kube
    try:
        assert await kube.current() == {"prefill": 1, "decode": 1}
        await kube.scale("prefill", 3)
        await kube.scale("decode", 2)
        await kube.scale("prefill", 2)  # drains first
        await kube.scale("decode", 1)
    finally:
        kube.close()
    assert manager.drained == [("prefill", 1), ("decode", 1)]
    groups = {g["groupName"]: g for g in state.obj["spec"]["workerGroupSpecs"]}
    assert groups["prefill"]["scaleStrategy"]["workersToDelete"] == ["pdserve-prefill-worker-00000"]
    assert (groups["prefill"]["replicas"], groups["decode"]["replicas"]) == (2, 1)

    used = {_rbac_request(r.method, r.path) for r in state.requests}
    assert {u[4] for u in used} == {deployment["metadata"].get("namespace", NAMESPACE)}
    used_rules = {u[:4] for u in used}
    role = one(manifests, "Role", f"{name}-planner")
    granted = {
        (verb, group, resource, resource_name)
        for rule in role["rules"]
        for verb, group, resource, resource_name in itertools.product(
            rule["verbs"], rule["apiGroups"], rule["resources"], rule.get("resourceNames", ["*"])
        )
    }
    assert used_rules == granted
    assert granted == {("get", "ray.io", "rayclusters", name),
                       ("patch", "ray.io", "rayclusters", name)}


# --- the pool-manager sidecar -------------------------------------------------------------------


def _option(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, (flag, command)
    return command[command.index(flag) + 1]


def test_pool_manager_sidecar_reaches_the_head_and_reads_the_shared_config(
    manifests: list[Manifest],
) -> None:
    raycluster = one(manifests, "RayCluster")
    head_spec = raycluster["spec"]["headGroupSpec"]
    template = head_spec["template"]
    sidecar = container(template, "pool-manager")
    command = sidecar["command"]
    args = build_parser().parse_args(command[1:])
    assert command[0] == "pdserve"
    assert args.handler is run_pools
    assert args.follow_nodes is True
    # the head's Ray Client server, over loopback (same pod), on the port the head opens
    client_port = int(head_spec["rayStartParams"]["ray-client-server-port"])
    assert args.ray_address == f"ray://127.0.0.1:{client_port}"
    head = container(template, "ray-head")
    assert {"name": "client", "containerPort": client_port} in head["ports"]
    assert sidecar["image"] == head["image"]
    # the same config file as every other pdserve container, from the same ConfigMap
    config_path = Path(args.config)
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    mount = mounts[str(config_path.parent)]
    assert mount.get("readOnly") is True
    assert volumes[mount["name"]]["configMap"]["name"] == f"{FULLNAME}-config"
    for label, pod in pod_specs(manifests):
        for c in pod["spec"]["containers"]:
            env = env_of(c)
            if "PDSERVE_CONFIG" in env:
                assert env["PDSERVE_CONFIG"] == str(config_path), (label, c["name"])
                pod_volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
                pod_mount = {m["mountPath"]: m for m in c["volumeMounts"]}[str(config_path.parent)]
                assert pod_volumes[pod_mount["name"]]["configMap"] == volumes[mount["name"]][
                    "configMap"
                ], (label, c["name"])
    assert env_of(sidecar)["PDSERVE_CONFIG"] == str(config_path)
    assert "PDSERVE_REDIS_URL" in env_of(sidecar)
    # non-root, read-only root filesystem, a writable /tmp
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert env_of(sidecar)["HOME"] == "/tmp"


def test_pool_manager_sidecar_follows_its_knobs() -> None:
    template = one(render("default", {"ray": {"poolManager": {
        "drainTimeoutSeconds": 12.5, "drainedHoldSeconds": 90}}}), "RayCluster")[
        "spec"]["headGroupSpec"]["template"]
    command = container(template, "pool-manager")["command"]
    args = build_parser().parse_args(command[1:])
    assert (args.drain_timeout, args.drained_hold) == (12.5, 90.0)

    off = one(render("default", {"ray": {"poolManager": {"enabled": False}}}), "RayCluster")
    spec = off["spec"]["headGroupSpec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["ray-head"]
    assert "pool-manager-tmp" not in {v["name"] for v in spec["volumes"]}


def test_planner_drains_through_the_head_the_sidecar_feeds() -> None:
    """The planner looks the pool manager up at the same head (its Ray Client port) that the
    sidecar creates it on."""
    manifests = render("default")
    raycluster = one(manifests, "RayCluster")
    planner = container(
        one(manifests, "Deployment", f"{FULLNAME}-planner")["spec"]["template"], "planner"
    )
    sidecar = container(raycluster["spec"]["headGroupSpec"]["template"], "pool-manager")
    planner_port = _option(planner["command"], "--ray-address").rsplit(":", 1)[1]
    sidecar_port = _option(sidecar["command"], "--ray-address").rsplit(":", 1)[1]
    assert planner_port == sidecar_port
    assert _option(planner["command"], "--ray-address").startswith(
        f"ray://{raycluster['metadata']['name']}-head-svc:"
    )
