"""SLO and duration parsing."""

from __future__ import annotations

import pytest

from pdserve.bench.slo import SLO, parse_duration, parse_slo


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("0.5s", 0.5), ("2s", 2.0), ("250us", 250e-6), (" 40 ms ", 0.04),
     ("1e3ms", 1.0), (".5s", 0.5), ("0ms", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "500", "5 m", "-1s", "1h", "", "ms", "1e999s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_message_names_the_value() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("abc")
    assert str(info.value) == "'abc' is not a duration like 500ms or 0.5s"


def test_parse_slo_all_names() -> None:
    slo = parse_slo("ttft=500ms, tpot=50ms,itl=0.1s,e2e=10s")
    assert slo == SLO(ttft_s=0.5, tpot_s=0.05, itl_s=0.1, e2e_s=10.0)
    assert slo.as_dict() == {"ttft": 0.5, "tpot": 0.05, "itl": 0.1, "e2e": 10.0}
    assert str(slo) == "ttft=500ms,tpot=50ms,itl=100ms,e2e=10000ms"


def test_parse_slo_subset_and_alias() -> None:
    slo = parse_slo("e2el=3s")
    assert slo == SLO(e2e_s=3.0)
    assert not slo.is_empty
    assert SLO().is_empty


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft=abc", "'abc' is not a duration like 500ms or 0.5s"),
        ("ttft", "is not name=duration"),
        ("foo=1s", "unknown SLO 'foo'"),
        ("ttft=1s,ttft=2s", "given twice"),
        ("ttft=0ms", "must be > 0"),
        ("", "sets no SLO"),
    ],
)
def test_parse_slo_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_slo(text)


def test_slo_rejects_non_positive_bounds() -> None:
    with pytest.raises(ValueError, match="tpot"):
        SLO(tpot_s=0.0)
