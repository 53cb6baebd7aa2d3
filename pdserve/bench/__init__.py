"""SLO benchmark of pdserve routers (``pdserve bench``).

Modules: ``arrivals`` (when requests are sent), ``workloads`` (what is sent), ``runner`` (the
gRPC driver), ``record`` (per-request timelines), ``metrics`` (pure arithmetic over them),
``slo`` (SLO and duration parsing), ``report`` (table, JSON, plots), ``compare`` (several
targets) and ``cli`` (the subcommand). Metric definitions are in ``docs/bench.md``.

From Python::

    from pdserve.bench import (ArrivalProcess, RunOptions, Target, parse_slo,
                               random_workload, run_comparison, summarize_runs)

    sessions = random_workload(200, input_len=1024, output_len=128, seed=0)
    results = await run_comparison(
        [Target.parse("agg=localhost:50051"), Target.parse("disagg=localhost:50052")],
        sessions, ArrivalProcess(rate=8.0, seed=0), RunOptions(max_concurrency=64))
    summaries = summarize_runs(results, parse_slo("ttft=500ms,tpot=50ms"))
"""

from pdserve.bench.arrivals import ArrivalProcess, arrival_offsets
from pdserve.bench.compare import (
    COMPARE_MODES,
    comparison_rows,
    comparison_table,
    run_comparison,
    summarize_runs,
)
from pdserve.bench.metrics import (
    DEFAULT_PERCENTILES,
    LatencyStats,
    Summary,
    e2e_s,
    itls_s,
    meets_slo,
    output_tokens,
    summarize,
    throughput_timeline,
    tpot_s,
    ttft_s,
)
from pdserve.bench.record import STATUS_OK, RequestRecord
from pdserve.bench.report import build_report, summary_table, write_json, write_plots
from pdserve.bench.runner import (
    STATUS_CLIENT_ERROR,
    STATUS_SKIPPED,
    RunOptions,
    RunResult,
    Target,
    TargetUnavailableError,
    run_benchmark,
    run_interleaved,
)
from pdserve.bench.slo import SLO, parse_duration, parse_slo
from pdserve.bench.workloads import (
    DEFAULT_VOCAB_SIZE,
    WORKLOAD_NAMES,
    Prompt,
    Session,
    Turn,
    WorkloadError,
    WorkloadSpec,
    build_workload,
    extend_prompt,
    jsonl_workload,
    multi_turn_workload,
    random_workload,
    shared_prefix_workload,
)

__all__ = [
    "COMPARE_MODES",
    "DEFAULT_PERCENTILES",
    "DEFAULT_VOCAB_SIZE",
    "SLO",
    "STATUS_CLIENT_ERROR",
    "STATUS_OK",
    "STATUS_SKIPPED",
    "WORKLOAD_NAMES",
    "ArrivalProcess",
    "LatencyStats",
    "Prompt",
    "RequestRecord",
    "RunOptions",
    "RunResult",
    "Session",
    "Summary",
    "Target",
    "TargetUnavailableError",
    "Turn",
    "WorkloadError",
    "WorkloadSpec",
    "arrival_offsets",
    "build_report",
    "build_workload",
    "comparison_rows",
    "comparison_table",
    "e2e_s",
    "extend_prompt",
    "itls_s",
    "jsonl_workload",
    "meets_slo",
    "multi_turn_workload",
    "output_tokens",
    "parse_duration",
    "parse_slo",
    "random_workload",
    "run_benchmark",
    "run_comparison",
    "run_interleaved",
    "shared_prefix_workload",
    "summarize",
    "summarize_runs",
    "summary_table",
    "throughput_timeline",
    "tpot_s",
    "ttft_s",
    "write_json",
    "write_plots",
]
