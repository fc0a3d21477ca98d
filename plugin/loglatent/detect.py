"""Per-event DBSCAN on KL values, the rule that picks ``eps``, and the ensemble vote.

KL values are one-dimensional, so DBSCAN reduces to sorting and counting. A point is a core point
when at least ``min_samples`` values (itself included) lie within ``eps`` of it. A point is noise
when it is not a core point and no core point lies within ``eps``. This gives the same noise
labels as ``sklearn.cluster.DBSCAN`` on the same values, for a whole batch of windows at once.

The ``eps`` rule
----------------
For each window of KL values, take every point's distance to its ``min_samples - 1``-th nearest
neighbour (the k-distance that decides whether it is a core point). Days that repeat exactly
(silent days, a cron job that logs at the same minutes every day) have the same KL value and a
k-distance of zero, so they are a cluster at any ``eps``. The rule looks at the other days:

- When at least ``min_samples`` days have a positive k-distance, those days vary from day to day
  as a matter of course, and ``eps`` is the robust upper fence of their k-distances,
  ``median + eps_mad_factor * 1.4826 * MAD``. A day past the fence cannot be a core point, and it
  is noise unless it lies within ``eps`` of a core point.
- When fewer days vary, a varying day is rarer than the shortest normal state DBSCAN accepts
  (``min_samples`` days), and ``eps`` falls back to ``min_eps``: each such day is noise unless it
  lies that close to a cluster.

``eps`` is never below ``min_eps``, so that values that differ only by float rounding are not
told apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MAD_TO_STD = 1.4826  # scales the median absolute deviation to the standard deviation of a normal distribution


def k_distances(windows: np.ndarray, k: int) -> np.ndarray:
    """Return each value's distance to its k-th nearest other value in its row.

    ``windows`` is (rows x n) with n > k. The result has the same shape.
    """
    ordered = np.sort(windows, axis=1)
    n = ordered.shape[1]
    order = np.argsort(windows, axis=1, kind="stable")
    best = np.full(ordered.shape, np.inf)
    positions = np.arange(n)
    # In one dimension the k nearest neighbours of a point form, with the point, a run of k + 1
    # neighbouring values in sorted order. Try every run that contains the point.
    for offset in range(k + 1):
        start = positions - offset
        valid = (start >= 0) & (start + k < n)
        clipped = np.clip(start, 0, n - k - 1)
        left = ordered - np.take(ordered, clipped, axis=1)
        right = np.take(ordered, clipped + k, axis=1) - ordered
        radius = np.maximum(left, right)
        best = np.where(valid, np.minimum(best, radius), best)
    result = np.empty_like(best)
    np.put_along_axis(result, order, best, axis=1)
    return result


def choose_eps(
    windows: np.ndarray, min_samples: int, mad_factor: float, min_eps: float, distances: np.ndarray | None = None
) -> np.ndarray:
    """Return one ``eps`` per row by the rule described in the module notes.

    ``distances`` are the windows' ``k_distances`` for ``min_samples - 1``, when already computed.
    """
    if distances is None:
        distances = k_distances(windows, min_samples - 1)
    varying = distances > 0
    eps = np.full(len(windows), float(min_eps))
    rows = np.flatnonzero(varying.sum(axis=1) >= min_samples)
    if len(rows):
        masked = np.where(varying[rows], distances[rows], np.nan)
        median = np.nanmedian(masked, axis=1)
        mad = np.nanmedian(np.abs(masked - median[:, None]), axis=1) * MAD_TO_STD
        eps[rows] = np.maximum(median + mad_factor * mad, min_eps)
    return eps


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
    choose: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Judge each day in ``positions`` against its trailing window of ``history_days`` days.

    ``scores`` is (rows x days), one row per member and event. For each position p with at least
    ``min_samples`` days of history (p itself included), the window is days
    ``max(0, p - history_days + 1)`` to p, ``choose(windows, k_distances)`` returns one eps per
    row, and the result says whether day p is DBSCAN noise in its window. Returns
    ``(noise, eps)``, both (len(positions) x rows); positions without enough history are never
    noise and have eps NaN.
    """
    noise = np.zeros((len(positions), scores.shape[0]), dtype=bool)
    eps_used = np.full((len(positions), scores.shape[0]), np.nan)
    for index, position in enumerate(int(p) for p in positions):
        start = max(0, position - history_days + 1)
        if position - start + 1 < min_samples:
            continue
        windows = scores[:, start:position + 1]
        distances = k_distances(windows, min_samples - 1)
        eps = choose(windows, distances)
        # A value is a core point when its (min_samples - 1)-th nearest other value lies within eps.
        core = distances <= eps[:, None]
        near_core = ((np.abs(windows - windows[:, -1:]) <= eps[:, None]) & core).any(axis=1)
        noise[index] = ~near_core
        eps_used[index] = eps
    return noise, eps_used


def vote(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (anomaly, votes) from a (data points x members) boolean matrix.

    A data point is an anomaly when more than half of the members flag it.
    """
    votes = flags.sum(axis=1)
    return votes * 2 > flags.shape[1], votes
