"""``pdserve planner`` argument handling: which actuator it builds, and that with --raycluster and
--ray-address a scale-down drains through the pool manager before the RayCluster is patched.

The Kubernetes API is the local HTTP stand-in of test_planner_kubernetes.py; the pool manager is a
plain object with the actor's ``drain`` (no Ray is started here).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from test_planner_kubernetes import NAME, NAMESPACE, StandIn, serving

from pdserve.cli import build_parser
from pdserve.planner.actuators import (
    POOL_MANAGER_NAME,
    RAY_NAMESPACE,
    ActuatorError,
    KubernetesActuator,
)
from pdserve.planner.cli import PoolManagerDrainer, build_actuator

RAY_ADDRESS = "ray://pdserve-head-svc:10001"


class FakePoolManager:
    """The pool manager's ``drain`` as the planner calls it."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    async def drain(self, role: str, count: int) -> list[str]:
        self.calls.append((role, count))
        if self.fail:
            raise RuntimeError("the pool manager actor died")
        return [f"{NAME}-{role}-worker-{i:05d}" for i in range(count)]


class Lookups:
    """A ``pool_manager_lookup`` that records its calls and hands out one fake manager."""

    def __init__(self, manager: FakePoolManager) -> None:
        self.manager = manager
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, address: str, name: str, namespace: str) -> FakePoolManager:
        self.calls.append((address, name, namespace))
        return self.manager


@pytest.fixture
def apiserver() -> Iterator[StandIn]:
    with serving(StandIn()) as state:
        yield state


def _args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["planner", *extra])


def _kube(apiserver: StandIn, args: argparse.Namespace, lookup: Lookups) -> KubernetesActuator:
    api = client.ApiClient(client.Configuration(host=apiserver.url))
    actuator, kube = build_actuator(args, api_client=api, pool_manager_lookup=lookup)
    assert isinstance(kube, KubernetesActuator)
    assert actuator is kube
    return kube


def _patches(state: StandIn) -> list[Any]:
    return [r.body for r in state.requests if r.method == "PATCH"]


async def test_raycluster_with_ray_address_drains_before_the_patch(apiserver: StandIn) -> None:
    lookup = Lookups(FakePoolManager())
    args = _args("--raycluster", NAME, "--namespace", NAMESPACE, "--ray-address", RAY_ADDRESS)
    kube = _kube(apiserver, args, lookup)
    try:
        await kube.scale("prefill", 3)  # a scale-up needs no pool manager
        assert lookup.calls == []
        await kube.scale("decode", 1)  # decode: 2 -> 1
        await kube.scale("prefill", 1)  # prefill: 3 -> 1
    finally:
        kube.close()
    assert lookup.calls == [(RAY_ADDRESS, POOL_MANAGER_NAME, RAY_NAMESPACE)]  # looked up once
    assert lookup.manager.calls == [("decode", 1), ("prefill", 2)]
    groups = {g["groupName"]: g for g in apiserver.obj["spec"]["workerGroupSpecs"]}
    assert groups["decode"]["replicas"] == 1
    assert groups["decode"]["scaleStrategy"]["workersToDelete"] == [
        f"{NAME}-decode-worker-00000"
    ]
    assert groups["prefill"]["replicas"] == 1
    assert groups["prefill"]["scaleStrategy"]["workersToDelete"] == [
        f"{NAME}-prefill-worker-00000", f"{NAME}-prefill-worker-00001"
    ]


async def test_raycluster_alone_does_not_drain_and_says_so(
    apiserver: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    lookup = Lookups(FakePoolManager())
    with caplog.at_level(logging.WARNING, logger="pdserve.planner.cli"):
        kube = _kube(apiserver, _args("--raycluster", NAME, "--namespace", NAMESPACE), lookup)
    try:
        await kube.scale("decode", 1)
    finally:
        kube.close()
    assert "scale-downs do not drain" in caplog.text
    assert lookup.calls == []
    (patch,) = _patches(apiserver)
    assert not any(op["path"].endswith("/scaleStrategy") for op in patch)


async def test_a_failed_drain_patches_nothing_and_looks_up_again(apiserver: StandIn) -> None:
    lookup = Lookups(FakePoolManager(fail=True))
    args = _args("--raycluster", NAME, "--namespace", NAMESPACE, "--ray-address", RAY_ADDRESS)
    kube = _kube(apiserver, args, lookup)
    try:
        for _ in range(2):
            with pytest.raises(ActuatorError, match="draining 1 decode worker"):
                await kube.scale("decode", 1)
    finally:
        kube.close()
    assert _patches(apiserver) == []
    assert len(lookup.calls) == 2  # the handle is dropped after a failed call


async def test_a_missing_pool_manager_is_an_actuator_error() -> None:
    def missing(address: str, name: str, namespace: str) -> Any:
        raise ActuatorError(f"no pool manager actor {name!r}")

    drainer = PoolManagerDrainer(RAY_ADDRESS, lookup=missing)
    with pytest.raises(ActuatorError, match="no pool manager actor"):
        await drainer.drain("prefill", 1)


def test_a_drainer_needs_an_address() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        PoolManagerDrainer("")


def test_dry_run_without_ray_builds_no_actuator() -> None:
    assert build_actuator(_args("--dry-run")) == (None, None)
