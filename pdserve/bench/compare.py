"""Comparison mode: several targets, the same workload and seed, and a table of ratios.

Modes:

- ``back-to-back``: the whole workload runs against each target in turn, on the same arrival
  schedule. Targets never overlap, so one cannot slow the other down (use this when they share
  hardware).
- ``interleaved``: one arrival schedule alternates between targets (``runner.run_interleaved``),
  so every target sees the same sessions at the same rate while drifts of the environment
  (thermal throttling, noisy neighbours) hit all of them alike.

Ratios are ``target / first target`` for every headline metric; for throughputs and goodput
above 1 is better, for latencies below 1 is better.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.table import Table

from pdserve.bench.arrivals import ArrivalProcess
from pdserve.bench.metrics import DEFAULT_PERCENTILES, Summary, summarize
from pdserve.bench.report import format_value, metric_rows
from pdserve.bench.runner import (
    OnRecord,
    RunOptions,
    RunResult,
    Target,
    run_benchmark,
    run_interleaved,
)
from pdserve.bench.slo import SLO
from pdserve.bench.workloads import Session

__all__ = [
    "COMPARE_MODES",
    "comparison_rows",
    "comparison_table",
    "run_comparison",
    "summarize_runs",
]

logger = logging.getLogger(__name__)

COMPARE_MODES = ("back-to-back", "interleaved")
"""How several targets share a run (module doc)."""


async def run_comparison(targets: Sequence[Target], sessions: Sequence[Session],
                         arrivals: ArrivalProcess, options: RunOptions | None = None,
                         mode: str = "back-to-back",
                         on_record: OnRecord | None = None) -> list[RunResult]:
    """Runs ``sessions`` against every target in ``mode``; one result per run.

    Back-to-back gives one result per target, interleaved one result holding every target.

    Raises:
        ValueError: unknown mode, no target or duplicate target names.
    """
    if mode not in COMPARE_MODES:
        raise ValueError(f"unknown comparison mode {mode!r}; choose from {COMPARE_MODES}")
    if not targets:
        raise ValueError("no target to benchmark")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must be unique, got {names}")
    if mode == "interleaved" and len(targets) > 1:
        return [await run_interleaved(targets, sessions, arrivals, options, on_record)]
    results = []
    for target in targets:
        logger.info("benchmarking %s (%s)", target.name, target.address)
        results.append(await run_benchmark(target, sessions, arrivals, options, on_record))
    return results


def summarize_runs(results: Sequence[RunResult], slo: SLO | None = None,
                   percentiles: Iterable[float] = DEFAULT_PERCENTILES) -> dict[str, Summary]:
    """One summary per target, in target order; throughputs use the duration of its run."""
    pcts = tuple(percentiles)
    summaries: dict[str, Summary] = {}
    for result in results:
        for target in result.targets:
            summaries[target.name] = summarize(result.for_target(target.name),
                                               result.duration_s, slo, pcts)
    return summaries


def comparison_rows(summaries: Mapping[str, Summary]) -> list[dict[str, Any]]:
    """Per headline metric: each target's value and its ratio to the first target's.

    A ratio is None where either value is missing or the first target's value is 0.
    """
    names = list(summaries)
    per_target = {name: metric_rows(s) for name, s in summaries.items()}
    rows = []
    for i, base in enumerate(per_target[names[0]]):
        values = {name: per_target[name][i].value for name in names}
        ratios: dict[str, float | None] = {}
        for name in names[1:]:
            value = values[name]
            ok = value is not None and base.value is not None and base.value != 0
            ratios[name] = value / base.value if ok else None  # type: ignore[operator]
        rows.append({"metric": base.key, "label": base.label,
                     "higher_is_better": base.higher_is_better,
                     "values": values, "ratios": ratios})
    return rows


def _ratio_cell(ratio: float | None, higher_is_better: bool) -> str:
    if ratio is None:
        return "-"
    better = ratio > 1 if higher_is_better else ratio < 1
    worse = ratio < 1 if higher_is_better else ratio > 1
    style = "green" if better else "red" if worse else ""
    text = f"{ratio:.2f}x"
    return f"[{style}]{text}[/{style}]" if style else text


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """A table of every target's values and each later target's ratio to the first one."""
    names = list(rows[0]["values"]) if rows else []
    table = Table(title="pdserve bench comparison (ratio = target / " +
                  (names[0] if names else "-") + ")")
    table.add_column("Metric")
    for name in names:
        table.add_column(name, justify="right")
    for name in names[1:]:
        table.add_column(f"{name} / {names[0]}", justify="right")
    for row in rows:
        table.add_row(
            row["label"] + (" ↑" if row["higher_is_better"] else " ↓"),
            *(format_value(row["values"][n]) for n in names),
            *(_ratio_cell(row["ratios"][n], row["higher_is_better"]) for n in names[1:]),
        )
    return table
