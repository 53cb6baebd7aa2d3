"""values.schema.json rejects bad values with a message naming the field, and values.yaml
documents every knob the schema knows."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml
from helm_chart_support import CHART_DIR, PRESETS, load_chart, preset_values

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_satisfy_the_schema(preset: str) -> None:
    load_chart().validate_schema(preset_values(preset))


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        ({"ray": {"prefill": {"replicas": -1}}}, "/ray/prefill/replicas", "minimum"),
        ({"ray": {"decode": {"maxReplicas": 0}}}, "/ray/decode/maxReplicas", "minimum"),
        ({"router": {"replicas": 0}}, "/router/replicas", "minimum"),
        ({"model": {"source": None}}, "/model", "missing property 'source'"),
        ({"model": {"source": "s3"}}, "/model/source", "value must be one of"),
        ({"model": {"download": {"modelId": ""}}}, "/model/download/modelId", "minLength"),
        ({"model": {"source": "pvc"}}, "/model/pvc/claimName", "minLength"),
        ({"model": {"source": "hostPath"}}, "/model/hostPath/path", "minLength"),
        ({"modle": {"name": "x"}}, "", "additional properties 'modle' not allowed"),
        ({"router": {"grpcPrt": 1}}, "/router", "additional properties 'grpcPrt' not allowed"),
        (
            {"ray": {"prefill": {"gpu": 1}}},
            "/ray/prefill",
            "additional properties 'gpu' not allowed",
        ),
        ({"worker": {"nixlPort": 70000}}, "/worker/nixlPort", "maximum"),
        ({"redis": {"enabled": False}}, "/redis/external/url", "minLength"),
        ({"ray": {"rdma": {"resourceName": "rdma"}}}, "/ray/rdma/resourceName", "pattern"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(
    values: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        load_chart().validate_schema(values)
    message = str(caught.value)
    assert f"at '{field}'" in message, message
    assert reason in message, message


def test_install_refuses_bad_values_before_rendering() -> None:
    with pytest.raises(helm.HelmValuesError, match=r"/ray/decode/replicas': minimum"):
        load_chart().render({"ray": {"decode": {"replicas": -2}}}, name="demo")


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths[path] = sub
        if sub.get("additionalProperties") is False:
            paths.update(_schema_paths(sub, f"{path}."))
    return paths


def _values_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        paths.add(f"{prefix}{key}")
        if isinstance(value, dict):
            paths |= _values_paths(value, f"{prefix}{key}.")
    return paths


def test_every_schema_knob_has_a_default_in_values_yaml() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    knobs = {p for p in _schema_paths(SCHEMA) if ".resources." not in p} - {"global"}
    missing = sorted(knobs - _values_paths(defaults))
    assert not missing, f"knobs without a default in values.yaml: {missing}"


def test_every_knob_in_values_yaml_is_documented() -> None:
    """Each key the schema names has a comment right above it (or above its comment block)."""
    knobs = set(_schema_paths(SCHEMA))
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if path not in knobs or path.endswith(("resources.requests", "resources.limits")):
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            undocumented.append(path)
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"
