from __future__ import annotations

import itertools
import math
from types import FunctionType

import numpy as np
import pytest

from loglatent.burst import arrivals_from_counts, bursty_days, kleinberg


def test_dense_run_is_a_burst() -> None:
    steady = np.arange(0, 36_000, 60.0)  # one arrival a minute for ten hours
    dense = 18_000 + np.arange(100) * 1.0  # 100 arrivals in 100 seconds
    arrivals = np.unique(np.concatenate([steady, dense + 0.5]))
    bursts = kleinberg(arrivals)

    assert bursts[0].level == 0
    assert (bursts[0].start, bursts[0].end) == (arrivals[0], arrivals[-1])
    upper = [b for b in bursts if b.level >= 1]
    assert upper
    assert all(17_900 <= b.start and b.end <= 18_200 for b in upper)


def test_steady_stream_has_no_burst() -> None:
    bursts = kleinberg(np.arange(0, 36_000, 60.0))
    assert [b.level for b in bursts] == [0]


def test_invalid_input_rejected() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        kleinberg(np.array([1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="s must be greater than 1"):
        kleinberg(np.array([1.0, 2.0]), s=1)
    with pytest.raises(ValueError, match="empty"):
        kleinberg(np.array([]))


def test_minute_counts_spread_evenly() -> None:
    counts = np.zeros(1440)
    counts[2] = 4
    assert arrivals_from_counts(counts).tolist() == [127.5, 142.5, 157.5, 172.5]


def test_bursty_day_flagged() -> None:
    counts = np.zeros((5, 1440))
    counts[:, ::60] = 1  # hourly job on every day
    counts[3, 600:610] = 30  # a flood on the fourth day
    assert bursty_days(counts).tolist() == [False, False, False, True, False]


# Comparison with pybursts 0.1.1 (PyPI), an independent port of the R package "bursts". It
# implements the same gap model: state i has rate s**i / mean gap, moving up from i to j costs
# (j - i) * gamma * ln(n) for n gaps, and moving down is free. A Viterbi pass picks the cheapest
# path. Its s and gamma mean the same as ours, so both get the same arguments.
#
# pybursts indexes its burst table with floats, which numpy rejects since 1.12 (checked on 2.4.6).
# It always closes at least the level-0 burst, so every call with two or more arrivals raises
# IndexError after the Viterbi pass has finished. The test reads the decoded path from the failing
# frame and leaves pybursts and numpy unchanged.


@pytest.fixture(scope="module")
def pybursts_kleinberg() -> FunctionType:
    module = pytest.importorskip("pybursts.pybursts", reason="pybursts is not installed; pip install -e '.[test]'")
    return module.kleinberg


def _pybursts_states(kleinberg_function: FunctionType, times: np.ndarray, s: float, gamma: float) -> np.ndarray:
    """Run pybursts and return its 0-based state for each gap, read from its local ``q`` (1-based)."""
    try:
        kleinberg_function(times.tolist(), s=s, gamma=gamma)
    except IndexError as error:
        trace = error.__traceback__
        assert trace is not None
        while trace.tb_next is not None:
            trace = trace.tb_next
        frame = trace.tb_frame
        assert frame.f_code is kleinberg_function.__code__, "the IndexError came from outside pybursts.kleinberg"
        path = np.asarray(frame.f_locals["q"], dtype=np.float64)
        assert path.shape == (len(times) - 1,)
        return path.astype(np.int64) - 1
    pytest.fail("pybursts.kleinberg returned without its known IndexError; read its burst table instead")


def _bursts_from_states(states: np.ndarray, times: np.ndarray) -> list[tuple[int, float, float]]:
    """List a burst of each level L for each maximal run of gaps in state L or above.

    A run over gaps a..b spans times[a] to times[b + 1]. The list is sorted by start, outer levels first.
    """
    bursts: list[tuple[int, float, float]] = []
    for level in range(int(states.max()) + 1):
        inside = np.concatenate([[0], (states >= level).astype(np.int64), [0]])
        edges = np.flatnonzero(np.diff(inside))
        for first, stop in zip(edges[::2], edges[1::2]):
            bursts.append((level, float(times[first]), float(times[stop])))
    return sorted(bursts, key=lambda burst: (burst[1], burst[0]))


def _arrivals(gap_means: list[tuple[float, int]], seed: int, integer: bool = False) -> np.ndarray:
    """Draw arrivals whose gaps are exponential with each mean for the given number of gaps, in order."""
    rng = np.random.default_rng(seed)
    gaps = np.concatenate([rng.exponential(mean, count) for mean, count in gap_means])
    times = 1000.0 + np.concatenate([[0.0], np.cumsum(gaps)])
    if integer:
        times = np.unique(np.round(times))
    return times


def _jittered_grid(count: int, step: float, jitter: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1000.0 + np.arange(count) * step + rng.uniform(-jitter, jitter, count)


# case: (arrivals, s, gamma, top level the reference must reach, or 0 where it must find no burst)
REFERENCE_CASES = {
    "no_burst": (_jittered_grid(200, 60.0, 5.0, seed=1), 2.0, 1.0, 0),
    "clear_burst": (_arrivals([(60.0, 100), (2.0, 40), (60.0, 100)], seed=2), 2.0, 1.0, 1),
    "nested_bursts": (_arrivals([(60.0, 80), (10.0, 30), (0.5, 30), (10.0, 30), (60.0, 80)], seed=3), 2.0, 1.0, 2),
    "two_bursts_s3": (_arrivals([(30.0, 60), (1.0, 20), (30.0, 60), (3.0, 20), (30.0, 60)], seed=4), 3.0, 0.5, 1),
    "poisson_s1_5": (_arrivals([(5.0, 250)], seed=5), 1.5, 2.0, 0),
    "integer_seconds": (_arrivals([(20.0, 100), (1.5, 60), (20.0, 100)], seed=6, integer=True), 2.0, 1.0, 1),
    "short_stream": (_arrivals([(10.0, 5), (2.0, 4), (10.0, 5)], seed=8), 2.0, 0.5, 1),
    "two_arrivals": (np.array([3.0, 7.5]), 2.0, 1.0, 0),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_bursts_match_pybursts(case: str, pybursts_kleinberg: FunctionType) -> None:
    times, s, gamma, expected_top_level = REFERENCE_CASES[case]
    reference = _bursts_from_states(_pybursts_states(pybursts_kleinberg, times, s, gamma), times)
    top_level = max(level for level, _, _ in reference)
    if expected_top_level == 0:
        assert top_level == 0, f"the case should have no burst, but pybursts found {reference}"
    else:
        assert top_level >= expected_top_level, (
            f"the case should reach level {expected_top_level}, but pybursts found {reference}")

    ours = [(burst.level, burst.start, burst.end) for burst in kleinberg(times, s, gamma)]

    assert ours == reference


def _brute_force_states(gaps: np.ndarray, s: float, gamma: float, state_count: int) -> np.ndarray:
    """Return the cheapest path over ``state_count`` states, found by scoring every path.

    Costs follow Kleinberg's definitions: -ln(rate * exp(-rate * gap)) for each gap, plus
    (j - i) * gamma * ln(n) for n gaps and each move up from i to j, starting in state 0.
    """
    count = len(gaps)
    rates = s ** np.arange(state_count) / (gaps.sum() / count)
    emission = -np.log(rates)[None, :] + rates[None, :] * gaps[:, None]
    paths = np.array(list(itertools.product(range(state_count), repeat=count)), dtype=np.int64)
    previous = np.concatenate([np.zeros((len(paths), 1), dtype=np.int64), paths[:, :-1]], axis=1)
    costs = emission[np.arange(count), paths].sum(axis=1)
    costs += gamma * math.log(count) * np.maximum(paths - previous, 0).sum(axis=1)
    return paths[int(np.argmin(costs))]


@pytest.mark.parametrize(("seed", "s", "gamma"), [(0, 2.0, 1.0), (1, 2.0, 0.5), (2, 3.0, 1.0), (3, 2.0, 0.3),
                                                  (4, 3.0, 0.5), (5, 2.0, 2.0), (6, 2.0, 1.0), (7, 3.0, 0.3)])
def test_viterbi_matches_brute_force(seed: int, s: float, gamma: float) -> None:
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.5, 1.5, 6)
    first = int(rng.integers(0, 5))
    gaps[first:first + 2] *= rng.uniform(0.05, 0.3, 2)  # a short dense stretch, so some paths leave state 0
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    # kleinberg() stops at this many states, the bound from Kleinberg's KDD 2002 paper. The search goes one
    # state higher, so a bound that cut off the cheapest path fails here.
    enough = math.ceil(1 + math.log(gaps.sum(), s) + math.log(1 / gaps.min(), s))
    states = _brute_force_states(gaps, s, gamma, enough + 1)

    ours = [(burst.level, burst.start, burst.end) for burst in kleinberg(times, s, gamma)]

    assert ours == _bursts_from_states(states, times)
