"""A short real ``pdserve bench`` run against the session's local cluster.

The cluster (tests/conftest.py) is a real router, one prefill and one decode worker (vLLM CPU
engines over NIXL) serving the tiny test model. The run goes through the command's own entry
point, so options, the runner, the metrics and the JSON report are all exercised end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pdserve.bench.cli import main
from pdserve.bench.metrics import e2e_s, itls_s, output_tokens, tpot_s, ttft_s
from pdserve.bench.record import RequestRecord
from pdserve.launcher import LocalCluster

pytestmark = pytest.mark.engine

NUM_REQUESTS = 6
INPUT_LEN = 40
OUTPUT_LEN = 8

SUMMARY_FIELDS = {
    "num_requests", "completed", "failed", "errors", "duration_s", "total_input_tokens",
    "total_output_tokens", "cached_input_tokens", "request_throughput", "input_throughput",
    "output_throughput", "total_token_throughput", "goodput", "good_requests", "slo",
    "max_output_tokens_per_s", "ttft", "tpot", "itl", "e2e",
}
STATS_FIELDS = {"count", "mean_ms", "median_ms", "std_ms", "max_ms", "percentiles_ms"}
RECORD_FIELDS = {
    "target", "session", "turn", "request_id", "output_len", "prompt_len", "send_s", "chunk_s",
    "chunk_tokens", "end_s", "prompt_tokens", "completion_tokens", "finish_reason", "status",
    "error", "server_timing",
}


@pytest.fixture(scope="module")
def report(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One bench run of a few requests against the cluster, as its parsed result.json."""
    out = tmp_path_factory.mktemp("bench-cluster")
    status = main([
        "--target", f"cluster={cluster.router_address}",
        "--num-requests", str(NUM_REQUESTS), "--input-len", str(INPUT_LEN),
        "--output-len", str(OUTPUT_LEN), "--rate", "20", "--seed", "11",
        "--slo", "ttft=120s,itl=60s", "--timeout", "180s", "--no-progress",
        "--output-dir", str(out),
    ])
    assert status == 0
    data: dict[str, Any] = json.loads((out / "result.json").read_text(encoding="utf-8"))
    data["_out_dir"] = str(out)
    return data


def test_every_request_completes_with_the_asked_token_counts(report: dict[str, Any]) -> None:
    records = [RequestRecord.from_dict(r) for r in report["records"]]
    assert len(records) == NUM_REQUESTS
    assert len({r.request_id for r in records}) == NUM_REQUESTS
    for record in records:
        assert record.success, (record.status, record.error)
        assert record.finish_reason == "FINISH_REASON_LENGTH"
        assert record.prompt_tokens == INPUT_LEN
        # ignore_eos: exactly the asked number of tokens, counted by the router and received
        assert record.completion_tokens == OUTPUT_LEN
        assert sum(record.chunk_tokens) == OUTPUT_LEN
        assert output_tokens(record) == OUTPUT_LEN
        assert record.server_timing["decode_worker"].startswith("decode-")


def test_per_request_latencies_are_positive_and_consistent(report: dict[str, Any]) -> None:
    for record in (RequestRecord.from_dict(r) for r in report["records"]):
        ttft, e2e, tpot = ttft_s(record), e2e_s(record), tpot_s(record)
        gaps = itls_s(record)
        assert ttft is not None and e2e is not None and tpot is not None
        assert 0 < ttft <= e2e
        assert gaps and all(g > 0 for g in gaps), gaps
        assert e2e == pytest.approx(ttft + sum(gaps))
        assert tpot == pytest.approx((e2e - ttft) / (OUTPUT_LEN - 1))
        assert record.chunk_s == sorted(record.chunk_s)
        assert record.end_s is not None and record.end_s >= record.chunk_s[-1]


def test_summary_statistics_are_positive_and_ordered(report: dict[str, Any]) -> None:
    summary = report["summaries"]["cluster"]
    assert SUMMARY_FIELDS <= set(summary)
    assert summary["completed"] == NUM_REQUESTS and summary["failed"] == 0
    assert summary["errors"] == {}
    assert summary["total_input_tokens"] == NUM_REQUESTS * INPUT_LEN
    assert summary["total_output_tokens"] == NUM_REQUESTS * OUTPUT_LEN
    assert summary["duration_s"] > 0 and summary["request_throughput"] > 0
    assert summary["output_throughput"] == pytest.approx(
        NUM_REQUESTS * OUTPUT_LEN / summary["duration_s"])
    # generous SLOs: every request is good
    assert summary["good_requests"] == NUM_REQUESTS
    assert summary["goodput"] == pytest.approx(summary["request_throughput"])
    assert summary["slo"] == {"ttft": 120.0, "itl": 60.0}
    expected_counts = {"ttft": NUM_REQUESTS, "tpot": NUM_REQUESTS, "e2e": NUM_REQUESTS,
                       "itl": NUM_REQUESTS * (OUTPUT_LEN - 1)}
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats = summary[name]
        assert STATS_FIELDS <= set(stats), name
        pcts = stats["percentiles_ms"]
        assert set(pcts) == {"p50", "p90", "p99"}, name
        assert 0 < pcts["p50"] <= pcts["p90"] <= pcts["p99"] <= stats["max_ms"], (name, stats)
        assert stats["mean_ms"] > 0, name
    # ITL gaps are per chunk: as many as the chunks received, less one per request
    num_chunks = sum(len(r["chunk_s"]) for r in report["records"])
    assert summary["itl"]["count"] == num_chunks - NUM_REQUESTS
    assert summary["itl"]["count"] <= expected_counts["itl"]
    for name in ("ttft", "tpot", "e2e"):
        assert summary[name]["count"] == expected_counts[name]
    assert summary["ttft"]["percentiles_ms"]["p99"] <= summary["e2e"]["percentiles_ms"]["p99"]


def test_result_file_has_the_documented_fields(report: dict[str, Any]) -> None:
    assert report["version"] == 1
    assert {"version", "config", "runs", "summaries", "records"} <= set(report)
    assert "comparison" not in report  # one target only
    config = report["config"]
    assert config["targets"][0]["name"] == "cluster"
    assert config["workload"]["name"] == "random"
    assert config["workload"]["input_len"] == INPUT_LEN
    assert config["workload"]["output_len"] == OUTPUT_LEN
    assert config["workload"]["seed"] == 11
    assert config["arrivals"]["rate"] == 20.0
    assert config["arrivals"]["description"] == "Poisson at 20 req/s"
    (run,) = report["runs"]
    assert run["targets"] == ["cluster"] and run["duration_s"] > 0
    for record in report["records"]:
        assert RECORD_FIELDS <= set(record)
    out = Path(report["_out_dir"])
    for name in ("latency_cdf.png", "throughput.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
