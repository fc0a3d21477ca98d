"""Per-event DBSCAN on daily scores, the rule that picks ``eps``, and the ensemble vote.

Scores are one-dimensional, so DBSCAN reduces to sorting and counting. A point is a core point
when at least ``min_samples`` values (itself included) lie within ``eps`` of it. A point is noise
when it is not a core point and no core point lies within ``eps``. This gives the same noise
labels as ``sklearn.cluster.DBSCAN`` on the same values, for a whole batch of windows at once.

The ``eps`` rule
----------------
Otomo et al. tuned ``eps`` by hand for each event. Here it follows from each window of scores
(one event, one member, the trailing days), with no labels:

1. Scores are compared on the scale ``ln(score + offset)``. Far above ``offset`` two scores
   differ by their ratio, so that a stream whose busy days score twice its quiet days is judged
   the same at any volume. Near zero the scale is close to linear, so that days that differ by a
   small fraction of ``offset`` (a silent event's single message) stay together.
2. ``eps`` is ``spread_factor`` times the interdecile range (90th minus 10th percentile) of the
   window on that scale, and at least ``min_eps``. The interdecile range ignores the top and
   bottom tenth, so a few anomalous days, however extreme, do not widen ``eps`` and hide others,
   while a second regular state that fills more than a tenth of the days (weekends) does count
   as normal spread.

A day is flagged when it lies farther than ``eps`` from every core point of its window.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

def k_distances(windows: np.ndarray, k: int) -> np.ndarray:
    """Return each value's distance to its k-th nearest other value in its row.

    ``windows`` is (rows x n) with n > k. The result has the same shape.
    """
    order = np.argsort(windows, axis=1, kind="stable")
    best = sorted_k_distances(np.take_along_axis(windows, order, axis=1), k)
    result = np.empty_like(best)
    np.put_along_axis(result, order, best, axis=1)
    return result


def sorted_k_distances(ordered: np.ndarray, k: int) -> np.ndarray:
    """Return ``k_distances`` of rows that are already sorted, in the same sorted order."""
    n = ordered.shape[1]
    best = np.full(ordered.shape, np.inf)
    positions = np.arange(n)
    # In one dimension the k nearest neighbours of a point form, with the point, a run of k + 1
    # neighbouring values in sorted order. Try every run that contains the point.
    for offset in range(k + 1):
        start = positions - offset
        valid = (start >= 0) & (start + k < n)
        clipped = np.clip(start, 0, n - k - 1)
        left = ordered - ordered[:, clipped]
        right = ordered[:, clipped + k] - ordered
        radius = np.maximum(left, right)
        best = np.where(valid, np.minimum(best, radius), best)
    return best


def sorted_percentiles(ordered: np.ndarray, percentiles: tuple[float, ...]) -> np.ndarray:
    """Return ``np.percentile(ordered, percentiles, axis=1)`` for rows that are already sorted.

    Linear interpolation between the two nearest ranks, computed as NumPy computes it, so the
    result is the same to the last bit.
    """
    n = ordered.shape[1]
    results = []
    for percentile in percentiles:
        rank = percentile / 100 * (n - 1)
        below = int(np.floor(rank))
        above = min(below + 1, n - 1)
        fraction = rank - below
        low, high = ordered[:, below], ordered[:, above]
        difference = high - low
        if fraction >= 0.5:
            results.append(high - difference * (1 - fraction))
        else:
            results.append(low + difference * fraction)
    return np.stack(results)


def log_scale(scores: np.ndarray, offset: float) -> np.ndarray:
    """Return ``ln(scores + offset)``: the scale the automatic ``eps`` rule compares scores on."""
    return np.log(np.maximum(scores, 0.0) + offset)


def choose_eps(windows: np.ndarray, spread_factor: float, min_eps: float, ordered: bool = False) -> np.ndarray:
    """Return one ``eps`` per row: ``spread_factor`` times its interdecile range, at least ``min_eps``.

    ``ordered`` means that each row is sorted already, which saves sorting it again.
    """
    low, high = sorted_percentiles(windows, (10, 90)) if ordered else np.percentile(windows, [10, 90], axis=1)
    return np.maximum(spread_factor * (high - low), min_eps)


def core_mask(windows: np.ndarray, eps: np.ndarray, min_samples: int) -> np.ndarray:
    """Return which values are DBSCAN core points: ``min_samples`` values, itself included, within ``eps``."""
    distance = np.abs(windows[:, :, None] - windows[:, None, :])
    neighbours = (distance <= eps[:, None, None]).sum(axis=2)
    return neighbours >= min_samples


def noise_mask(windows: np.ndarray, eps: np.ndarray, min_samples: int) -> np.ndarray:
    """Return DBSCAN's noise labels for every value of every row."""
    core = core_mask(windows, eps, min_samples)
    distance = np.abs(windows[:, :, None] - windows[:, None, :])
    near_core = ((distance <= eps[:, None, None]) & core[:, None, :]).any(axis=2)
    return ~near_core


def last_is_noise(windows: np.ndarray, eps: np.ndarray, min_samples: int) -> np.ndarray:
    """Return, per row, whether the row's last value is DBSCAN noise. Cheaper than ``noise_mask``."""
    core = core_mask(windows, eps, min_samples)
    distance = np.abs(windows - windows[:, -1:])
    near_core = ((distance <= eps[:, None]) & core).any(axis=1)
    return ~near_core


def cluster_centre(values: np.ndarray, eps: float, min_samples: int) -> float:
    """Return the mean of the largest cluster's core values, or the median when there is no cluster."""
    core = core_mask(values[None, :], np.array([eps]), min_samples)[0]
    core_values = np.sort(values[core])
    if len(core_values) == 0:
        return float(np.median(values))
    # Core values closer than eps to their sorted neighbour are one cluster.
    breaks = np.flatnonzero(np.diff(core_values) > eps) + 1
    clusters = np.split(core_values, breaks)
    largest = max(clusters, key=len)
    return float(largest.mean())


def trailing_noise(
    scores: np.ndarray,
    positions: np.ndarray,
    min_samples: int,
    history_days: int,
    choose: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Judge each day in ``positions`` against its trailing window of ``history_days`` days.

    ``scores`` is (rows x days), one row per member and event. For each position p with at least
    ``min_samples`` days of history (p itself included), the window is days
    ``max(0, p - history_days + 1)`` to p, ``choose(sorted_windows)`` returns one eps per row
    from the window's values sorted, and the result marks whether day p is DBSCAN noise in its
    window. Returns ``(noise, eps)``, both (len(positions) x rows); positions without enough
    history are never noise and have eps NaN.
    """
    noise = np.zeros((len(positions), scores.shape[0]), dtype=bool)
    eps_used = np.full((len(positions), scores.shape[0]), np.nan)
    for index, position in enumerate(int(p) for p in positions):
        start = max(0, position - history_days + 1)
        if position - start + 1 < min_samples:
            continue
        windows = scores[:, start:position + 1]
        ordered = np.sort(windows, axis=1)
        eps = choose(ordered)
        near_last = np.abs(ordered - windows[:, -1:]) <= eps[:, None]
        # With min_samples values (itself included) within eps, the day is a core point, so not
        # noise. Only the other rows need the core points of their window.
        undecided = np.flatnonzero(near_last.sum(axis=1) < min_samples)
        if len(undecided):
            core = sorted_k_distances(ordered[undecided], min_samples - 1) <= eps[undecided, None]
            noise[index, undecided] = ~(core & near_last[undecided]).any(axis=1)
        eps_used[index] = eps
    return noise, eps_used


def vote(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (anomaly, votes) from a (data points x members) boolean matrix.

    A data point is an anomaly when more than half of the members flag it.
    """
    votes = flags.sum(axis=1)
    return votes * 2 > flags.shape[1], votes
