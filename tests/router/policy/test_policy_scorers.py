"""Scorers, filters and the weighted picker."""

from __future__ import annotations

import pytest

from router.policy import (
    CompatibilityFilter,
    Filter,
    LoadScorer,
    PrefixScorer,
    QueueScorer,
    ReadyFilter,
    RoleFilter,
    ScoringRequest,
    WeightedPicker,
    WorkerView,
    apply_filters,
)


def worker(worker_id: str, **fields: object) -> WorkerView:
    fields.setdefault("role", "decode")
    return WorkerView(worker_id=worker_id, endpoint="h:1", compat_hash="c1", **fields)  # type: ignore[arg-type]


REQUEST = ScoringRequest("r1", num_prompt_tokens=1000, block_size=100)  # 10 full blocks


def test_prefix_scorer_is_the_cached_share_of_the_prompt() -> None:
    workers = [
        worker("a", cached_blocks=0),
        worker("b", cached_blocks=5),
        worker("c", cached_blocks=12),
    ]
    assert PrefixScorer().score(REQUEST, workers) == {"a": 0.0, "b": 0.5, "c": 1.0}
    short = ScoringRequest("r2", num_prompt_tokens=99, block_size=100)
    assert PrefixScorer().score(short, workers) == {"a": 0.0, "b": 0.0, "c": 0.0}


def test_queue_scorer_prefers_less_queued_prefill() -> None:
    workers = [
        worker("a", queued_prefill_tokens=0),
        worker("b", queued_prefill_tokens=500),
        worker("c", queued_prefill_tokens=1000),
    ]
    assert QueueScorer().score(REQUEST, workers) == {"a": 1.0, "b": 0.5, "c": 0.0}
    idle = [worker("a"), worker("b")]
    assert QueueScorer().score(REQUEST, idle) == {"a": 1.0, "b": 1.0}


def test_load_scorer_weighs_requests_and_kv_headroom() -> None:
    workers = [
        worker("a", num_running=0, kv_usage=0.0),
        worker("b", num_running=2, num_waiting=2, kv_usage=0.5),
        worker("c", num_running=4, kv_usage=1.3),  # over-reported usage is clamped
    ]
    assert LoadScorer().score(REQUEST, workers) == {"a": 1.0, "b": 0.25, "c": 0.0}


def test_filters() -> None:
    workers = [
        worker("a", role="prefill"),
        worker("b", state="draining"),
        worker("c"),
        WorkerView("d", "decode", "h:1", "other"),
    ]
    assert [w.worker_id for w in RoleFilter("prefill").filter(workers)] == ["a"]
    assert [w.worker_id for w in ReadyFilter().filter(workers)] == ["a", "c", "d"]
    assert [w.worker_id for w in CompatibilityFilter("c1").filter(workers)] == ["a", "b", "c"]
    assert len(CompatibilityFilter(None).filter(workers)) == 4
    chain: list[Filter] = [ReadyFilter(), RoleFilter("decode"), CompatibilityFilter("c1")]
    assert [w.worker_id for w in apply_filters(chain, workers)] == ["c"]


def test_picker_takes_the_highest_weighted_sum() -> None:
    picker = WeightedPicker([(PrefixScorer(), 1.0), (QueueScorer(), 0.5)])
    workers = [
        worker("a", cached_blocks=10, queued_prefill_tokens=1000),  # 1.0 + 0.0
        worker("b", cached_blocks=0, queued_prefill_tokens=0),  # 0.0 + 0.5
    ]
    pick = picker.pick(REQUEST, workers)
    assert pick.worker.worker_id == "a"
    assert pick.scores["a"] == {"prefix": 1.0, "queue": 0.0, "total": 1.0}
    assert pick.scores["b"]["total"] == 0.5
    heavier_queue = WeightedPicker([(PrefixScorer(), 1.0), (QueueScorer(), 3.0)])
    assert heavier_queue.pick(REQUEST, workers).worker.worker_id == "b"


def test_picker_breaks_ties_by_worker_id_whatever_the_order() -> None:
    picker = WeightedPicker([(PrefixScorer(), 1.0), (LoadScorer(), 1.0)])
    workers = [worker(name, cached_blocks=3) for name in ("w3", "w1", "w2")]
    for order in (workers, workers[::-1], workers[1:] + workers[:1]):
        assert picker.pick(REQUEST, order).worker.worker_id == "w1"


def test_picker_rejects_bad_scores_and_weights() -> None:
    class Broken:
        name = "broken"

        def score(self, request: ScoringRequest, workers: object) -> dict[str, float]:
            return {"a": 1.5}

    with pytest.raises(ValueError, match="outside"):
        WeightedPicker([(Broken(), 1.0)]).pick(REQUEST, [worker("a")])
    with pytest.raises(ValueError):
        WeightedPicker([(PrefixScorer(), -1.0)])
    with pytest.raises(ValueError):
        WeightedPicker([(PrefixScorer(), float("nan"))])
    with pytest.raises(ValueError):
        WeightedPicker([(PrefixScorer(), 1.0)]).pick(REQUEST, [])


def test_worker_view_validates() -> None:
    with pytest.raises(ValueError):
        worker("a", num_running=-1)
    with pytest.raises(ValueError):
        worker("a", role="router")
    with pytest.raises(ValueError):
        worker("a", kv_usage=float("nan"))
