"""Metric arithmetic on hand-made timelines; every expected number is worked out by hand.

Times are dyadic fractions (exact in binary floating point), so equalities at SLO bounds are
exact. The run lasts 8 s and has five requests:

A: sent 1.0, chunks 1.25 1.5 1.625 1.75 (1 token each), 4 output / 10 prompt tokens.
   TTFT 250 ms, ITL 250 125 125 ms, E2E 750 ms, TPOT 500/3 ms.
B: sent 2.0, chunks 2.5 (1 token) 3.0 (2 tokens), usage 3 output / 20 prompt tokens.
   TTFT 500 ms, ITL 500 ms, E2E 1000 ms, TPOT 250 ms.
C: sent 3.0, one chunk 3.125, 1 output / 5 prompt tokens. TTFT = E2E = 125 ms, no TPOT.
D: sent 3.5, RESOURCE_EXHAUSTED.
E: sent 4.0, one chunk at 4.5 but the stream ended without a finish reason: failed.
"""

from __future__ import annotations

import pytest

from pdserve.bench.metrics import (
    e2e_s,
    itls_s,
    latency_stats,
    meets_slo,
    output_tokens,
    summarize,
    throughput_timeline,
    tpot_s,
    ttft_s,
)
from pdserve.bench.record import RequestRecord
from pdserve.bench.slo import SLO, parse_slo


def _record(name: str, send: float, chunks: list[float], tokens: list[int], completion: int,
            prompt: int, status: str = "OK", error: str = "") -> RequestRecord:
    return RequestRecord(target="t", session=0, turn=0, request_id=name, output_len=completion,
                         send_s=send, chunk_s=chunks, chunk_tokens=tokens,
                         completion_tokens=completion, prompt_tokens=prompt, status=status,
                         error=error, finish_reason="FINISH_REASON_LENGTH")


A = _record("A", 1.0, [1.25, 1.5, 1.625, 1.75], [1, 1, 1, 1], 4, 10)
B = _record("B", 2.0, [2.5, 3.0], [1, 2], 3, 20)
C = _record("C", 3.0, [3.125], [1], 1, 5)
D = _record("D", 3.5, [], [], 0, 0, status="RESOURCE_EXHAUSTED", error="no capacity")
E = _record("E", 4.0, [4.5], [1], 0, 7, error="the stream ended without a finish reason")
RECORDS = [A, B, C, D, E]
DURATION_S = 8.0


def test_per_request_latencies() -> None:
    assert ttft_s(A) == 0.25
    assert itls_s(A) == [0.25, 0.125, 0.125]
    assert e2e_s(A) == 0.75
    assert tpot_s(A) == pytest.approx(0.5 / 3)
    assert (ttft_s(B), itls_s(B), e2e_s(B), tpot_s(B)) == (0.5, [0.5], 1.0, 0.25)
    assert (ttft_s(C), itls_s(C), e2e_s(C), tpot_s(C)) == (0.125, [], 0.125, None)
    assert (ttft_s(D), itls_s(D), e2e_s(D), tpot_s(D)) == (None, [], None, None)


def test_e2e_is_ttft_plus_all_gaps() -> None:
    for record in (A, B, C):
        assert e2e_s(record) == pytest.approx(ttft_s(record) + sum(itls_s(record)))  # type: ignore[operator]


def test_output_tokens_prefers_usage_and_falls_back_to_received_ids() -> None:
    assert output_tokens(B) == 3
    no_usage = _record("F", 0.0, [0.5, 1.0], [2, 3], 0, 1)
    assert output_tokens(no_usage) == 5
    # TPOT uses that count: (1.0 - 0.5) / (5 - 1)
    assert tpot_s(no_usage) == 0.125


def test_success_needs_ok_status_chunks_and_no_error() -> None:
    assert [r.success for r in RECORDS] == [True, True, True, False, False]


def test_summary_counts_and_throughputs() -> None:
    s = summarize(RECORDS, DURATION_S)
    assert (s.num_requests, s.completed, s.failed) == (5, 3, 2)
    assert s.errors == {"INCOMPLETE": 1, "RESOURCE_EXHAUSTED": 1}
    assert (s.total_input_tokens, s.total_output_tokens) == (35, 8)
    assert s.request_throughput == 3 / 8
    assert s.input_throughput == 35 / 8
    assert s.output_throughput == 1.0
    assert s.total_token_throughput == 43 / 8
    assert s.goodput is None and s.good_requests is None
    # tokens by 1 s bucket from t=1.0: [4, 1, 3] (B's 2 tokens at 3.0 and C's at 3.125)
    assert s.max_output_tokens_per_s == 4


def test_summary_latency_percentiles() -> None:
    s = summarize(RECORDS, DURATION_S, percentiles=(50, 90, 99))
    # TTFT sorted 125 250 500: p90 at rank 1.8 -> 250 + 0.8 * 250, p99 -> 250 + 0.98 * 250
    assert s.ttft.count == 3
    assert s.ttft.mean_ms == pytest.approx(875 / 3)
    assert s.ttft.median_ms == pytest.approx(250)
    assert s.ttft.percentiles_ms == pytest.approx({"p50": 250, "p90": 450, "p99": 495})
    # TPOT only over A and B: 166.67 and 250
    assert s.tpot.count == 2
    assert s.tpot.mean_ms == pytest.approx((500 / 3 + 250) / 2)
    # ITL pooled: 125 125 250 500 -> median 187.5, p90 at rank 2.7 -> 250 + 0.7 * 250
    assert s.itl.count == 4
    assert s.itl.mean_ms == pytest.approx(250)
    assert s.itl.percentiles_ms == pytest.approx({"p50": 187.5, "p90": 425, "p99": 492.5})
    assert s.itl.max_ms == pytest.approx(500)
    # E2E sorted 125 750 1000
    assert s.e2e.mean_ms == pytest.approx(625)
    assert s.e2e.median_ms == pytest.approx(750)


@pytest.mark.parametrize(
    ("slo", "good"),
    [
        ("ttft=0.25s", 2),  # A at exactly the bound counts; B (500 ms) does not
        ("ttft=0.2s", 1),
        ("tpot=200ms", 2),  # C has one output token: TPOT 0 for goodput, as in vLLM
        ("tpot=100ms", 1),
        ("itl=0.25s", 2),  # A's largest gap is 250 ms, B's 500 ms, C has none
        ("itl=200ms", 1),
        ("e2e=0.75s", 2),
        ("e2el=0.75s", 2),
        ("ttft=0.3s,tpot=0.2s,itl=0.3s,e2e=0.8s", 2),
        ("ttft=0.2s,tpot=0.2s", 1),
        ("ttft=10s,tpot=10s,itl=10s,e2e=10s", 3),  # failed requests are never good
    ],
)
def test_goodput_counts_requests_meeting_every_slo(slo: str, good: int) -> None:
    s = summarize(RECORDS, DURATION_S, parse_slo(slo))
    assert s.good_requests == good
    assert s.goodput == good / DURATION_S


def test_meets_slo_on_single_records() -> None:
    assert meets_slo(A, SLO(ttft_s=0.25))
    assert not meets_slo(A, SLO(ttft_s=0.125))
    assert not meets_slo(D, SLO(ttft_s=100.0))
    assert meets_slo(C, SLO(tpot_s=0.001, itl_s=0.001))


def test_empty_statistics_are_none() -> None:
    s = summarize([D], 1.0, SLO(ttft_s=1.0))
    assert s.completed == 0 and s.good_requests == 0 and s.goodput == 0.0
    assert s.ttft.mean_ms is None and s.ttft.percentiles_ms == {"p50": None, "p90": None,
                                                               "p99": None}
    stats = latency_stats([], (99.9,))
    assert stats.percentiles_ms == {"p99.9": None}


def test_summary_rejects_a_non_positive_duration() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        summarize(RECORDS, 0.0)


def test_throughput_timeline_buckets() -> None:
    starts, tokens, finished = throughput_timeline(RECORDS, bucket_s=1.0)
    assert starts == [0.0, 1.0, 2.0]
    assert tokens == [4.0, 1.0, 3.0]
    assert finished == [1.0, 0.0, 2.0]
    starts, tokens, finished = throughput_timeline(RECORDS, bucket_s=2.0)
    assert starts == [0.0, 2.0]
    assert tokens == [2.5, 1.5]  # 5 then 3 tokens over 2 s buckets
    assert finished == [0.5, 1.0]
    assert throughput_timeline([D]) == ([], [], [])


def test_record_round_trips_through_dict() -> None:
    assert RequestRecord.from_dict({**A.to_dict(), "unknown": 1}) == A
