"""KubernetesActuator against a local HTTP stand-in for the Kubernetes API server.

No cluster can run here, so a small ``http.server`` on 127.0.0.1 plays the API server: it serves
one RayCluster at ``/apis/ray.io/v1/namespaces/<ns>/rayclusters/<name>``, applies JSON patches
(test/replace/add) to it, records every request, and can be told to answer 403 or 409.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from pdserve.planner.actuators import (
    ActuatorError,
    ConflictError,
    KubernetesActuator,
    RBACError,
)

NAMESPACE = "serving"
NAME = "pdserve"
PATH = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayclusters/{NAME}"


def raycluster() -> dict[str, Any]:
    # decode listed first, so the prefill group's index is 1
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": "1"},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}},
            "workerGroupSpecs": [
                {"groupName": "decode", "replicas": 2, "minReplicas": 0, "maxReplicas": 8},
                {"groupName": "prefill", "replicas": 1, "minReplicas": 0, "maxReplicas": 8},
            ],
        },
    }


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str
    body: Any


@dataclass
class StandIn:
    """State of the stand-in API server."""

    url: str = ""
    obj: dict[str, Any] = field(default_factory=raycluster)
    requests: list[Recorded] = field(default_factory=list)
    forbid: set[str] = field(default_factory=set)
    """Methods answered 403."""
    patch_statuses: list[int] = field(default_factory=list)
    """Statuses forced on the next PATCHes, in order (then normal handling)."""
    before_patch: Callable[[dict[str, Any]], None] | None = None
    """Mutates the stored object before the next PATCH is applied (a concurrent writer)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _apply_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for op in ops:
        *parents, last = op["path"].lstrip("/").split("/")
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            if node[key] != op["value"]:
                raise ValueError(f"test failed at {op['path']}: {node[key]!r} != {op['value']!r}")
        elif op["op"] == "replace":
            if isinstance(node, dict) and key not in node:
                raise ValueError(f"replace of missing {op['path']}")
            node[key] = op["value"]
        elif op["op"] == "add":
            node[key] = op["value"]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return out


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                state.requests.append(
                    Recorded(self.command, self.path, self.headers.get("Content-Type", ""), body)
                )
                if self.command in state.forbid:
                    verb = self.command.lower()
                    self._send(403, _status(403, "Forbidden", f'rayclusters.ray.io "{NAME}" is '
                               f'forbidden: cannot {verb} resource "rayclusters"'))
                    return
                if self.path.split("?")[0] != PATH:
                    self._send(404, _status(404, "NotFound", "not found"))
                    return
                if self.command == "GET":
                    self._send(200, state.obj)
                    return
                if self.command != "PATCH":
                    self._send(405, _status(405, "MethodNotAllowed", self.command))
                    return
                if state.patch_statuses:
                    code = state.patch_statuses.pop(0)
                    self._send(code, _status(code, "Conflict", "the object has been modified"))
                    return
                if state.before_patch is not None:
                    state.before_patch(state.obj)
                    state.before_patch = None
                try:
                    patched = _apply_patch(state.obj, body or [])
                except (ValueError, KeyError, IndexError) as exc:
                    self._send(422, _status(422, "Invalid", str(exc)))
                    return
                version = int(state.obj["metadata"]["resourceVersion"]) + 1
                patched["metadata"]["resourceVersion"] = str(version)
                state.obj = patched
                self._send(200, state.obj)

        do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _handle

    return Handler


@contextlib.contextmanager
def serving(state: StandIn) -> Iterator[StandIn]:
    """Serves ``state`` on a free loopback port (``state.url``) while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def apiserver() -> Iterator[StandIn]:
    with serving(StandIn()) as state:
        yield state
    # whatever a test did, the actuator used only GET and PATCH on the RayCluster
    assert {r.method for r in state.requests} <= {"GET", "PATCH"}
    prefix = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayclusters/"
    assert all(r.path.startswith(prefix) for r in state.requests)


@pytest.fixture
def actuator(apiserver: StandIn) -> Iterator[KubernetesActuator]:
    configuration = client.Configuration(host=apiserver.url)
    act = KubernetesActuator(
        NAME, NAMESPACE, api_client=client.ApiClient(configuration), retry_backoff_s=0.0,
        max_retries=3,
    )
    try:
        yield act
    finally:
        act.close()


def methods(state: StandIn) -> list[str]:
    return [r.method for r in state.requests]


async def test_current_reads_replicas_by_group_name(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    assert await actuator.current() == {"prefill": 1, "decode": 2}
    assert methods(apiserver) == ["GET"]


async def test_scale_sends_one_json_patch(apiserver: StandIn, actuator: KubernetesActuator) -> None:
    await actuator.scale("prefill", 3)
    assert methods(apiserver) == ["GET", "PATCH"]
    patch = apiserver.requests[1]
    assert patch.path == PATH
    assert patch.content_type == "application/json-patch+json"
    assert patch.body == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "prefill"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 3},
    ]
    assert await actuator.current() == {"prefill": 3, "decode": 2}


async def test_scale_to_the_current_size_sends_no_patch(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    await actuator.scale("decode", 2)
    assert methods(apiserver) == ["GET"]


async def test_conflict_rereads_and_retries(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    apiserver.patch_statuses = [409, 409]
    await actuator.scale("decode", 5)
    assert methods(apiserver) == ["GET", "PATCH", "GET", "PATCH", "GET", "PATCH"]
    assert apiserver.obj["spec"]["workerGroupSpecs"][0]["replicas"] == 5


async def test_conflict_gives_up_after_the_retries(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    apiserver.patch_statuses = [409] * 10
    with pytest.raises(ConflictError, match="4 PATCH attempts"):
        await actuator.scale("decode", 5)
    assert methods(apiserver).count("PATCH") == 4
    assert apiserver.obj["spec"]["workerGroupSpecs"][0]["replicas"] == 2


async def test_reordered_groups_fail_the_test_op_and_retry_at_the_new_index(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    def reorder(obj: dict[str, Any]) -> None:
        obj["spec"]["workerGroupSpecs"].reverse()

    apiserver.before_patch = reorder
    await actuator.scale("prefill", 4)
    groups = {g["groupName"]: g["replicas"] for g in apiserver.obj["spec"]["workerGroupSpecs"]}
    assert groups == {"prefill": 4, "decode": 2}  # the decode group was never touched
    patches = [r.body for r in apiserver.requests if r.method == "PATCH"]
    assert [p[1]["path"] for p in patches] == [
        "/spec/workerGroupSpecs/1/replicas",
        "/spec/workerGroupSpecs/0/replicas",
    ]


async def test_forbidden_patch_names_the_missing_verb(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    apiserver.forbid = {"PATCH"}
    with pytest.raises(RBACError, match=r"may not 'patch' rayclusters\.ray\.io") as info:
        await actuator.scale("prefill", 2)
    assert info.value.verb == "patch"
    assert "[get, patch]" in str(info.value)
    assert methods(apiserver) == ["GET", "PATCH"]  # no retry on 403


async def test_forbidden_get_names_the_missing_verb(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    apiserver.forbid = {"GET"}
    with pytest.raises(RBACError, match="may not 'get'"):
        await actuator.current()


async def test_missing_raycluster_is_a_clear_error(apiserver: StandIn) -> None:
    act = KubernetesActuator(
        "other", NAMESPACE, api_client=client.ApiClient(client.Configuration(host=apiserver.url))
    )
    try:
        with pytest.raises(ActuatorError, match="RayCluster serving/other not found"):
            await act.current()
    finally:
        act.close()


async def test_replicas_outside_the_group_bounds_are_refused(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    with pytest.raises(ActuatorError, match=r"\[minReplicas, maxReplicas\] = \[0, 8\]"):
        await actuator.scale("decode", 9)
    assert "PATCH" not in methods(apiserver)


async def test_scale_down_drains_first_and_names_the_pods(apiserver: StandIn) -> None:
    events: list[str] = []

    class PoolManager:
        async def drain(self, role: str, count: int) -> list[str]:
            events.append(f"drain {role} {count} after {methods(apiserver)}")
            return ["pdserve-decode-worker-abc", "pdserve-decode-worker-def"][:count]

    act = KubernetesActuator(
        NAME, NAMESPACE, api_client=client.ApiClient(client.Configuration(host=apiserver.url)),
        drainer=PoolManager(),
    )
    try:
        await act.scale("decode", 1)
    finally:
        act.close()
    assert events == ["drain decode 1 after ['GET']"]
    assert methods(apiserver) == ["GET", "PATCH"]
    assert apiserver.requests[1].body[2] == {
        "op": "add",
        "path": "/spec/workerGroupSpecs/0/scaleStrategy",
        "value": {"workersToDelete": ["pdserve-decode-worker-abc"]},
    }
    group = apiserver.obj["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 1
    assert group["scaleStrategy"]["workersToDelete"] == ["pdserve-decode-worker-abc"]


async def test_bad_arguments_are_rejected_before_any_call(
    apiserver: StandIn, actuator: KubernetesActuator
) -> None:
    with pytest.raises(ValueError, match="unknown pool"):
        await actuator.scale("router", 1)
    with pytest.raises(ValueError, match="replicas"):
        await actuator.scale("decode", -1)
    assert apiserver.requests == []
