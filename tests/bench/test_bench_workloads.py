"""Workload generators: exact lengths, shared prefixes, multi-turn extension, JSONL parsing."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from pdserve.bench.workloads import (
    MIN_TOKEN_ID,
    Prompt,
    Session,
    WorkloadError,
    WorkloadSpec,
    build_workload,
    extend_prompt,
    jsonl_workload,
    multi_turn_workload,
    random_workload,
    shared_prefix_workload,
)


def _ids(session: Session, turn: int = 0) -> tuple[int, ...]:
    ids = session.turns[turn].prompt.ids
    assert ids is not None
    return ids


def test_random_workload_exact_lengths_and_id_range() -> None:
    sessions = random_workload(20, input_len=33, output_len=7, vocab_size=500, seed=1)
    assert len(sessions) == 20
    for s in sessions:
        assert len(s.turns) == 1
        assert len(_ids(s)) == 33 and s.turns[0].output_len == 7
        assert all(MIN_TOKEN_ID <= i < 500 for i in _ids(s))


def test_random_workload_range_ratio_spreads_lengths_within_bounds() -> None:
    sessions = random_workload(200, input_len=100, output_len=20, range_ratio=0.5, seed=2)
    in_lens = [len(_ids(s)) for s in sessions]
    out_lens = [s.turns[0].output_len for s in sessions]
    assert min(in_lens) >= 50 and max(in_lens) <= 150 and len(set(in_lens)) > 20
    assert min(out_lens) >= 10 and max(out_lens) <= 30 and len(set(out_lens)) > 5


def test_random_workload_is_seeded() -> None:
    assert random_workload(5, 16, 4, seed=3) == random_workload(5, 16, 4, seed=3)
    assert random_workload(5, 16, 4, seed=3) != random_workload(5, 16, 4, seed=4)


def test_shared_prefix_tenants_really_share_their_prefix() -> None:
    sessions = shared_prefix_workload(200, num_tenants=4, prefix_len=64, question_len=8,
                                      output_len=5, seed=5)
    by_tenant: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for s in sessions:
        turn = s.turns[0]
        assert turn.tenant is not None and turn.output_len == 5
        assert len(_ids(s)) == 72
        by_tenant[turn.tenant].append(_ids(s))
    assert sorted(by_tenant) == [0, 1, 2, 3]
    prefixes = {}
    for tenant, prompts in by_tenant.items():
        assert len({p[:64] for p in prompts}) == 1, f"tenant {tenant} has several prefixes"
        assert len({p[64:] for p in prompts}) == len(prompts), "questions should differ"
        prefixes[tenant] = prompts[0][:64]
    # no two tenants share even their first token, hence no cached block
    assert len({p[0] for p in prefixes.values()}) == 4


def test_multi_turn_workload_shapes() -> None:
    sessions = multi_turn_workload(3, turns=4, input_len=32, user_turn_len=8, output_len=6,
                                   seed=6)
    assert len(sessions) == 3
    for s in sessions:
        assert len(s.turns) == 4
        assert len(_ids(s, 0)) == 32
        assert [len(_ids(s, k)) for k in range(1, 4)] == [8, 8, 8]
        assert all(t.output_len == 6 for t in s.turns)


def test_extend_prompt_appends_previous_output_then_user_turn() -> None:
    previous = Prompt(ids=(101, 102))
    assert extend_prompt(previous, [7, 8], "", Prompt(ids=(103,))).ids == (101, 102, 7, 8, 103)
    text = extend_prompt(Prompt(text="Q1 "), [], "A1 ", Prompt(text="Q2"))
    assert text.text == "Q1 A1 Q2"
    with pytest.raises(ValueError, match="mixes"):
        extend_prompt(previous, [], "", Prompt(text="x"))


def test_prompt_needs_exactly_one_form() -> None:
    with pytest.raises(ValueError):
        Prompt()
    with pytest.raises(ValueError):
        Prompt(ids=(1,), text="x")
    assert Prompt(text="hi").num_tokens is None and Prompt(ids=(1, 2)).num_tokens == 2


def test_jsonl_workload_reads_both_forms(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(
        json.dumps({"prompt": "Tell me a story", "output_len": 12}) + "\n\n"
        + json.dumps({"prompt_len": 40, "output_len": 3}) + "\n"
        + json.dumps({"prompt": "again", "output_len": 1}) + "\n"
    )
    sessions = jsonl_workload(path)
    assert len(sessions) == 3
    assert sessions[0].turns[0].prompt == Prompt(text="Tell me a story")
    assert sessions[0].turns[0].output_len == 12
    assert len(_ids(sessions[1])) == 40 and sessions[1].turns[0].output_len == 3
    assert len(jsonl_workload(path, num=2)) == 2
    assert build_workload(WorkloadSpec(name="jsonl", dataset=path, num_requests=1)) == \
        sessions[:1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: not JSON"),
        ("[1, 2]", ":2: expected a JSON object"),
        ('{"prompt": "x"}', ":2: output_len must be an integer >= 1"),
        ('{"prompt": "x", "output_len": 0}', ":2: output_len"),
        ('{"prompt": "x", "output_len": true}', ":2: output_len"),
        ('{"output_len": 3}', ":2: needs a prompt or a prompt_len"),
        ('{"prompt": "", "output_len": 3}', ":2: prompt must be a non-empty string"),
        ('{"prompt_len": -4, "output_len": 3}', ":2: prompt_len must be an integer >= 1"),
    ],
)
def test_jsonl_workload_errors_name_file_and_line(tmp_path: Path, line: str,
                                                  message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "output_len": 2}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=message):
        jsonl_workload(path)


def test_jsonl_workload_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot read"):
        jsonl_workload(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(WorkloadError, match="no requests"):
        jsonl_workload(empty)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "sharegpt"}, "unknown workload 'sharegpt'"),
        ({"num_requests": 0}, "num_requests"),
        ({"output_len": 0}, "output_len"),
        ({"range_ratio": 1.0}, "range_ratio"),
        ({"vocab_size": 50}, "vocab_size"),
        ({"name": "jsonl"}, "needs a dataset"),
        ({"name": "shared-prefix", "prefix_len": 0, "question_len": 0}, "prefix_len"),
    ],
)
def test_workload_spec_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        WorkloadSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["random", "shared-prefix", "multi-turn"])
def test_build_workload_dispatches(name: str) -> None:
    spec = WorkloadSpec(name=name, num_requests=4, input_len=8, output_len=2, prefix_len=8,
                        question_len=2, turns=2, user_turn_len=2)
    sessions = build_workload(spec)
    assert len(sessions) == 4
    assert all(len(s.turns) == (2 if name == "multi-turn" else 1) for s in sessions)
