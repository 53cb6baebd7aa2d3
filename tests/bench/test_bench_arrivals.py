"""Arrival processes: determinism, mean rate, burstiness, normalisation, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pdserve.bench.arrivals import ArrivalProcess, arrival_offsets


def _gaps(offsets: list[float]) -> np.ndarray:
    return np.diff(np.asarray([0.0, *offsets]))


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a = arrival_offsets(100, rate=5.0, seed=7)
    assert a == arrival_offsets(100, rate=5.0, seed=7)
    assert a != arrival_offsets(100, rate=5.0, seed=8)
    assert ArrivalProcess(5.0, seed=7).offsets(100) == a


@pytest.mark.parametrize(("burstiness", "cv"), [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)])
def test_gaps_have_the_configured_mean_and_spread(burstiness: float, cv: float) -> None:
    rate = 5.0
    gaps = _gaps(arrival_offsets(40_000, rate, burstiness, seed=1, normalize=False))
    # gamma(shape k, scale 1/(rate k)): mean 1/rate, coefficient of variation 1/sqrt(k)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    assert np.all(gaps >= 0)


def test_mean_rate_over_many_seeds_without_normalisation() -> None:
    rates = [100 / arrival_offsets(100, 8.0, seed=s, normalize=False)[-1] for s in range(300)]
    assert float(np.mean(rates)) == pytest.approx(8.0, rel=0.05)


def test_normalised_schedule_ends_at_n_over_rate() -> None:
    offsets = arrival_offsets(50, rate=4.0, burstiness=0.5, seed=3)
    assert offsets[-1] == pytest.approx(50 / 4.0)
    assert all(b >= a for a, b in itertools.pairwise(offsets))
    assert offsets[0] > 0


def test_infinite_burstiness_gives_constant_gaps() -> None:
    offsets = arrival_offsets(4, rate=2.0, burstiness=math.inf)
    assert offsets == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(3, rate=math.inf) == [0.0, 0.0, 0.0]
    assert arrival_offsets(0, rate=1.0) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rate": 0.0}, "rate must be > 0"), ({"rate": -2.0}, "rate must be > 0"),
     ({"rate": math.nan}, "rate must be > 0"), ({"rate": 1.0, "burstiness": 0.0}, "burstiness")],
)
def test_invalid_processes_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ArrivalProcess(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        arrival_offsets(3, **kwargs)  # type: ignore[arg-type]


def test_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="num"):
        arrival_offsets(-1, rate=1.0)


def test_describe() -> None:
    assert ArrivalProcess().describe() == "all at once"
    assert ArrivalProcess(4.0).describe() == "Poisson at 4 req/s"
    assert ArrivalProcess(4.0, 0.5).describe() == "gamma (burstiness 0.5) at 4 req/s"
    assert ArrivalProcess(4.0, math.inf).describe() == "constant gaps at 4 req/s"
