"""Kleinberg's burst detection (KDD 2002, "Bursty and Hierarchical Structure in Streams").

The infinite-state automaton of the paper's section 2, cut to the finite number of states the
paper shows to be enough. State i emits inter-arrival gaps from an exponential distribution with
rate ``s**i / mean_gap``. Moving up from state i to state j costs ``(j - i) * gamma * ln(n)`` for
n gaps, and moving down is free. The cheapest state sequence for the observed gaps (found with
the Viterbi recursion) marks the bursts: every step up opens one burst per level crossed, and the
matching step down closes them.

Arrivals must be strictly increasing. Minute histograms give many arrivals in the same minute, so
``arrivals_from_counts`` spreads a minute's k messages evenly across that minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Burst:
    """A burst of ``level`` (0 is the whole stream) from ``start`` to ``end``, in the arrivals' unit."""

    level: int
    start: float
    end: float


def kleinberg(arrivals: np.ndarray, s: float = 2.0, gamma: float = 1.0) -> list[Burst]:
    """Return the bursts of ``arrivals`` (strictly increasing times), ordered by start, outer levels first.

    Raises ``ValueError`` for ``s <= 1``, ``gamma <= 0``, no arrivals or two equal arrival times.
    """
    if s <= 1:
        raise ValueError(f"s must be greater than 1, got {s}")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    times = np.sort(np.asarray(arrivals, dtype=np.float64))
    if len(times) == 0:
        raise ValueError("arrivals must not be empty")
    if len(times) == 1:
        return [Burst(0, float(times[0]), float(times[0]))]
    gaps = np.diff(times)
    if np.any(gaps <= 0):
        raise ValueError("arrivals must be strictly increasing; spread equal times first (arrivals_from_counts)")

    states = _viterbi(gaps, s, gamma)
    return _bursts(states, times)


def _viterbi(gaps: np.ndarray, s: float, gamma: float) -> np.ndarray:
    """Return the cheapest state (0-based) for each gap."""
    count = len(gaps)
    total = float(gaps.sum())
    state_count = int(math.ceil(1 + math.log(total, s) + math.log(1 / float(gaps.min()), s)))
    rates = s ** np.arange(state_count) / (total / count)
    step_cost = gamma * math.log(count)
    # transition[i, j]: the cost of moving from state i to state j.
    levels = np.arange(state_count)
    transition = np.maximum(levels[None, :] - levels[:, None], 0) * step_cost

    cost = np.full(state_count, np.inf)
    cost[0] = 0.0
    back = np.empty((count, state_count), dtype=np.int64)
    log_rates = np.log(rates)
    for position, gap in enumerate(gaps):
        candidates = cost[:, None] + transition
        best_previous = np.argmin(candidates, axis=0)  # the lowest state among equal costs
        # -ln f_j(gap) for the exponential density f_j(x) = rate_j * exp(-rate_j * x)
        cost = candidates[best_previous, levels] - log_rates + rates * gap
        back[position] = best_previous

    states = np.empty(count, dtype=np.int64)
    states[-1] = int(np.argmin(cost))
    for position in range(count - 1, 0, -1):
        states[position - 1] = back[position, states[position]]
    return states


def _bursts(states: np.ndarray, times: np.ndarray) -> list[Burst]:
    bursts: list[list[float]] = []
    open_bursts: list[int] = []
    previous = -1  # below the base state, so the base state opens the level-0 burst
    for position, state in enumerate(states):
        if state > previous:
            for level in range(previous + 1, state + 1):
                open_bursts.append(len(bursts))
                bursts.append([level, float(times[position]), float(times[position])])
        elif state < previous:
            for _ in range(previous - state):
                bursts[open_bursts.pop()][2] = float(times[position])
        previous = int(state)
    while open_bursts:
        bursts[open_bursts.pop()][2] = float(times[-1])
    return [Burst(int(level), start, end) for level, start, end in bursts]


def arrivals_from_counts(counts: np.ndarray, minute_seconds: float = 60.0) -> np.ndarray:
    """Return arrival times (seconds) for per-minute counts, k messages spread evenly in their minute."""
    minutes = np.flatnonzero(counts)
    times: list[np.ndarray] = []
    for minute in minutes:
        k = int(counts[minute])
        times.append(minute * minute_seconds + (np.arange(k) + 0.5) * minute_seconds / k)
    return np.concatenate(times) if times else np.zeros(0)


def bursty_days(counts: np.ndarray, s: float = 2.0, gamma: float = 1.0) -> np.ndarray:
    """Return, for (days x 1440) minute counts of one event, which days a burst of level 1 or more touches."""
    days = counts.shape[0]
    arrivals = arrivals_from_counts(counts.reshape(-1))
    flags = np.zeros(days, dtype=bool)
    if len(arrivals) < 2:
        return flags
    day_seconds = 1440 * 60.0
    for burst in kleinberg(arrivals, s, gamma):
        if burst.level >= 1:
            first, last = int(burst.start // day_seconds), int(burst.end // day_seconds)
            flags[first:last + 1] = True
    return flags
