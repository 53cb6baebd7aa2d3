"""Rendering the pdserve chart for the chart tests, offline, through Helm's own Go SDK.

Renders are cached per (preset, overrides) so that every test module shares them. The chart is
never installed: no Kubernetes cluster runs where these tests run.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "pdserve"
KUBERAY_CRD = REPO_ROOT.parent / "shared" / "data" / "kuberay" / "ray.io_rayclusters.yaml"

RELEASE = "demo"
NAMESPACE = "serving"
FULLNAME = "demo-pdserve"

PRESETS = ("default", "cpu-dev", "gpu")
"""`default` is values.yaml alone; the others add values-<name>.yaml."""

Manifest = dict[str, Any]


def preset_values(preset: str) -> dict[str, Any]:
    """The values file of a preset, parsed (empty for the defaults)."""
    if preset == "default":
        return {}
    loaded = yaml.safe_load((CHART_DIR / f"values-{preset}.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base`` (like a second ``-f`` file); neither is modified."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def chart_kube_version() -> str:
    """The lowest Kubernetes version the chart declares (Chart.yaml kubeVersion), e.g. 1.29.0."""
    declared = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", declared)
    assert match, f"unexpected kubeVersion constraint {declared!r}"
    return match.group(1)


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def load_chart() -> helm.Chart:
    """The chart, loaded once per test session."""
    return _chart()


@functools.cache
def _render(preset: str, overrides_json: str) -> tuple[tuple[str, str], ...]:
    values = deep_merge(preset_values(preset), json.loads(overrides_json))
    rendered = load_chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return tuple(sorted(rendered.items()))


def render_files(
    preset: str = "default", overrides: dict[str, Any] | None = None
) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    return dict(_render(preset, json.dumps(overrides or {}, sort_keys=True)))


def render(preset: str = "default", overrides: dict[str, Any] | None = None) -> list[Manifest]:
    """Every Kubernetes object the chart renders for a preset plus overrides."""
    manifests: list[Manifest] = []
    for path, text in render_files(preset, overrides).items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests.append(doc)
    return manifests


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """The objects of one kind (and name, when given)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The single object of one kind (and name); fails when there are none or several."""
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(label, pod template) of every workload: Deployments, StatefulSets, Ray head and groups."""
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet"):
            yield m["metadata"]["name"], m["spec"]["template"]
        elif m["kind"] == "RayCluster":
            yield "ray-head", m["spec"]["headGroupSpec"]["template"]
            for group in m["spec"]["workerGroupSpecs"]:
                yield f"ray-{group['groupName']}", group["template"]


def container(template: Manifest, name: str) -> Manifest:
    """The container of a pod template with this name."""
    matches = [c for c in template["spec"]["containers"] if c["name"] == name]
    assert len(matches) == 1, f"no single container {name!r}"
    return matches[0]


def env_of(container_spec: Manifest) -> dict[str, Any]:
    """Environment of a container: name -> value, or the valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_spec.get("env", [])}


def worker_group(raycluster: Manifest, role: str) -> Manifest:
    """The worker group of the RayCluster named ``role``."""
    groups = [g for g in raycluster["spec"]["workerGroupSpecs"] if g["groupName"] == role]
    assert len(groups) == 1, f"no single worker group {role!r}"
    return groups[0]


def ray_custom_resources(start_param: str) -> dict[str, Any]:
    """Decodes KubeRay's ``resources`` rayStartParam: a JSON object inside double quotes."""
    assert start_param.startswith('"') and start_param.endswith('"'), start_param
    decoded: dict[str, Any] = json.loads(json.loads(start_param))
    return decoded


def unknown_fields(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of fields an API server would prune: keys that a structural schema does not list.

    JSON-schema validation alone accepts them (CRD schemas do not forbid extra properties),
    so a misspelt RayCluster field would be dropped silently on a real cluster.
    """
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(instance, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, value in instance.items():
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], f"{path}.{key}")
            elif isinstance(additional, dict):
                found += unknown_fields(value, additional, f"{path}.{key}")
            elif properties is not None or additional is False:
                found.append(f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


@functools.cache
def raycluster_crd_schema() -> dict[str, Any] | None:
    """The openAPIV3Schema of KubeRay's RayCluster v1, or None when the CRD file is absent."""
    if not KUBERAY_CRD.is_file():
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=loader)
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"{KUBERAY_CRD} has no v1 version")
