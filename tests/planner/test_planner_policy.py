"""The scaling policy on synthetic signal sequences.

Default capacity: a prefill worker plans for 110 * 0.8 = 88 prompt tokens/s; a decode worker runs
6 streams within a 200 ms ITL (0.13 s step, +10% per extra stream) and plans for 6 * 0.8 = 4.8,
for S streams plus square-root headroom sqrt(S).
"""

from __future__ import annotations

import itertools
import json

import pytest

from pdserve.config import PlannerConfig, PoolBounds, SLOConfig
from pdserve.planner.policy import Decision, PlannerPolicy, PolicyTuning, WorkerCapacity
from pdserve.planner.signals import FleetSignals

SLO = SLOConfig(ttft_ms=2000, itl_ms=200)
WINDOW_S = 30.0


def make_config(**overrides: object) -> PlannerConfig:
    values: dict[str, object] = {
        "interval_s": 10.0,
        "cooldown_s": 60.0,
        "scale_down_hysteresis": 0.7,
        "max_total_workers": 16,
        "prefill": PoolBounds(min=1, max=8),
        "decode": PoolBounds(min=1, max=8),
    }
    values.update(overrides)
    return PlannerConfig(**values)  # type: ignore[arg-type]


def sig(
    t: float,
    rate: float,
    prompt: float = 100,
    output: float = 50,
    *,
    ttft_p90: float | None = None,
    itl_p90: float | None = None,
    queued: int = 0,
    kv: float = 0.0,
    running_decode: int = 0,
) -> FleetSignals:
    """Signals of one window; healthy latencies unless given."""
    n = round(rate * WINDOW_S)
    if n and ttft_p90 is None:
        ttft_p90 = 0.5
    if n and itl_p90 is None:
        itl_p90 = 0.15
    return FleetSignals(
        at_s=t,
        window_s=WINDOW_S,
        ttft_slo_s=SLO.ttft_ms / 1000,
        itl_slo_s=SLO.itl_ms / 1000,
        num_requests=n,
        arrival_rate_rps=n / WINDOW_S,
        mean_prompt_tokens=prompt if n else 0.0,
        mean_output_tokens=output if n else 0.0,
        ttft_p50_s=ttft_p90,
        ttft_p90_s=ttft_p90,
        itl_p50_s=itl_p90,
        itl_p90_s=itl_p90,
        queued_prefill_tokens=queued,
        decode_kv_usage=kv,
        num_running={"prefill": 0, "decode": running_decode},
    )


class Fleet:
    """Applies each decision at once, like an actuator that never fails."""

    def __init__(self, policy: PlannerPolicy, prefill: int, decode: int) -> None:
        self.policy = policy
        self.size = {"prefill": prefill, "decode": decode}
        self.log: list[Decision] = []

    def step(self, signals: FleetSignals) -> Decision:
        decision = self.policy.decide(signals, self.size)
        self.size = decision.targets
        self.log.append(decision)
        return decision


def change_times(log: list[Decision], role: str) -> list[float]:
    return [d.at_s for d in log if d.pools[role].changed]


def assert_cooldown_respected(log: list[Decision], cooldown_s: float = 60.0) -> None:
    """No shrink within the cooldown of any change; no growth within the cooldown of a growth
    unless the load model itself asked for more than the size already ordered (growth right
    after a shrink is allowed)."""
    for role in ("prefill", "decode"):
        changes = [d.pools[role] for d in log if d.pools[role].changed]
        times = change_times(log, role)
        for prev, cur, t0, t1 in zip(changes, changes[1:], times, times[1:], strict=False):
            if t1 - t0 >= cooldown_s:
                continue
            assert cur.target > cur.current, (role, t0, t1, cur)  # never a quick shrink
            if prev.target > prev.current:  # growth after growth: only when the load says so
                assert "load outgrew the last step" in cur.reason, (role, t1, cur.reason)


def test_capacity_defaults_come_from_the_cpu_measurements() -> None:
    cap = WorkerCapacity()
    assert cap.prefill_tokens_per_s == 110.0
    assert cap.decode_step_time_s(1) == pytest.approx(0.13)
    assert cap.decode_streams_at(0.2) == 6
    assert cap.decode_streams_at(0.1) == 1  # below one stream's step: SLO unreachable
    assert WorkerCapacity(decode_step_growth=0).decode_streams_at(0.2) == 64


def test_steady_load_holds() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=2, decode=3)
    for k in range(10):
        d = fleet.step(sig(10.0 * k, rate=1.0))
        assert d.targets == {"prefill": 2, "decode": 3}, d.reason
        assert not d.changed


def test_spike_scales_both_up_at_once_then_down_one_step_per_cooldown() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=2, decode=3)
    fleet.step(sig(0, rate=1.0))
    up = fleet.step(sig(10, rate=3.0, ttft_p90=3.0, itl_p90=0.3))
    # 300 tok/s / 88 -> 4 prefill; 3 req/s * 50 tokens * 0.2 s = 30 streams, (30 + 5.5) / 4.8 -> 8
    assert up.targets == {"prefill": 4, "decode": 8}, up.reason
    assert "scale up" in up.pools["prefill"].reason
    for t in range(20, 80, 10):  # spike goes on, latencies recover with the new workers
        assert fleet.step(sig(t, rate=3.0)).targets == {"prefill": 4, "decode": 8}
    sizes = []
    for t in range(80, 800, 10):  # back to the base load
        sizes.append(fleet.step(sig(t, rate=1.0)).targets)
    # decode stops at 4: (10 + 3.2) planned streams on 3 workers would exceed 70% of 18
    assert sizes[-1] == {"prefill": 2, "decode": 4}
    assert "3 workers would run above 70% of capacity" in fleet.log[-1].pools["decode"].reason
    for role in ("prefill", "decode"):
        seq = [up.targets[role]] + [s[role] for s in sizes]
        steps = [b - a for a, b in itertools.pairwise(seq) if b != a]
        assert all(step == -1 for step in steps), (role, seq)
    assert_cooldown_respected(fleet.log)


def test_ramp_grows_monotonically_and_catches_up() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=1, decode=1)
    rates = [0.5 + 0.1 * k for k in range(26)] + [3.0] * 12
    for k, rate in enumerate(rates):
        fleet.step(sig(10.0 * k, rate=rate))
    for role in ("prefill", "decode"):
        seq = [d.targets[role] for d in fleet.log]
        assert seq == sorted(seq), (role, seq)
    assert fleet.size == {"prefill": 4, "decode": 8}
    assert_cooldown_respected(fleet.log)


def test_long_prompt_burst_grows_prefill_only() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=2, decode=3)
    fleet.step(sig(0, rate=1.0))
    d = fleet.step(sig(10, rate=1.0, prompt=500, ttft_p90=4.0, queued=600))
    # (500 tok/s + 600 queued / 2 s) / 88 -> 10, capped at max 8
    assert d.targets == {"prefill": 8, "decode": 3}, d.reason
    assert "capped at max 8" in d.pools["prefill"].reason
    assert not d.pools["decode"].changed


def test_long_output_burst_grows_decode_only() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=2, decode=3)
    fleet.step(sig(0, rate=1.0))
    d = fleet.step(sig(10, rate=1.0, output=150, itl_p90=0.26, running_decode=25))
    # 1 req/s * 150 tokens * 0.2 s = 30 streams, (30 + 5.5) / 4.8 -> 8
    assert d.targets == {"prefill": 2, "decode": 8}, d.reason
    assert not d.pools["prefill"].changed


def test_idle_goes_straight_to_min() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=4, decode=6)
    d = fleet.step(sig(0, rate=0.0))
    assert d.targets == {"prefill": 1, "decode": 1}
    assert "idle" in d.pools["decode"].reason


def test_idle_scales_to_zero_when_min_is_zero() -> None:
    config = make_config(prefill=PoolBounds(min=0, max=8), decode=PoolBounds(min=0, max=8))
    fleet = Fleet(PlannerPolicy(config, SLO), prefill=2, decode=2)
    assert fleet.step(sig(0, rate=0.0)).targets == {"prefill": 0, "decode": 0}
    # first request after idle: both pools come back
    d = fleet.step(sig(100, rate=0.1, output=50))
    assert d.targets["prefill"] >= 1 and d.targets["decode"] >= 1


def test_running_streams_are_not_idle() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=1, decode=4)
    d = fleet.step(sig(0, rate=0.0, running_decode=2))
    assert d.targets["decode"] == 3  # one step, not straight to min
    assert "one step" in d.pools["decode"].reason


def test_cooldown_rules() -> None:
    fleet = Fleet(PlannerPolicy(make_config(), SLO), prefill=1, decode=1)
    assert fleet.step(sig(0, rate=1.0)).targets == {"prefill": 2, "decode": 3}
    # an SLO violation right after a scale-up: the new workers may still be starting, hold
    d = fleet.step(sig(30, rate=1.0, ttft_p90=3.0, queued=50))
    assert d.pools["prefill"].target == 2
    assert "cooldown 30s left after a scale-up" in d.pools["prefill"].reason
    # but load beyond the size already ordered grows it again: 200 tok/s / 88 -> 3
    d = fleet.step(sig(40, rate=2.0))
    assert d.pools["prefill"].target == 3
    assert "load outgrew the last step" in d.pools["prefill"].reason
    # no shrink within the cooldown of the last change
    d = fleet.step(sig(90, rate=0.5))
    assert d.pools["prefill"].target == 3
    assert "cooldown 10s left" in d.pools["prefill"].reason
    d = fleet.step(sig(100, rate=0.5))
    assert d.pools["prefill"].target == 2
    # growing right after a shrink is allowed: 300 tok/s / 88 -> 4
    d = fleet.step(sig(110, rate=3.0))
    assert d.pools["prefill"].target == 4
    assert_cooldown_respected(fleet.log)


def test_hysteresis_blocks_shrinking_into_high_utilization() -> None:
    policy = PlannerPolicy(make_config(), SLO)
    # 165 tok/s needs 2 workers (88 each) but would run 2 at 75% > 70% of 220 tok/s: hold
    d = policy.decide(sig(0, rate=1.65), {"prefill": 3, "decode": 3})
    assert d.pools["prefill"].required == 2
    assert d.pools["prefill"].target == 3
    assert "above 70% of capacity" in d.pools["prefill"].reason
    # 120 tok/s on 2 workers is 55%: shrink, one step
    d = policy.decide(sig(0, rate=1.2), {"prefill": 3, "decode": 3})
    assert d.pools["prefill"].target == 2
    # 50 tok/s needs 1 but goes down one step at a time
    d = PlannerPolicy(make_config(), SLO).decide(sig(0, rate=0.5), {"prefill": 3, "decode": 3})
    assert d.pools["prefill"].required == 1
    assert d.pools["prefill"].target == 2


def test_slo_violation_bumps_past_the_load_model() -> None:
    policy = PlannerPolicy(make_config(), SLO)
    s = sig(0, rate=1.0, ttft_p90=3.0, itl_p90=0.25, queued=100, running_decode=8)
    d = policy.decide(s, {"prefill": 2, "decode": 3})
    assert d.pools["prefill"].required == 3 and d.pools["decode"].required == 4
    assert d.targets == {"prefill": 3, "decode": 4}
    assert "TTFT p90 3.00s > SLO 2.00s" in d.pools["prefill"].reason
    assert "ITL p90 250ms > SLO 200ms" in d.pools["decode"].reason


def test_kv_pressure_grows_decode() -> None:
    d = PlannerPolicy(make_config(), SLO).decide(
        sig(0, rate=0.5, kv=0.95), {"prefill": 1, "decode": 3}
    )
    assert d.pools["decode"].target == 5  # ceil(3 * 0.95 / 0.7)
    assert "KV usage 0.95" in d.pools["decode"].reason


@pytest.mark.parametrize(
    ("ttft_p90", "itl_p90", "expected"),
    [
        (3.0, 0.24, {"prefill": 4, "decode": 2}),  # TTFT 1.5x vs ITL 1.2x: prefill first
        (2.2, 0.40, {"prefill": 2, "decode": 4}),  # ITL 2x vs TTFT 1.1x: decode first
    ],
)
def test_budget_goes_to_the_worse_violated_pool(
    ttft_p90: float, itl_p90: float, expected: dict[str, int]
) -> None:
    policy = PlannerPolicy(make_config(max_total_workers=6), SLO)
    s = sig(0, rate=3.0, output=20, ttft_p90=ttft_p90, itl_p90=itl_p90)
    d = policy.decide(s, {"prefill": 2, "decode": 2})
    # 300 tok/s / 88 -> 4; 3 req/s * 20 tokens * 0.2 s = 12 streams, (12 + 3.5) / 4.8 -> 4
    assert d.pools["prefill"].required == 4 and d.pools["decode"].required == 4
    assert d.targets == expected, d.reason
    assert sum(d.targets.values()) <= 6
    assert "budget 6" in d.reason


def test_budget_trims_the_less_pressed_pool_when_already_over() -> None:
    policy = PlannerPolicy(make_config(max_total_workers=6), SLO)
    d = policy.decide(sig(0, rate=3.0, ttft_p90=3.0), {"prefill": 5, "decode": 5})
    assert sum(d.targets.values()) <= 6
    assert d.targets["prefill"] >= 4  # prefill is the violated one


def test_budget_holds_over_a_whole_spike() -> None:
    fleet = Fleet(PlannerPolicy(make_config(max_total_workers=10), SLO), prefill=1, decode=1)
    for k in range(60):
        rate = 6.0 if 10 <= k < 40 else 1.0
        s = sig(10.0 * k, rate=rate, output=100, ttft_p90=3.0 if rate > 1 else None)
        fleet.step(s)
        assert sum(fleet.size.values()) <= 10


def test_out_of_bounds_is_corrected_even_in_cooldown() -> None:
    policy = PlannerPolicy(make_config(), SLO)
    policy.record_change("decode", 0.0)
    d = policy.decide(sig(10, rate=1.0), {"prefill": 2, "decode": 12})
    assert d.pools["decode"].target == 8
    assert "above bounds" in d.pools["decode"].reason


def test_queued_prefill_work_counts_as_load() -> None:
    policy = PlannerPolicy(make_config(), SLO, tuning=PolicyTuning(queue_drain_s=4.0))
    d = policy.decide(sig(0, rate=1.0, queued=1760), {"prefill": 2, "decode": 3})
    # 100 tok/s + 1760 / 4 s = 540 tok/s / 88 -> 7
    assert d.pools["prefill"].target == 7


def test_decision_carries_inputs_and_is_loggable() -> None:
    d = PlannerPolicy(make_config(), SLO).decide(sig(5, rate=1.0), {"prefill": 1, "decode": 1})
    data = json.loads(json.dumps(d.to_dict()))
    assert data["targets"] == {"prefill": 2, "decode": 3}
    assert data["signals"]["arrival_rate_rps"] == pytest.approx(1.0)
    assert data["extras"]["prefill_load_tok_s"] == pytest.approx(100.0)
    assert data["extras"]["decode_streams_per_worker"] == 6
    assert "prefill: 1->2" in d.reason and "decode: 1->3" in d.reason


def test_commit_false_leaves_cooldown_to_the_caller() -> None:
    policy = PlannerPolicy(make_config(), SLO)
    d = policy.decide(sig(0, rate=1.0), {"prefill": 1, "decode": 1}, commit=False)
    assert d.changed and policy.cooldown_left_s("prefill", 1.0) == 0.0
    policy.record_change("prefill", 0.0)
    assert policy.cooldown_left_s("prefill", 1.0) == pytest.approx(59.0)
