"""The decider and ``plan``."""

from __future__ import annotations

import logging

import pytest

from pdserve.config import RoutingConfig
from router.policy import (
    Decider,
    DecisionKind,
    NoWorkerAvailable,
    RoutingStats,
    WorkerView,
    plan,
)


def worker(worker_id: str, role: str = "decode", **fields: object) -> WorkerView:
    return WorkerView(worker_id, role, "h:1", "c1", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt", "cached_blocks", "max_tokens", "has_prefill", "kind", "reason"),
    [
        (1000, 0, 16, True, DecisionKind.DISAGGREGATED, "uncached_prefill"),
        (1000, 0, 16, False, DecisionKind.DECODE_ONLY, "no_prefill_worker"),
        (1000, 0, 1, True, DecisionKind.DECODE_ONLY, "single_token"),
        (1000, 0, None, True, DecisionKind.DISAGGREGATED, "uncached_prefill"),
        (255, 0, 16, True, DecisionKind.DECODE_ONLY, "short_uncached"),
        (256, 0, 16, True, DecisionKind.DISAGGREGATED, "uncached_prefill"),
        # 1000 tokens, 6 blocks of 128 cached: 232 left, under the threshold.
        (1000, 6, 16, True, DecisionKind.DECODE_ONLY, "short_uncached"),
        (1000, 5, 16, True, DecisionKind.DISAGGREGATED, "uncached_prefill"),
    ],
)
def test_decider(
    prompt: int,
    cached_blocks: int,
    max_tokens: int | None,
    has_prefill: bool,
    kind: DecisionKind,
    reason: str,
) -> None:
    decision = Decider(256).decide(
        num_prompt_tokens=prompt,
        block_size=128,
        decode_cached_blocks=cached_blocks,
        max_tokens=max_tokens,
        has_prefill_worker=has_prefill,
    )
    assert (decision.kind, decision.reason) == (kind, reason)
    assert decision.num_uncached_tokens == max(prompt - cached_blocks * 128, 0)


def test_threshold_zero_always_disaggregates_when_it_can() -> None:
    decision = Decider(0).decide(
        num_prompt_tokens=128,
        block_size=128,
        decode_cached_blocks=1,
        max_tokens=8,
        has_prefill_worker=True,
    )
    assert decision.kind is DecisionKind.DISAGGREGATED
    with pytest.raises(ValueError):
        Decider(-1)


FLEET = [
    worker("p1", "prefill", queued_prefill_tokens=4000),
    worker("p2", "prefill"),
    worker("d1", num_running=8, kv_usage=0.9),
    worker("d2", num_running=1, kv_usage=0.1),
    worker("d3", state="starting"),
]


def test_plan_disaggregates_onto_the_best_pair(caplog: pytest.LogCaptureFixture) -> None:
    stats = RoutingStats()
    with caplog.at_level(logging.DEBUG, logger="router.policy.plan"):
        decision = plan(
            "req-7",
            1024,
            FLEET,
            RoutingConfig(),
            block_size=128,
            cached_blocks={"p1": 8, "d3": 8},
            stats=stats,
        )
    assert decision.kind is DecisionKind.DISAGGREGATED
    # p1 caches the whole prompt: 1.0 * 1 + 0.5 * 0 (queue) + 0.5 * 1 (load) beats p2's 1.0.
    assert decision.prefill is not None and decision.prefill.worker_id == "p1"
    assert decision.decode.worker_id == "d2"
    assert decision.cached_blocks == {"p1": 8, "d2": 0}
    assert set(decision.decode_scores) == {"d1", "d2"}  # d3 is not ready
    assert decision.prefill_scores["p1"]["total"] > decision.prefill_scores["p2"]["total"]
    assert stats.decisions == {"disaggregated": 1, "decode_only": 0}
    assert stats.hit_rate == 1.0
    assert "req-7" in caplog.text and "p1" in caplog.text and "d2" in caplog.text


def test_plan_goes_decode_only_when_the_decode_worker_holds_the_prompt() -> None:
    stats = RoutingStats()
    config = RoutingConfig(disagg_min_uncached_tokens=512)
    decision = plan("r", 1100, FLEET, config, block_size=128, cached_blocks={"d1": 8}, stats=stats)
    # d1 is loaded but holds all 8 blocks: 1.0 + 0.5 * 1 + 0.5 * 0.05 beats 0 + 0.5 + 0.5 * 0.89.
    assert decision.decode.worker_id == "d1"
    assert decision.kind is DecisionKind.DECODE_ONLY
    assert decision.reason == "short_uncached"
    assert decision.prefill is None and decision.prefill_scores == {}
    assert decision.num_uncached_tokens == 1100 - 1024
    assert stats.num_cached_prompt_tokens == 1024
    assert stats.reasons == {"short_uncached": 1}


def test_plan_without_index_routes_on_load() -> None:
    decision = plan("r", 4096, FLEET, RoutingConfig(), block_size=128, cached_blocks={})
    assert decision.decode.worker_id == "d2"
    assert decision.prefill is not None and decision.prefill.worker_id == "p2"


def test_plan_filters_on_compatibility_and_needs_a_decode_worker() -> None:
    with pytest.raises(NoWorkerAvailable) as raised:
        plan("r9", 100, FLEET, RoutingConfig(), block_size=16, compat_hash="other")
    assert raised.value.request_id == "r9"
    only_prefill = [w for w in FLEET if w.role == "prefill"]
    with pytest.raises(NoWorkerAvailable):
        plan("r", 100, only_prefill, RoutingConfig(), block_size=16)
    decode_only = [w for w in FLEET if w.role == "decode"]
    decision = plan("r", 100, decode_only, RoutingConfig(), block_size=16)
    assert decision.kind is DecisionKind.DECODE_ONLY and decision.reason == "no_prefill_worker"


def test_plan_is_deterministic_across_replicas() -> None:
    twins = [worker("d-b"), worker("d-a"), worker("p-b", "prefill"), worker("p-a", "prefill")]
    for order in (twins, twins[::-1]):
        decision = plan("r", 512, order, RoutingConfig(), block_size=128)
        assert decision.decode.worker_id == "d-a"
        assert decision.prefill is not None and decision.prefill.worker_id == "p-a"


def test_stats_lookup_histogram() -> None:
    stats = RoutingStats()
    for latency_s in (0.00005, 0.0001, 0.0004, 0.2):
        stats.observe_lookup(latency_s)
    stats.observe_lookup_failure()
    assert stats.lookup_latency_buckets[:3] == [2, 0, 1]
    assert stats.lookup_latency_buckets[-1] == 1
    assert stats.num_lookups == 4 and stats.num_lookup_failures == 1
    assert stats.hit_rate == 0.0


def test_policy_imports_no_engine_redis_or_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys, router.policy; "
        "print(sorted(m for m in ('vllm', 'torch', 'ray', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
