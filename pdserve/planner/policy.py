"""The scaling policy: from ``FleetSignals`` to a target size per pool. Plain Python, no I/O.

Each pool's size is decided on its own signals:

prefill
    ``required = ceil((prompt tokens/s + queued prompt tokens / drain_s) / (per-worker prefill
    tokens/s * target utilization))``, bumped one worker above the current size when the TTFT
    p90 exceeds its SLO while prompt work is queued (without a queue, the prompts themselves are
    too long and more workers would not help).
decode
    concurrent streams = max(Little's law at the ITL SLO: requests/s * output tokens * ITL SLO,
    streams observed running or waiting), planned with square-root headroom
    (``streams + k * sqrt(streams)``: a Poisson count of streams fluctuates by its square root);
    ``required = ceil(planned / (streams per worker at the ITL SLO * target utilization))``;
    raised when KV usage is above its high watermark; bumped one worker when the ITL p90 exceeds
    its SLO while workers batch more than one stream each.

Then, per pool: bounds; scale-up jumps straight to the requirement; scale-down goes one worker at
a time and only when the load would stay under ``scale_down_hysteresis`` of the smaller pool's
capacity (an SLO violation always asks for more, so it never shrinks); an idle fleet goes
straight to the minimum. Cooldown: within ``cooldown_s`` of a pool's previous change it does not
shrink; within ``cooldown_s`` of a scale-up it grows again only when the load model (not an SLO
bump: the workers ordered last time may still be starting) asks for more than the size already
ordered. Growing right after a shrink is allowed (hysteresis keeps that rare). Bounds violations
are corrected at once.

Last, the shared budget: when both targets do not fit, each pool keeps what it has (up to its
target) and the free workers go first to the pool under more pressure (worse SLO ratio or load
over capacity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pdserve.config import PlannerConfig, PoolBounds, SLOConfig
from pdserve.planner.signals import POOLS, FleetSignals

__all__ = [
    "Decision",
    "PlannerPolicy",
    "PolicyTuning",
    "PoolDecision",
    "WorkerCapacity",
]


@dataclass(frozen=True)
class WorkerCapacity:
    """What one worker can do; defaults calibrated on one CPU core with SmolLM2-135M in fp32.

    Measured there: prefill about 100-120 prompt tokens/s per core, decode about 120-140 ms per
    token for a single stream. How much the decode step slows with each extra concurrent stream
    was not measured; ``decode_step_growth`` is an assumption to calibrate per deployment.
    """

    prefill_tokens_per_s: float = 110.0
    """Prompt tokens one prefill worker processes per second."""
    decode_step_s: float = 0.13
    """Decode step time (= inter-token latency) with a single running stream."""
    decode_step_growth: float = 0.1
    """Share of ``decode_step_s`` each additional concurrent stream adds to the step."""
    max_streams: int = 64
    """Most streams one decode worker runs at once (the engine's ``max_num_seqs``)."""

    def __post_init__(self) -> None:
        if self.prefill_tokens_per_s <= 0 or self.decode_step_s <= 0:
            raise ValueError("prefill_tokens_per_s and decode_step_s must be > 0")
        if self.decode_step_growth < 0:
            raise ValueError(f"decode_step_growth must be >= 0, got {self.decode_step_growth}")
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {self.max_streams}")

    def decode_step_time_s(self, streams: float) -> float:
        """Inter-token latency of a decode worker running ``streams`` streams."""
        return self.decode_step_s * (1.0 + self.decode_step_growth * max(streams - 1.0, 0.0))

    def decode_streams_at(self, itl_s: float) -> int:
        """Most streams one decode worker runs while keeping its step within ``itl_s`` (>= 1)."""
        if self.decode_step_growth == 0:
            return self.max_streams
        extra = (itl_s / self.decode_step_s - 1.0) / self.decode_step_growth
        return max(1, min(self.max_streams, 1 + math.floor(extra + 1e-9)))


@dataclass(frozen=True)
class PolicyTuning:
    """Policy knobs that ``PlannerConfig`` does not carry (local defaults)."""

    prefill_target_utilization: float = 0.8
    """Share of prefill capacity the policy plans to use; the rest absorbs bursts."""
    decode_target_utilization: float = 0.8
    """Share of the decode streams-at-SLO the policy plans to use."""
    decode_headroom_sigmas: float = 1.0
    """Extra streams planned, in standard deviations of a Poisson count (``k * sqrt(streams)``):
    small pools need relatively more headroom than large ones (square-root staffing)."""
    queue_drain_s: float | None = None
    """Queued prompt tokens are planned to drain within this; None: the TTFT SLO."""
    kv_high_watermark: float = 0.85
    """Decode KV usage above this asks for more decode workers."""
    kv_target: float = 0.7
    """KV usage the extra decode workers aim for."""

    def __post_init__(self) -> None:
        for name in ("prefill_target_utilization", "decode_target_utilization"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 < self.kv_target <= self.kv_high_watermark <= 1:
            raise ValueError("need 0 < kv_target <= kv_high_watermark <= 1")
        if self.decode_headroom_sigmas < 0:
            raise ValueError(
                f"decode_headroom_sigmas must be >= 0, got {self.decode_headroom_sigmas}"
            )
        if self.queue_drain_s is not None and self.queue_drain_s <= 0:
            raise ValueError(f"queue_drain_s must be > 0, got {self.queue_drain_s}")


@dataclass(frozen=True)
class PoolDecision:
    """The decision for one pool."""

    role: str
    current: int
    """Size before the decision."""
    required: int
    """What the load model asks for, before bounds, cooldown, hysteresis and budget."""
    target: int
    """The size to set."""
    pressure: float
    """How hard the pool is pushed: max of SLO ratio and load over capacity (>1: short)."""
    reason: str

    @property
    def changed(self) -> bool:
        return self.target != self.current


@dataclass(frozen=True)
class Decision:
    """One planning step: its inputs, the per-pool outcome and why."""

    at_s: float
    signals: FleetSignals
    pools: dict[str, PoolDecision]
    budget: int
    extras: dict[str, float] = field(default_factory=dict)
    """Derived inputs (token rates, stream counts, capacities) shown in logs."""

    @property
    def targets(self) -> dict[str, int]:
        return {role: p.target for role, p in self.pools.items()}

    @property
    def current(self) -> dict[str, int]:
        return {role: p.current for role, p in self.pools.items()}

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.pools.values())

    @property
    def reason(self) -> str:
        """One line per pool, human-readable."""
        return "; ".join(
            f"{r}: {p.current}->{p.target} ({p.reason})" for r, p in self.pools.items()
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for logs and dry runs."""
        return {
            "at_s": self.at_s,
            "targets": self.targets,
            "current": self.current,
            "budget": self.budget,
            "reason": self.reason,
            "pools": {r: asdict(p) for r, p in self.pools.items()},
            "extras": dict(self.extras),
            "signals": self.signals.to_dict(),
        }


@dataclass
class _Demand:
    model_required: int
    """Workers the load model asks for."""
    required: int
    """``model_required`` raised by SLO violations (bumps)."""
    pressure: float
    can_shrink_to: Callable[[int], bool]
    notes: list[str]


class PlannerPolicy:
    """Decides pool sizes; deterministic given its inputs and the times of past changes."""

    def __init__(
        self,
        config: PlannerConfig,
        slo: SLOConfig,
        capacity: WorkerCapacity | None = None,
        tuning: PolicyTuning | None = None,
    ) -> None:
        self.config = config
        self.slo = slo
        self.capacity = capacity or WorkerCapacity()
        self.tuning = tuning or PolicyTuning()
        self._last_change: dict[str, tuple[float, int]] = {}

    def bounds(self, role: str) -> PoolBounds:
        """The configured bounds of ``role``."""
        if role == "prefill":
            return self.config.prefill
        if role == "decode":
            return self.config.decode
        raise ValueError(f"unknown pool {role!r}; expected one of {POOLS}")

    def record_change(self, role: str, at_s: float, delta: int = 1) -> None:
        """Starts ``role``'s cooldown (called once a change of ``delta`` workers is applied)."""
        self._last_change[role] = (at_s, delta)

    def cooldown_left_s(self, role: str, now_s: float) -> float:
        """Seconds until ``role``'s last change stops blocking the next one."""
        last = self._last_change.get(role)
        if last is None:
            return 0.0
        return max(0.0, self.config.cooldown_s - (now_s - last[0]))

    def _last_change_grew(self, role: str) -> bool:
        last = self._last_change.get(role)
        return last is not None and last[1] > 0

    def decide(
        self,
        signals: FleetSignals,
        current: Mapping[str, int],
        now_s: float | None = None,
        *,
        commit: bool = True,
    ) -> Decision:
        """Target sizes for both pools from ``signals`` and the pools' ``current`` sizes.

        With ``commit`` the pools that change start their cooldown at ``now_s`` (default: the
        signals' time); without it the caller calls :meth:`record_change` once a change is applied.
        """
        now = signals.at_s if now_s is None else now_s
        cur = {role: int(current.get(role, 0)) for role in POOLS}
        extras: dict[str, float] = {}
        demands = {
            "prefill": self._prefill_demand(signals, cur["prefill"], extras),
            "decode": self._decode_demand(signals, cur["decode"], extras),
        }
        targets: dict[str, int] = {}
        reasons: dict[str, str] = {}
        for role in POOLS:
            targets[role], reasons[role] = self._pool_target(
                role, signals, cur[role], demands[role], now
            )
        targets, reasons = self._fit_budget(targets, reasons, cur, demands)
        pools = {
            role: PoolDecision(
                role=role,
                current=cur[role],
                required=demands[role].required,
                target=targets[role],
                pressure=round(demands[role].pressure, 4),
                reason=reasons[role],
            )
            for role in POOLS
        }
        if commit:
            for role, pool in pools.items():
                if pool.changed:
                    self.record_change(role, now, pool.target - pool.current)
        return Decision(
            at_s=now, signals=signals, pools=pools, budget=self.config.max_total_workers,
            extras=extras,
        )

    def _prefill_demand(self, s: FleetSignals, cur: int, extras: dict[str, float]) -> _Demand:
        per_worker = self.capacity.prefill_tokens_per_s
        drain_s = self.tuning.queue_drain_s or s.ttft_slo_s
        load = s.prefill_token_rate + s.queued_prefill_tokens / drain_s
        model = math.ceil(load / (per_worker * self.tuning.prefill_target_utilization) - 1e-9)
        required = model
        notes = [f"load {load:.0f} tok/s vs {per_worker:.0f} tok/s per worker"]
        extras.update(prefill_load_tok_s=round(load, 3), prefill_tok_s_per_worker=per_worker)
        ratio = s.ttft_ratio
        if ratio is not None and ratio > 1.0:
            notes.append(f"TTFT p90 {s.ttft_p90_s:.2f}s > SLO {s.ttft_slo_s:.2f}s")
            # Only queued work says more workers would help; without it the prompts are too long.
            waiting = s.queued_prefill_tokens > 0 or s.num_waiting.get("prefill", 0) > 0
            if required <= cur and waiting:
                required = cur + 1
        if s.mean_prompt_tokens / per_worker > s.ttft_slo_s:
            notes.append("mean prompt alone exceeds the TTFT SLO; more workers cannot fix that")
        pressure = max(ratio or 0.0, _over(load, cur * per_worker))
        h = self.config.scale_down_hysteresis

        def can_shrink_to(n: int) -> bool:
            return load < h * n * per_worker if n > 0 else load == 0

        return _Demand(model, required, pressure, can_shrink_to, notes)

    def _decode_demand(self, s: FleetSignals, cur: int, extras: dict[str, float]) -> _Demand:
        per_worker = self.capacity.decode_streams_at(s.itl_slo_s)
        little = s.arrival_rate_rps * s.mean_output_tokens * s.itl_slo_s
        observed = s.num_running.get("decode", 0) + s.num_waiting.get("decode", 0)
        streams = max(little, float(observed))
        planned = streams + self.tuning.decode_headroom_sigmas * math.sqrt(streams)
        required = math.ceil(planned / (per_worker * self.tuning.decode_target_utilization) - 1e-9)
        notes = [f"{streams:.1f} streams (+headroom {planned:.1f}) vs {per_worker} per worker"]
        extras.update(
            decode_streams=round(streams, 3),
            decode_streams_planned=round(planned, 3),
            decode_streams_little=round(little, 3),
            decode_streams_per_worker=per_worker,
        )
        kv = s.decode_kv_usage
        if kv > self.tuning.kv_high_watermark and cur > 0:
            by_kv = math.ceil(cur * kv / self.tuning.kv_target)
            notes.append(f"KV usage {kv:.2f} > {self.tuning.kv_high_watermark:.2f}")
            required = max(required, by_kv)
        model = required
        ratio = s.itl_ratio
        if ratio is not None and ratio > 1.0:
            itl_ms = 1000 * (s.itl_p90_s or 0.0)
            notes.append(f"ITL p90 {itl_ms:.0f}ms > SLO {1000 * s.itl_slo_s:.0f}ms")
            # Spreading streams thinner only helps where workers batch more than one stream.
            if required <= cur and observed > cur:
                required = cur + 1
        if self.capacity.decode_step_s > s.itl_slo_s:
            notes.append("a single stream's step exceeds the ITL SLO; more workers cannot fix that")
        pressure = max(
            ratio or 0.0, _over(streams, cur * per_worker), kv / self.tuning.kv_high_watermark
        )
        h = self.config.scale_down_hysteresis

        def can_shrink_to(n: int) -> bool:
            if n <= 0:
                return streams == 0
            return planned < h * n * per_worker and kv * cur / n < h

        return _Demand(model, required, pressure, can_shrink_to, notes)

    def _pool_target(
        self, role: str, s: FleetSignals, cur: int, demand: _Demand, now: float
    ) -> tuple[int, str]:
        b = self.bounds(role)
        notes = ", ".join(demand.notes)
        if cur > b.max:
            return b.max, f"above bounds [{b.min}, {b.max}]; {notes}"
        if cur < b.min:
            target = b.min if s.is_idle else min(max(demand.required, b.min), b.max)
            return target, f"below bounds [{b.min}, {b.max}]; {notes}"
        if s.is_idle:
            want, why = b.min, "idle: scale to min"
        else:
            want = min(max(demand.required, b.min), b.max)
            why = notes
            if demand.required > b.max:
                why += f"; capped at max {b.max}"
        if want == cur:
            return cur, f"hold; {why}"
        left = self.cooldown_left_s(role, now)
        if want > cur:
            if left > 0 and self._last_change_grew(role):
                # Workers ordered by the last scale-up may still be starting, so an SLO
                # violation proves nothing yet; only load beyond the ordered size does.
                model = min(demand.model_required, b.max)
                if model > cur:
                    return model, f"scale up again, load outgrew the last step; {why}"
                return cur, f"cooldown {left:.0f}s left after a scale-up (wanted {want}); {why}"
            return want, f"scale up; {why}"
        if left > 0:
            return cur, f"cooldown {left:.0f}s left (wanted {want}); {why}"
        if s.is_idle:
            return want, why
        # An SLO violation never gets here: it raises ``required`` above ``cur``.
        if not demand.can_shrink_to(cur - 1):
            h = self.config.scale_down_hysteresis
            return cur, f"hold: {cur - 1} workers would run above {h:.0%} of capacity; {why}"
        return cur - 1, f"scale down one step (wanted {want}); {why}"

    def _fit_budget(
        self,
        targets: dict[str, int],
        reasons: dict[str, str],
        cur: dict[str, int],
        demands: dict[str, _Demand],
    ) -> tuple[dict[str, int], dict[str, str]]:
        budget = self.config.max_total_workers
        if sum(targets.values()) <= budget:
            return targets, reasons
        # Most pressed pool first; ties go to decode, whose stalls hit every running stream.
        order = sorted(POOLS, key=lambda r: (-demands[r].pressure, r))
        floors = {r: max(self.bounds(r).min, min(targets[r], cur[r])) for r in POOLS}
        over = sum(floors.values()) - budget
        for role in reversed(order):
            if over <= 0:
                break
            cut = min(over, floors[role] - self.bounds(role).min)
            floors[role] -= cut
            over -= cut
        free = budget - sum(floors.values())
        fitted = dict(floors)
        for role in order:
            extra = max(0, min(targets[role] - floors[role], free))
            fitted[role] += extra
            free -= extra
        out_reasons = dict(reasons)
        for role in POOLS:
            if fitted[role] != targets[role]:
                out_reasons[role] = (
                    f"budget {budget}: {fitted[role]} instead of {targets[role]} "
                    f"(pressure prefill {demands['prefill'].pressure:.2f}, "
                    f"decode {demands['decode'].pressure:.2f}); {reasons[role]}"
                )
        return fitted, out_reasons


def _over(load: float, capacity: float) -> float:
    if capacity > 0:
        return load / capacity
    return 0.0 if load == 0 else math.inf
