"""``pdserve bench``: the command line of the SLO benchmark.

:func:`add_parser` registers the ``bench`` subcommand on the main ``pdserve`` parser; its
handler is stored as ``args.handler`` and returns the exit status. ``python -m pdserve.bench``
runs the same command on its own (:func:`main`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pdserve.bench.arrivals import ArrivalProcess
from pdserve.bench.compare import (
    COMPARE_MODES,
    comparison_rows,
    comparison_table,
    run_comparison,
    summarize_runs,
)
from pdserve.bench.metrics import DEFAULT_PERCENTILES
from pdserve.bench.record import RequestRecord
from pdserve.bench.report import build_report, summary_table, write_json, write_plots
from pdserve.bench.runner import RunOptions, Target, TargetUnavailableError
from pdserve.bench.slo import parse_duration, parse_slo
from pdserve.bench.workloads import (
    DEFAULT_VOCAB_SIZE,
    WORKLOAD_NAMES,
    WorkloadError,
    WorkloadSpec,
    build_workload,
)
from pdserve.config import DEFAULT_ROUTER_GRPC_PORT

__all__ = ["add_parser", "build_parser", "main", "run_command"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Benchmark one or more pdserve routers under a workload and an arrival process, and report
throughput, goodput under SLOs, and TTFT / TPOT / ITL / E2E latency percentiles.

Writes result.json (configuration, summaries, every request's timeline), latency_cdf.png and
throughput.png into --output-dir. With several --target options, the same workload and seed run
against each target and a table of ratios to the first target is printed.
"""

_EPILOG = """\
examples:
  pdserve bench --rate 4 --num-requests 200 --slo ttft=500ms,tpot=50ms
  pdserve bench --workload shared-prefix --num-tenants 8 --prefix-len 2048 --concurrency 16
  pdserve bench --target agg=localhost:50051 --target disagg=localhost:50052 \\
      --compare-mode interleaved --rate 8 --slo ttft=1s,itl=100ms
"""


def _arg_type(parse: Any) -> Any:
    """Turns a parser raising ValueError into an argparse type with the same message."""

    @functools.wraps(parse)
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _positive_float(what: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not value > 0:
            raise ValueError(f"{what} must be > 0, got {text}")
        return value

    return parse


def _range_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise ValueError(f"must be in [0, 1), got {text}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"must be a finite number >= 0, got {text}")
    return value


def _timeout(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def _percentiles(text: str) -> tuple[float, ...]:
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number") from None
        if not 0 < value <= 100:
            raise ValueError(f"percentiles must be in (0, 100], got {part.strip()}")
        values.append(value)
    return tuple(values)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    default_target = f"localhost:{DEFAULT_ROUTER_GRPC_PORT}"
    tg = parser.add_argument_group("targets")
    tg.add_argument(
        "--target", action="append", type=_arg_type(Target.parse), metavar="[NAME=]HOST:PORT",
        help="gRPC address of a router, optionally named; repeat to compare targets "
        f"(ratios are to the first one). Default: {default_target}")
    tg.add_argument(
        "--compare-mode", choices=COMPARE_MODES, default="back-to-back",
        help="with several targets: run the workload against each in turn (back-to-back), or "
        "alternate requests between them on one arrival schedule (interleaved). "
        "Default: %(default)s")
    tg.add_argument("--model", default="",
                    help="model name sent with each request; empty: the router's default")

    wg = parser.add_argument_group("workload")
    wg.add_argument("--workload", choices=WORKLOAD_NAMES, default="random",
                    help="what to send (see docs/bench.md). Default: %(default)s")
    wg.add_argument("--num-requests", type=_arg_type(_positive_int), default=100,
                    help="requests to send; conversations for multi-turn, at most this many "
                    "lines for jsonl. Default: %(default)s")
    wg.add_argument("--input-len", type=_arg_type(_positive_int), default=512,
                    help="prompt tokens (random), first-turn prompt tokens (multi-turn). "
                    "Default: %(default)s")
    wg.add_argument("--output-len", type=_arg_type(_positive_int), default=128,
                    help="output tokens per request of synthetic workloads (generated with "
                    "ignore_eos, so exact). Default: %(default)s")
    wg.add_argument("--range-ratio", type=_arg_type(_range_ratio), default=0.0,
                    help="random workload: lengths are uniform in [len*(1-r), len*(1+r)]. "
                    "Default: %(default)s")
    wg.add_argument("--num-tenants", type=_arg_type(_positive_int), default=4,
                    help="shared-prefix: number of tenants, each with its own system prefix. "
                    "Default: %(default)s")
    wg.add_argument("--prefix-len", type=_arg_type(_non_negative_int), default=1024,
                    help="shared-prefix: tokens of each tenant's prefix. Default: %(default)s")
    wg.add_argument("--question-len", type=_arg_type(_non_negative_int), default=64,
                    help="shared-prefix: tokens of the question after the prefix. "
                    "Default: %(default)s")
    wg.add_argument("--turns", type=_arg_type(_positive_int), default=3,
                    help="multi-turn: turns per conversation. Default: %(default)s")
    wg.add_argument("--user-turn-len", type=_arg_type(_non_negative_int), default=64,
                    help="multi-turn: tokens of each user turn after the first. "
                    "Default: %(default)s")
    wg.add_argument("--dataset", type=Path, metavar="FILE.jsonl",
                    help='jsonl: file of {"prompt": ..., "output_len": N} or '
                    '{"prompt_len": M, "output_len": N} lines')
    wg.add_argument("--vocab-size", type=_arg_type(_positive_int), default=DEFAULT_VOCAB_SIZE,
                    help="vocabulary size of the served model; synthetic token ids are drawn "
                    "from [100, vocab-size). Default: %(default)s")
    wg.add_argument("--seed", type=int, default=0,
                    help="seed of the workload and of the arrival process. Default: %(default)s")

    ag = parser.add_argument_group("load")
    ag.add_argument("--rate", type=_arg_type(_positive_float("--rate")), default=math.inf,
                    help="mean request (session) arrivals per second per target; inf sends "
                    "everything at once. Default: %(default)s")
    ag.add_argument("--burstiness", type=_arg_type(_positive_float("--burstiness")),
                    default=1.0,
                    help="gamma shape of the arrival gaps: 1 is Poisson, < 1 burstier, > 1 more "
                    "regular, inf constant gaps. Default: %(default)s")
    ag.add_argument("--concurrency", type=_arg_type(_positive_int), default=None,
                    help="most requests (sessions) in flight per target; with --rate inf this "
                    "is a closed loop of this many clients. Default: unlimited")
    ag.add_argument("--warmup", type=_arg_type(_non_negative_int), default=0,
                    help="requests sent one at a time to each target before the run, not "
                    "measured. Default: %(default)s")
    ag.add_argument("--timeout", type=_arg_type(_timeout), default=600.0, metavar="DURATION",
                    help="deadline of each request, e.g. 30s. Default: 600s")
    ag.add_argument("--temperature", type=_arg_type(_temperature), default=None,
                    help="sampling temperature; default: the router's")
    ag.add_argument("--connect-timeout", type=_arg_type(_timeout), default=10.0,
                    metavar="DURATION",
                    help="how long to wait for each target to accept a connection before the "
                    "run, e.g. 5s. Default: 10s")
    ag.add_argument("--channels", type=_arg_type(_positive_int), default=1,
                    help="gRPC connections per target. Default: %(default)s")

    og = parser.add_argument_group("results")
    og.add_argument("--slo", type=_arg_type(parse_slo), default=None,
                    metavar="ttft=500ms,tpot=50ms,...",
                    help="service-level objectives for goodput: any of ttft, tpot, itl (largest "
                    "gap of a request), e2e, each a duration like 500ms or 0.5s")
    og.add_argument("--percentiles", type=_arg_type(_percentiles),
                    default=DEFAULT_PERCENTILES, metavar="50,90,99",
                    help="latency percentiles to report. Default: 50,90,99")
    og.add_argument("--output-dir", type=Path, default=None,
                    help="where result.json and the plots go. Default: "
                    "bench-results/<date-time>")
    og.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    og.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def add_parser(subparsers: Any) -> None:
    """Registers the ``bench`` subcommand; its handler is ``args.handler(args) -> int``."""
    parser = subparsers.add_parser(
        "bench", help="benchmark routers: throughput, goodput and latency under SLOs",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(handler=functools.partial(run_command, parser=parser))


def build_parser(prog: str = "pdserve bench") -> argparse.ArgumentParser:
    """A stand-alone parser of the ``bench`` options (used by ``python -m pdserve.bench``)."""
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(handler=functools.partial(run_command, parser=parser))
    return parser


def _config(args: argparse.Namespace, spec: WorkloadSpec, arrivals: ArrivalProcess,
            targets: Sequence[Target]) -> dict[str, Any]:
    return {
        "targets": [{"name": t.name, "address": t.address} for t in targets],
        "compare_mode": args.compare_mode if len(targets) > 1 else None,
        "model": args.model,
        "workload": {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in vars(spec).items()},
        "arrivals": {"rate": arrivals.rate, "burstiness": arrivals.burstiness,
                     "seed": arrivals.seed, "description": arrivals.describe()},
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "timeout_s": args.timeout,
        "temperature": args.temperature,
        "channels": args.channels,
        "slo": args.slo.as_dict() if args.slo else {},
        "percentiles": list(args.percentiles),
    }


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs ``pdserve bench`` with parsed ``args``; bad option combinations exit via
    ``parser.error`` (status 2). Returns 0, or 1 when no target could be reached or every
    request failed."""
    targets: list[Target] = args.target or [Target.parse(f"localhost:{DEFAULT_ROUTER_GRPC_PORT}")]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        parser.error(f"--target: names must be unique, got {', '.join(names)}")
    if args.workload == "jsonl":
        if args.dataset is None:
            parser.error("--workload jsonl needs --dataset FILE.jsonl")
        if not args.dataset.is_file():
            parser.error(f"--dataset: {args.dataset} does not exist or is not a file")
    elif args.dataset is not None:
        parser.error(f"--dataset is only used by --workload jsonl, not {args.workload}")
    try:
        spec = WorkloadSpec(
            name=args.workload, num_requests=args.num_requests, input_len=args.input_len,
            output_len=args.output_len, range_ratio=args.range_ratio,
            num_tenants=args.num_tenants, prefix_len=args.prefix_len,
            question_len=args.question_len, turns=args.turns, user_turn_len=args.user_turn_len,
            dataset=args.dataset, vocab_size=args.vocab_size, seed=args.seed)
        sessions = build_workload(spec)
    except WorkloadError as exc:
        parser.error(str(exc))
    arrivals = ArrivalProcess(rate=args.rate, burstiness=args.burstiness, seed=args.seed)
    options = RunOptions(timeout_s=args.timeout, max_concurrency=args.concurrency,
                         model=args.model, temperature=args.temperature,
                         num_channels=args.channels, warmup_requests=args.warmup,
                         connect_timeout_s=args.connect_timeout)
    console = Console()
    num_requests = len(targets) * sum(len(s.turns) for s in sessions)
    console.print(f"pdserve bench: {spec.name} workload, {num_requests} requests, "
                  f"{arrivals.describe()}, targets {', '.join(names)}")
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                        TimeElapsedColumn(), console=console, disable=args.no_progress)
    task = progress.add_task("requests", total=num_requests, failed=0)
    failures = 0

    def on_record(record: RequestRecord) -> None:
        nonlocal failures
        failures += 0 if record.success else 1
        progress.update(task, advance=1, failed=failures)

    try:
        with progress:
            results = asyncio.run(run_comparison(targets, sessions, arrivals, options,
                                                 args.compare_mode, on_record))
    except TargetUnavailableError as exc:
        console.print(f"[red]pdserve bench: {exc}[/red]")
        return 1

    summaries = summarize_runs(results, args.slo, args.percentiles)
    console.print(summary_table(summaries))
    rows = comparison_rows(summaries) if len(targets) > 1 else None
    if rows is not None:
        console.print(comparison_table(rows))
    out_dir = args.output_dir or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    records = [r for result in results for r in result.records]
    runs = [{"targets": [t.name for t in r.targets], "started_at": r.started_at,
             "duration_s": r.duration_s} for r in results]
    report = build_report(_config(args, spec, arrivals, targets), summaries, records, runs, rows)
    written = [write_json(out_dir / "result.json", report)]
    if not args.no_plots:
        written += write_plots(out_dir, {t.name: [r for r in records if r.target == t.name]
                                         for t in targets})
    console.print("wrote " + ", ".join(str(p) for p in written))
    if not any(s.completed for s in summaries.values()):
        errors = {code: n for s in summaries.values() for code, n in s.errors.items()}
        console.print(f"[red]pdserve bench: every request failed ({errors})[/red]")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` (default ``sys.argv[1:]``) and runs the benchmark; returns the status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status
