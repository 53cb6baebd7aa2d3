"""RayActuator and the Ray metrics export against a real local Ray (slow start: one per module).

The pool manager here is a stand-in actor with the interface the real one offers (``scale``,
``sizes``), so these tests start no engine; the real pool manager (real worker actors and
engines) is driven through ``RayActuator`` in tests/ray_runtime/test_ray_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pdserve.planner.actuators import (
    POOL_MANAGER_NAME,
    RAY_NAMESPACE,
    ActuatorError,
    RayActuator,
)
from pdserve.planner.runner import PlannerMetrics

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_pool_manager() -> Iterator[Any]:
    started_here = not ray.is_initialized()
    if started_here:
        # Ray gives its raylet a fixed 30 s to register; on a loaded 2-core machine that can run
        # out, so a start that timed out is tried again (a real failure fails all three).
        for attempt in range(3):
            try:
                ray.init(
                    num_cpus=1,
                    include_dashboard=False,
                    namespace=RAY_NAMESPACE,
                    log_to_driver=False,
                )
                break
            except Exception as exc:
                if "timed out during startup" not in str(exc) or attempt == 2:
                    raise
                ray.shutdown()

    @ray.remote(num_cpus=0)
    class Pools:
        def __init__(self) -> None:
            self.pools = {"prefill": 1, "decode": 1}

        async def scale(self, role: str, n: int) -> None:
            if role not in self.pools:
                raise ValueError(f"no pool {role}")
            self.pools[role] = n

        async def sizes(self) -> dict[str, int]:
            return dict(self.pools)

    handle = Pools.options(  # type: ignore[attr-defined]
        name=POOL_MANAGER_NAME, namespace=RAY_NAMESPACE, lifetime="detached"
    ).remote()
    try:
        yield handle
    finally:
        ray.kill(handle)
        if started_here:
            ray.shutdown()


async def test_actor_handle_methods_are_called_remotely_and_awaited(ray_pool_manager: Any) -> None:
    actuator = RayActuator(ray_pool_manager)
    assert await actuator.current() == {"prefill": 1, "decode": 1}
    await actuator.scale("decode", 3)
    assert await actuator.current() == {"prefill": 1, "decode": 3}


async def test_connect_finds_the_detached_pool_manager(ray_pool_manager: Any) -> None:
    actuator = RayActuator.connect()
    await actuator.scale("prefill", 2)
    assert (await actuator.current())["prefill"] == 2
    with pytest.raises(ActuatorError, match="no pool manager actor 'missing'"):
        RayActuator.connect(name="missing")


def test_metrics_export_to_ray_when_initialized(ray_pool_manager: Any) -> None:
    metrics = PlannerMetrics()
    assert metrics.exports_to_ray
    metrics.record({"prefill": 2, "decode": 3}, {"prefill": 1, "decode": 3})
    assert metrics.values[("prefill", "desired")] == 2
