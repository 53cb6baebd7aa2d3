"""The pdserve chart renders, lints and validates, and its pieces are wired to each other.

Everything runs offline: Helm's Go SDK renders the chart, kubernetes-validate checks the
built-in kinds against the Kubernetes version the chart declares, and the RayCluster is checked
against KubeRay's CRD schema.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_chart_support import (
    CHART_DIR,
    FULLNAME,
    KUBERAY_CRD,
    NAMESPACE,
    PRESETS,
    Manifest,
    chart_kube_version,
    container,
    env_of,
    find,
    one,
    pod_specs,
    preset_values,
    ray_custom_resources,
    raycluster_crd_schema,
    render,
    render_files,
    unknown_fields,
    worker_group,
)

from pdserve.config import PdserveConfig

CRD_GROUPS = ("ray.io", "monitoring.coreos.com")
"""API groups of custom resources: not in Kubernetes' own schemas."""

REDIS_URL = f"redis://{FULLNAME}-redis:6379/0"
ROLES = ("prefill", "decode")


@pytest.fixture(scope="module", params=PRESETS)
def preset(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def manifests(preset: str) -> list[Manifest]:
    return render(preset)


@pytest.fixture(scope="module")
def default_manifests() -> list[Manifest]:
    return render("default")


@pytest.fixture(scope="module")
def config(manifests: list[Manifest]) -> PdserveConfig:
    configmap = one(manifests, "ConfigMap", f"{FULLNAME}-config")
    return PdserveConfig.from_dict(yaml.safe_load(configmap["data"]["config.yaml"]))


def _group_of(manifest: Manifest) -> str:
    return str(manifest["apiVersion"]).split("/")[0] if "/" in manifest["apiVersion"] else ""


# --- chart-level checks ------------------------------------------------------------------------


def test_chart_declares_a_kubernetes_version() -> None:
    assert chart_kube_version() == "1.29.0"


def test_lint_reports_no_errors(preset: str) -> None:
    report = helm.lint(
        CHART_DIR, preset_values(preset) or None, kube_version=f"v{chart_kube_version()}"
    )
    errors = [m for m in report["messages"] if m["severity"] >= 3] + report["errors"]
    assert not errors, errors


def test_manifests_validate_against_kubernetes_schemas(manifests: list[Manifest]) -> None:
    version = chart_kube_version()
    checked = set()
    for manifest in manifests:
        if _group_of(manifest) in CRD_GROUPS:
            continue
        kubernetes_validate.validate(manifest, version, strict=True)
        checked.add(manifest["kind"])
    core = {"ConfigMap", "Service", "Deployment", "StatefulSet", "NetworkPolicy", "ServiceAccount"}
    assert core <= checked


def test_only_known_custom_resources_are_rendered(manifests: list[Manifest]) -> None:
    kinds = {m["kind"] for m in manifests if _group_of(m) in CRD_GROUPS}
    assert kinds <= {"RayCluster", "ServiceMonitor", "PodMonitor"}
    assert "RayCluster" in kinds


def test_raycluster_matches_kuberay_crd(manifests: list[Manifest]) -> None:
    schema = raycluster_crd_schema()
    if schema is None:
        pytest.skip(f"KubeRay's RayCluster CRD is not at {KUBERAY_CRD} (shared data absent)")
    raycluster = one(manifests, "RayCluster")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(raycluster), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    assert unknown_fields(raycluster, schema) == []


def test_unknown_field_check_catches_a_misspelt_field() -> None:
    schema = raycluster_crd_schema()
    if schema is None:
        pytest.skip(f"KubeRay's RayCluster CRD is not at {KUBERAY_CRD} (shared data absent)")
    raycluster = one(render("default"), "RayCluster")
    misspelt: dict[str, Any] = {**raycluster, "spec": {**raycluster["spec"], "rayVerison": "1"}}
    assert unknown_fields(misspelt, schema) == [".spec.rayVerison"]


def test_notes_tell_how_to_reach_router_and_dashboard() -> None:
    notes = render_files()["pdserve/templates/NOTES.txt"]
    assert f"port-forward svc/{FULLNAME}-router 50051:grpc 8000:http" in notes
    assert f"port-forward svc/{FULLNAME}-head-svc 8265:8265" in notes


# --- the pdserve config file -------------------------------------------------------------------


def test_config_yaml_loads_with_pdserve_config(
    config: PdserveConfig, manifests: list[Manifest], preset: str
) -> None:
    assert config.redis.url == REDIS_URL
    assert config.router.grpc_port == 50051
    assert config.router.http_port == 8000
    assert config.worker.grpc_port == 50060
    assert config.worker.nixl_port == 5600
    raycluster = one(manifests, "RayCluster")
    for role in ROLES:
        group = worker_group(raycluster, role)
        bounds = getattr(config.planner, role)
        assert (bounds.min, bounds.max) == (group["minReplicas"], group["maxReplicas"])
    expected_model = preset_values(preset).get("model", {}).get("name", "smollm2-135m-instruct")
    assert config.model.name == expected_model


def test_model_path_in_config_matches_the_environment(
    config: PdserveConfig, manifests: list[Manifest]
) -> None:
    raycluster = one(manifests, "RayCluster")
    router = one(manifests, "Deployment", f"{FULLNAME}-router")["spec"]["template"]
    templates = [router] + [worker_group(raycluster, r)["template"] for r in ROLES]
    for template in templates:
        main = template["spec"]["containers"][0]
        assert env_of(main)["PDSERVE_MODEL_PATH"] == config.model.path
        mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
        assert config.model.path.startswith(mounts["model"])


# --- wiring --------------------------------------------------------------------------------------


def test_every_pdserve_pod_gets_the_redis_url_and_config(manifests: list[Manifest]) -> None:
    seen = set()
    for label, template in pod_specs(manifests):
        if label.endswith("-redis"):
            continue
        main = template["spec"]["containers"][0]
        env = env_of(main)
        assert env["PDSERVE_REDIS_URL"] == REDIS_URL, label
        assert env["PDSERVE_CONFIG"] == "/etc/pdserve/config.yaml", label
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == f"{FULLNAME}-config", label
        seen.add(label)
    assert {"ray-head", "ray-prefill", "ray-decode", f"{FULLNAME}-router"} <= seen


def test_redis_service_serves_the_url(manifests: list[Manifest]) -> None:
    service = one(manifests, "Service", f"{FULLNAME}-redis")
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    statefulset = one(manifests, "StatefulSet", f"{FULLNAME}-redis")
    redis = container(statefulset["spec"]["template"], "redis")
    assert [p["containerPort"] for p in redis["ports"]] == [6379]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_redis_persistence_switches_between_emptydir_and_pvc() -> None:
    off = one(render(), "StatefulSet", f"{FULLNAME}-redis")
    assert {"name": "data", "emptyDir": {}} in off["spec"]["template"]["spec"]["volumes"]
    assert "volumeClaimTemplates" not in off["spec"]
    on = one(
        render(overrides={"redis": {"persistence": {"enabled": True, "size": "2Gi"}}}),
        "StatefulSet",
    )
    assert "volumes" not in on["spec"]["template"]["spec"]
    claim = on["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_external_redis_with_password_secret() -> None:
    url = "rediss://redis.shared.svc:6380/2"
    manifests = render(
        overrides={
            "redis": {
                "enabled": False,
                "external": {"url": url, "passwordSecret": {"name": "redis-auth", "key": "pw"}},
            }
        }
    )
    assert not find(manifests, "StatefulSet")
    assert not find(manifests, "NetworkPolicy", f"{FULLNAME}-redis")
    for label, template in pod_specs(manifests):
        env = env_of(template["spec"]["containers"][0])
        assert env["PDSERVE_REDIS_URL"] == url, label
        secret = {"secretKeyRef": {"name": "redis-auth", "key": "pw"}}
        assert env["PDSERVE_REDIS_PASSWORD"] == secret, label
    configmap = one(manifests, "ConfigMap")
    assert (
        PdserveConfig.from_dict(yaml.safe_load(configmap["data"]["config.yaml"])).redis.url == url
    )


def test_worker_groups_carry_the_pool_resources(manifests: list[Manifest]) -> None:
    raycluster = one(manifests, "RayCluster")
    assert [g["groupName"] for g in raycluster["spec"]["workerGroupSpecs"]] == list(ROLES)
    for role in ROLES:
        group = worker_group(raycluster, role)
        assert ray_custom_resources(group["rayStartParams"]["resources"]) == {f"pdserve_{role}": 1}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    head_params = raycluster["spec"]["headGroupSpec"]["rayStartParams"]
    assert "resources" not in head_params
    assert raycluster["spec"]["enableInTreeAutoscaling"] is False


def test_worker_pods_advertise_their_pod_ip(manifests: list[Manifest]) -> None:
    raycluster = one(manifests, "RayCluster")
    pod_ip = {"fieldRef": {"fieldPath": "status.podIP"}}
    for role in ROLES:
        template = worker_group(raycluster, role)["template"]
        worker = container(template, "ray-worker")
        env = env_of(worker)
        assert env["PDSERVE_ADVERTISE_HOST"] == pod_ip
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == pod_ip
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert ports["worker-grpc"] == 50060
        assert ports["nixl"] == 5600
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]


@pytest.mark.parametrize(("preset_name", "gpus"), [("default", 1), ("cpu-dev", None), ("gpu", 1)])
def test_gpu_requests_follow_the_preset(preset_name: str, gpus: int | None) -> None:
    raycluster = one(render(preset_name), "RayCluster")
    for role in ROLES:
        resources = container(worker_group(raycluster, role)["template"], "ray-worker")["resources"]
        for side in ("requests", "limits"):
            assert resources.get(side, {}).get("nvidia.com/gpu") == gpus, (role, side)
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})


def test_rdma_adds_devices_and_ipc_lock() -> None:
    for preset_name, enabled in (("default", False), ("gpu", True)):
        raycluster = one(render(preset_name), "RayCluster")
        for role in ROLES:
            worker = container(worker_group(raycluster, role)["template"], "ray-worker")
            limits = worker["resources"]["limits"]
            added = worker.get("securityContext", {}).get("capabilities", {}).get("add", [])
            assert ("rdma/hca_shared_devices_a" in limits) is enabled, preset_name
            assert ("IPC_LOCK" in added) is enabled, preset_name
            if enabled:
                assert worker["resources"]["requests"]["rdma/hca_shared_devices_a"] == 1


def test_planner_role_allows_exactly_get_and_patch_on_rayclusters(
    default_manifests: list[Manifest],
) -> None:
    name = f"{FULLNAME}-planner"
    role = one(default_manifests, "Role", name)
    assert len(role["rules"]) == 1
    rule = role["rules"][0]
    assert rule["apiGroups"] == ["ray.io"]
    assert rule["resources"] == ["rayclusters"]
    assert sorted(rule["verbs"]) == ["get", "patch"]
    assert rule.get("resourceNames", [FULLNAME]) == [FULLNAME]
    assert not find(default_manifests, "ClusterRole")
    binding = one(default_manifests, "RoleBinding", name)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    one(default_manifests, "ServiceAccount", name)
    planner = one(default_manifests, "Deployment", name)["spec"]["template"]["spec"]
    assert planner["serviceAccountName"] == name


def test_planner_command_targets_this_raycluster(default_manifests: list[Manifest]) -> None:
    template = one(default_manifests, "Deployment", f"{FULLNAME}-planner")["spec"]["template"]
    raycluster = one(default_manifests, "RayCluster")
    assert container(template, "planner")["command"] == [
        "pdserve",
        "planner",
        "--config",
        "/etc/pdserve/config.yaml",
        "--raycluster",
        raycluster["metadata"]["name"],
        "--namespace",
        NAMESPACE,
        "--ray-address",
        f"ray://{raycluster['metadata']['name']}-head-svc:10001",
    ]
    head = container(raycluster["spec"]["headGroupSpec"]["template"], "ray-head")
    assert {"name": "client", "containerPort": 10001} in head["ports"]


def test_planner_can_be_turned_off() -> None:
    manifests = render("cpu-dev")
    assert not find(manifests, "Deployment", f"{FULLNAME}-planner")
    assert not find(manifests, "Role")


def test_router_ports_probes_and_service_agree(manifests: list[Manifest]) -> None:
    deployment = one(manifests, "Deployment", f"{FULLNAME}-router")
    template = deployment["spec"]["template"]
    router = container(template, "router")
    assert router["command"] == ["pdserve", "router", "--config", "/etc/pdserve/config.yaml"]
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert ports == {"grpc": 50051, "http": 8000}
    for probe in ("livenessProbe", "readinessProbe"):
        assert router[probe]["grpc"] == {"port": ports["grpc"]}
    service = one(manifests, "Service", f"{FULLNAME}-router")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: p["port"] for n, p in by_name.items()} == ports
    assert all(p["targetPort"] == n for n, p in by_name.items())
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()


def test_router_hpa_owns_the_replica_count(manifests: list[Manifest], preset: str) -> None:
    deployment = one(manifests, "Deployment", f"{FULLNAME}-router")
    hpas = find(manifests, "HorizontalPodAutoscaler")
    if preset == "cpu-dev":
        assert not hpas
        assert deployment["spec"]["replicas"] == 1
        return
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]


def test_network_policies_admit_only_release_pods(manifests: list[Manifest]) -> None:
    member = {"pdserve.io/member": FULLNAME}
    for label, template in pod_specs(manifests):
        assert member.items() <= template["metadata"]["labels"].items(), label

    redis_policy = one(manifests, "NetworkPolicy", f"{FULLNAME}-redis")
    (rule,) = redis_policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": member}}]
    assert [p["port"] for p in rule["ports"]] == [6379]

    ray_policy = one(manifests, "NetworkPolicy", f"{FULLNAME}-ray")
    assert ray_policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": FULLNAME}
    rule = ray_policy["spec"]["ingress"][0]
    assert rule["from"][0] == {"podSelector": {"matchLabels": member}}
    allowed = {p["port"] for p in rule["ports"]}
    raycluster = one(manifests, "RayCluster")
    head = container(raycluster["spec"]["headGroupSpec"]["template"], "ray-head")
    container_ports = {p["containerPort"] for p in head["ports"]}
    for role in ROLES:
        worker = container(worker_group(raycluster, role)["template"], "ray-worker")
        container_ports |= {p["containerPort"] for p in worker["ports"]}
    assert container_ports <= allowed
    assert {50060, 5600, 6379, 10001, 8265, 8080} <= allowed
    params = raycluster["spec"]["headGroupSpec"]["rayStartParams"]
    for key in ("node-manager-port", "object-manager-port", "runtime-env-agent-port"):
        assert int(params[key]) in allowed, key
    worker_range = [p for p in rule["ports"] if "endPort" in p]
    assert [(p["port"], p["endPort"]) for p in worker_range] == [
        (int(params["min-worker-port"]), int(params["max-worker-port"]))
    ]


def test_pod_disruption_budgets_select_their_pods(manifests: list[Manifest], preset: str) -> None:
    budgets = {b["metadata"]["name"]: b for b in find(manifests, "PodDisruptionBudget")}
    if preset == "cpu-dev":
        assert budgets == {}
        return
    assert set(budgets) == {f"{FULLNAME}-router", f"{FULLNAME}-prefill", f"{FULLNAME}-decode"}
    router_labels = one(manifests, "Deployment", f"{FULLNAME}-router")["spec"]["template"][
        "metadata"
    ]["labels"]
    selector = budgets[f"{FULLNAME}-router"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= router_labels.items()
    for role in ROLES:
        selector = budgets[f"{FULLNAME}-{role}"]["spec"]["selector"]["matchLabels"]
        assert selector == {"ray.io/cluster": FULLNAME, "ray.io/group": role}


def test_router_planner_and_redis_run_as_non_root(manifests: list[Manifest]) -> None:
    for label, template in pod_specs(manifests):
        if label.startswith("ray-"):
            continue
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, label
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (label, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (label, c["name"])


def test_service_monitors_follow_the_switch(manifests: list[Manifest], preset: str) -> None:
    monitors = find(manifests, "ServiceMonitor")
    if preset != "gpu":
        assert not monitors
        return
    endpoints = {m["metadata"]["name"]: m["spec"]["endpoints"][0] for m in monitors}
    assert endpoints[f"{FULLNAME}-router"]["port"] == "http"
    assert endpoints[f"{FULLNAME}-router"]["path"] == "/metrics"
    assert endpoints[f"{FULLNAME}-ray-head"]["port"] == "metrics"
    head = container(one(manifests, "RayCluster")["spec"]["headGroupSpec"]["template"], "ray-head")
    assert {"name": "metrics", "containerPort": 8080} in head["ports"]


# --- model sources -----------------------------------------------------------------------------


def _worker_template(manifests: list[Manifest]) -> Manifest:
    template: Manifest = worker_group(one(manifests, "RayCluster"), "decode")["template"]
    return template


def test_model_from_a_pvc() -> None:
    manifests = render(
        overrides={"model": {"source": "pvc", "pvc": {"claimName": "models", "path": "llama"}}}
    )
    for template in (
        _worker_template(manifests),
        one(manifests, "Deployment", f"{FULLNAME}-router")["spec"]["template"],
    ):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["model"]["persistentVolumeClaim"] == {
            "claimName": "models",
            "readOnly": True,
        }
        assert "initContainers" not in template["spec"]
        assert env_of(template["spec"]["containers"][0])["PDSERVE_MODEL_PATH"] == "/models/llama"


def test_model_from_a_host_path() -> None:
    manifests = render(overrides={"model": {"source": "hostPath", "hostPath": {"path": "/data/m"}}})
    template = _worker_template(manifests)
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["model"]["hostPath"] == {"path": "/data/m", "type": "Directory"}
    assert env_of(template["spec"]["containers"][0])["PDSERVE_MODEL_PATH"] == "/models"


def test_model_download_init_containers() -> None:
    manifests = render("gpu")
    (init,) = _worker_template(manifests)["spec"]["initContainers"]
    assert init["command"][:5] == [
        "hf",
        "download",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--local-dir",
        "/models/model",
    ]
    assert "--include" not in init["command"]
    assert env_of(init)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    router_spec = one(manifests, "Deployment", f"{FULLNAME}-router")["spec"]["template"]["spec"]
    (router_init,) = router_spec["initContainers"]
    assert "--include" in router_init["command"]
    assert "*.safetensors" not in router_init["command"]


# --- cross-field checks the schema cannot express ----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"ray": {"prefill": {"replicas": 5}}},
            "ray.prefill.replicas (5) must lie within ray.prefill.minReplicas..maxReplicas (1..4)",
        ),
        (
            {"ray": {"decode": {"minReplicas": 3, "maxReplicas": 2, "replicas": 2}}},
            "ray.decode.minReplicas (3) must not exceed ray.decode.maxReplicas (2)",
        ),
        (
            {"redis": {"heartbeatSeconds": 5.0, "ttlSeconds": 5.0}},
            "redis.ttlSeconds must exceed redis.heartbeatSeconds",
        ),
    ],
)
def test_inconsistent_values_fail_to_render(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(overrides=overrides)
