"""The planner loop, the Ray actuator over a plain async pool manager, and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from pdserve.config import PlannerConfig, PoolBounds, SLOConfig
from pdserve.planner.actuators import ActuatorError, RayActuator
from pdserve.planner.cli import add_parser
from pdserve.planner.policy import PlannerPolicy
from pdserve.planner.runner import PlannerMetrics, PlannerRunner
from pdserve.planner.signals import FleetSignals, RequestRecord, publish_request_record

SLO = SLOConfig(ttft_ms=2000, itl_ms=200)
CONFIG = PlannerConfig(
    interval_s=10, cooldown_s=60, prefill=PoolBounds(1, 8), decode=PoolBounds(1, 8),
    max_total_workers=16,
)


def busy(rate: float, t: float = 0.0, replicas: dict[str, int] | None = None) -> FleetSignals:
    return FleetSignals(
        at_s=t, window_s=30, ttft_slo_s=2.0, itl_slo_s=0.2, num_requests=round(30 * rate),
        arrival_rate_rps=rate, mean_prompt_tokens=100, mean_output_tokens=50,
        ttft_p90_s=0.5, itl_p90_s=0.15, replicas=replicas or {"prefill": 1, "decode": 1},
    )


class ScriptedSource:
    def __init__(self, signals: Sequence[FleetSignals]) -> None:
        self._signals = list(signals)
        self.reads = 0

    async def read(self) -> FleetSignals:
        self.reads += 1
        return self._signals[min(self.reads, len(self._signals)) - 1]


class PoolManager:
    """A pool manager with plain async methods (the shape the Ray actor will have)."""

    def __init__(self, prefill: int, decode: int, fail: bool = False) -> None:
        self.pools = {"prefill": prefill, "decode": decode}
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    async def scale(self, role: str, n: int) -> None:
        self.calls.append((role, n))
        if self.fail:
            raise ActuatorError("pool manager unavailable")
        self.pools[role] = n

    async def sizes(self) -> dict[str, int]:
        return dict(self.pools)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_step_applies_decision_shrinking_first() -> None:
    manager = PoolManager(prefill=1, decode=5)
    runner = PlannerRunner(
        ScriptedSource([busy(3.0)]), PlannerPolicy(CONFIG, SLO), RayActuator(manager),
        clock=Clock(),
    )
    decision = await runner.step()
    # 300 tok/s / 88 -> 4 prefill; 30 streams (+5.5 headroom) / 4.8 -> 8 decode
    assert decision.targets == {"prefill": 4, "decode": 8}
    assert manager.pools == {"prefill": 4, "decode": 8}
    assert runner.metrics.values == {
        ("prefill", "desired"): 4, ("decode", "desired"): 8,
        ("prefill", "actual"): 1, ("decode", "actual"): 5,
    }
    assert not runner.metrics.exports_to_ray

    manager2 = PoolManager(prefill=6, decode=1)
    runner2 = PlannerRunner(
        ScriptedSource([busy(3.0)]), PlannerPolicy(CONFIG, SLO), RayActuator(manager2),
        clock=Clock(),
    )
    await runner2.step()
    assert manager2.calls == [("prefill", 5), ("decode", 8)]  # the shrink goes first


async def test_cooldown_follows_applied_changes() -> None:
    clock = Clock()
    manager = PoolManager(prefill=1, decode=1)
    runner = PlannerRunner(
        ScriptedSource([busy(1.0), busy(0.2)]), PlannerPolicy(CONFIG, SLO), RayActuator(manager),
        clock=clock,
    )
    await runner.step()
    assert manager.pools == {"prefill": 2, "decode": 3}
    clock.now += 30
    decision = await runner.step()
    assert "cooldown 30s left" in decision.pools["prefill"].reason
    assert manager.pools == {"prefill": 2, "decode": 3}
    clock.now += 30
    await runner.step()
    assert manager.pools == {"prefill": 1, "decode": 2}


async def test_failed_scale_is_logged_and_not_put_in_cooldown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    manager = PoolManager(prefill=1, decode=3, fail=True)
    policy = PlannerPolicy(CONFIG, SLO)
    runner = PlannerRunner(ScriptedSource([busy(1.0)]), policy, RayActuator(manager), clock=clock)
    with caplog.at_level(logging.ERROR, logger="pdserve.planner.runner"):
        await runner.step()
    assert "scaling prefill to 2 failed: pool manager unavailable" in caplog.text
    assert policy.cooldown_left_s("prefill", clock.now) == 0.0
    clock.now += 10
    manager.fail = False
    await runner.step()
    assert manager.pools["prefill"] == 2


async def test_dry_run_prints_and_changes_nothing() -> None:
    lines: list[str] = []
    manager = PoolManager(prefill=1, decode=1)
    runner = PlannerRunner(
        ScriptedSource([busy(3.0)]), PlannerPolicy(CONFIG, SLO), RayActuator(manager),
        dry_run=True, echo=lines.append, clock=Clock(),
    )
    await runner.step()
    assert manager.calls == []
    assert lines == [
        "[dry-run] prefill: 1->4 (scale up; load 300 tok/s vs 110 tok/s per worker); "
        "decode: 1->8 (scale up; 30.0 streams (+headroom 35.5) vs 6 per worker)"
    ]


async def test_dry_run_without_actuator_uses_registered_replicas() -> None:
    lines: list[str] = []
    signals = busy(1.0, replicas={"prefill": 2, "decode": 3})
    runner = PlannerRunner(
        ScriptedSource([signals]), PlannerPolicy(CONFIG, SLO), None, dry_run=True,
        echo=lines.append,
    )
    decision = await runner.step()
    assert decision.current == {"prefill": 2, "decode": 3}
    assert not decision.changed
    with pytest.raises(ValueError, match="actuator is required"):
        PlannerRunner(ScriptedSource([signals]), PlannerPolicy(CONFIG, SLO), None)


async def test_run_paces_rounds_and_stops() -> None:
    source = ScriptedSource([busy(1.0)])
    runner = PlannerRunner(
        source, PlannerPolicy(CONFIG, SLO), RayActuator(PoolManager(1, 1)), interval_s=0.05,
    )
    started = time.monotonic()
    await runner.run(max_steps=3)
    assert source.reads == 3
    assert time.monotonic() - started >= 0.09  # two waits between three rounds

    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + 5
    while source.reads < 5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_run_survives_a_failing_round(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(ScriptedSource):
        async def read(self) -> FleetSignals:
            await super().read()
            if self.reads == 1:
                raise ConnectionError("redis went away")
            return busy(1.0)

    source = Flaky([busy(1.0)])
    manager = PoolManager(1, 1)
    runner = PlannerRunner(
        source, PlannerPolicy(CONFIG, SLO), RayActuator(manager), interval_s=0.01,
    )
    with caplog.at_level(logging.ERROR):
        await runner.run(max_steps=2)
    assert "redis went away" in caplog.text
    assert source.reads == 2
    assert manager.pools == {"prefill": 2, "decode": 3}  # the second round went through


async def test_ray_actuator_validates() -> None:
    actuator = RayActuator(PoolManager(1, 1))
    with pytest.raises(ValueError, match="unknown pool"):
        await actuator.scale("router", 2)
    with pytest.raises(ValueError, match="replicas"):
        await actuator.scale("decode", -2)
    assert await actuator.current() == {"prefill": 1, "decode": 1}


def test_metrics_keep_a_dict_without_ray() -> None:
    metrics = PlannerMetrics()
    metrics.record({"prefill": 2, "decode": 3}, {"prefill": 1})
    assert metrics.values[("decode", "actual")] == 0
    assert metrics.values[("decode", "desired")] == 3


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pdserve")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_options() -> None:
    args = parse(["planner", "--raycluster", "pdserve", "--namespace", "serving", "--interval",
                  "5", "--once", "--ray-address", "auto"])
    assert (args.raycluster, args.namespace, args.interval, args.once) == (
        "pdserve", "serving", 5.0, True
    )
    assert callable(args.handler)
    assert not parse(["planner"]).dry_run


async def test_cli_dry_run_once_against_redis(
    planner_redis: Redis, planner_redis_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PDSERVE_CONFIG", raising=False)
    monkeypatch.delenv("PDSERVE_REDIS_URL", raising=False)
    for _ in range(30):
        await publish_request_record(
            planner_redis,
            RequestRecord(t=time.time(), prompt_tokens=330, output_tokens=20, ttft_s=0.5,
                          itl_s=0.1),
        )
    args = parse(["planner", "--redis-url", planner_redis_url, "--dry-run", "--once"])
    # the handler runs its own event loop, as it does under the real CLI
    code = await asyncio.to_thread(args.handler, args)
    assert code == 0
    out = capsys.readouterr().out
    # 30 requests over a 30 s window: 330 tok/s / 88 -> 4 prefill; nothing registered yet
    assert "[dry-run] prefill: 0->4" in out
