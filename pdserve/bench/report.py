"""Benchmark output: a rich table on the terminal, a JSON result file and PNG plots.

The JSON file holds the run's configuration, one summary per target, the comparison rows when
there are several targets, and every request record (``RequestRecord.to_dict``), so any metric
can be recomputed from it. Plots: ``latency_cdf.png`` (CDFs of TTFT, ITL and E2E, one line per
target) and ``throughput.png`` (output tokens/s and completed requests/s over time).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pdserve.bench.metrics import Summary, e2e_s, itls_s, throughput_timeline, ttft_s
from pdserve.bench.record import RequestRecord

__all__ = [
    "REPORT_VERSION",
    "MetricRow",
    "build_report",
    "format_value",
    "metric_rows",
    "print_summaries",
    "summary_table",
    "write_json",
    "write_plots",
]

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
"""Version of the JSON result file's layout."""


@dataclass(frozen=True)
class MetricRow:
    """One headline metric of a summary, as shown in tables."""

    key: str
    """Stable identifier, e.g. ``ttft_p99_ms``."""
    label: str
    value: float | None
    higher_is_better: bool


def metric_rows(summary: Summary) -> list[MetricRow]:
    """The headline metrics of ``summary``: throughputs, goodput, then latency statistics."""
    rows = [
        MetricRow("request_throughput", "Request throughput (req/s)",
                  summary.request_throughput, True),
    ]
    if summary.goodput is not None:
        rows.append(MetricRow("goodput", "Goodput (req/s)", summary.goodput, True))
    rows += [
        MetricRow("input_throughput", "Input throughput (tok/s)", summary.input_throughput, True),
        MetricRow("output_throughput", "Output throughput (tok/s)",
                  summary.output_throughput, True),
        MetricRow("max_output_tokens_per_s", "Peak output (tok/s)",
                  summary.max_output_tokens_per_s, True),
    ]
    for name, stats in (("ttft", summary.ttft), ("tpot", summary.tpot), ("itl", summary.itl),
                        ("e2e", summary.e2e)):
        upper = name.upper()
        rows.append(MetricRow(f"{name}_mean_ms", f"{upper} mean (ms)", stats.mean_ms, False))
        for pkey, value in stats.percentiles_ms.items():
            rows.append(MetricRow(f"{name}_{pkey}_ms", f"{upper} {pkey} (ms)", value, False))
    return rows


def format_value(value: float | None) -> str:
    """A metric value for a table: ``-`` for None, 2 decimals otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.2f}"


def summary_table(summaries: Mapping[str, Summary], title: str = "pdserve bench") -> Table:
    """A table with one column per target and one row per headline metric."""
    table = Table(title=title)
    table.add_column("Metric")
    for name in summaries:
        table.add_column(name, justify="right")
    first = next(iter(summaries.values()))
    table.add_row("Requests (ok / failed)",
                  *(f"{s.completed} / {s.failed}" for s in summaries.values()))
    table.add_row("Duration (s)", *(f"{s.duration_s:.2f}" for s in summaries.values()))
    if first.slo:
        slo = ",".join(f"{k}={v * 1000:g}ms" for k, v in first.slo.items())
        table.add_row("Good requests (" + slo + ")",
                      *(str(s.good_requests) for s in summaries.values()))
    per_target = [metric_rows(s) for s in summaries.values()]
    for i, row in enumerate(per_target[0]):
        table.add_row(row.label, *(format_value(rows[i].value) for rows in per_target))
    errors = {code for s in summaries.values() for code in s.errors}
    for code in sorted(errors):
        table.add_row(f"Errors {code}", *(str(s.errors.get(code, 0)) for s in summaries.values()))
    return table


def print_summaries(console: Console, summaries: Mapping[str, Summary]) -> None:
    """Prints :func:`summary_table` to ``console``."""
    console.print(summary_table(summaries))


def build_report(config: Mapping[str, Any], summaries: Mapping[str, Summary],
                 records: Sequence[RequestRecord], runs: Sequence[Mapping[str, Any]],
                 comparison: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON result document (module doc)."""
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "config": dict(config),
        "runs": [dict(run) for run in runs],
        "summaries": {name: s.to_dict() for name, s in summaries.items()},
        "records": [r.to_dict() for r in records],
    }
    if comparison is not None:
        report["comparison"] = [dict(row) for row in comparison]
    return report


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    """Writes ``report`` as strict JSON (infinities as strings) to ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(dict(report)), indent=1, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    n = len(ordered)
    return [v * 1000.0 for v in ordered], [(i + 1) / n for i in range(n)]


_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def _bucket_for(records_by_target: Mapping[str, Sequence[RequestRecord]]) -> float:
    """The smallest round bucket width giving at most 60 buckets over the longest run."""
    span = 0.0
    for records in records_by_target.values():
        done = [r for r in records if r.success]
        if done:
            span = max(span, max(r.chunk_s[-1] for r in done) - min(r.send_s for r in records))
    return next((b for b in _BUCKETS_S if span / b <= 60), _BUCKETS_S[-1])


def write_plots(out_dir: Path,
                records_by_target: Mapping[str, Sequence[RequestRecord]]) -> list[Path]:
    """Writes ``latency_cdf.png`` and ``throughput.png`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    metrics = (
        ("TTFT", lambda rs: [v for r in rs if (v := ttft_s(r)) is not None]),
        ("ITL", lambda rs: [g for r in rs for g in itls_s(r)]),
        ("E2E", lambda rs: [v for r in rs if (v := e2e_s(r)) is not None]),
    )
    for ax, (label, extract) in zip(axes, metrics, strict=True):
        for name, records in records_by_target.items():
            values = extract([r for r in records if r.success])
            if values:
                xs, ys = _cdf(values)
                ax.step(xs, ys, where="post", label=name)
        ax.set_title(f"{label} CDF")
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylabel("fraction of samples")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, (ax_tok, ax_req) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    bucket_s = _bucket_for(records_by_target)
    for name, records in records_by_target.items():
        starts, tokens, finished = throughput_timeline(records, bucket_s=bucket_s)
        if starts:
            # one more edge so that the last bucket is drawn over its whole width
            edges = [*starts, starts[-1] + bucket_s]
            ax_tok.step(edges, [*tokens, tokens[-1]], where="post", label=name)
            ax_req.step(edges, [*finished, finished[-1]], where="post", label=name)
    ax_tok.set_ylabel("output tokens/s")
    ax_tok.set_title(f"Throughput over time ({bucket_s:g} s buckets)")
    ax_req.set_ylabel("completed requests/s")
    ax_req.set_xlabel("time since the first request (s)")
    for ax in (ax_tok, ax_req):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.has_data():
            ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "throughput.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    logger.info("wrote plots %s", ", ".join(str(p) for p in paths))
    return paths
