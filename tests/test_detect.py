import numpy as np
import pytest
from sklearn.cluster import DBSCAN

from loglatent.detect import (
    choose_eps, cluster_centre, k_distances, last_is_noise, log_scale, noise_mask, trailing_noise, vote,
)


def test_k_distances_by_hand() -> None:
    values = np.array([[0.0, 1.0, 3.0, 6.0]])
    # Second-nearest other value: 0 -> 3 (to 3), 1 -> 2 (to 3), 3 -> 3 (to 0 or 6), 6 -> 5 (to 1).
    assert k_distances(values, 2).tolist() == [[3.0, 2.0, 3.0, 5.0]]


def test_repeated_days_and_one_change() -> None:
    values = np.array([[2.0] * 20 + [2.5]])
    eps = choose_eps(values, spread_factor=2.0, min_eps=0.05)
    assert eps.tolist() == [0.05]
    assert noise_mask(values, eps, 7).tolist() == [[False] * 20 + [True]]


def test_eps_is_interdecile_range_times_factor() -> None:
    values = np.array([np.arange(101.0), np.zeros(101)])
    # The 10th and 90th percentiles of 0..100 are 10 and 90.
    assert choose_eps(values, spread_factor=2.0, min_eps=0.05).tolist() == [160.0, 0.05]


def test_varying_days_and_far_day() -> None:
    # 30 days spread evenly 0.1 apart, then one day far away.
    values = np.array([[*(1.0 + 0.1 * np.arange(30)), 9.0]])
    eps = choose_eps(values, spread_factor=2.0, min_eps=0.05)
    assert eps[0] == pytest.approx(2.0 * (3.7 - 1.3))
    noise = noise_mask(values, eps, 7)[0]
    assert noise.tolist() == [False] * 30 + [True]


def test_one_huge_day_hides_nothing() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(1.0, 0.05, 88), [500.0, 1.8]])[None, :]
    eps = choose_eps(values, spread_factor=2.0, min_eps=0.05)
    # The interdecile range ignores the huge day, so the smaller anomaly stays apart too.
    assert eps[0] < 0.4
    assert noise_mask(values, eps, 7)[0, -2:].tolist() == [True, True]


def test_rare_varying_days_are_noise() -> None:
    # Fewer than a tenth of the days differ from the repeated value: each is its own anomaly.
    values = np.array([[0.0] * 80 + [0.7, 1.3, 2.0]])
    eps = choose_eps(values, spread_factor=2.0, min_eps=0.05)
    assert eps.tolist() == [0.05]
    assert noise_mask(values, eps, 7)[0, -3:].tolist() == [True, True, True]


def test_log_scale_compares_ratios() -> None:
    scaled = log_scale(np.array([0.0, 0.1, 100.0, 200.0, 1000.0, 2000.0]), offset=2.0)
    assert scaled[1] - scaled[0] == pytest.approx(np.log(2.1 / 2.0))
    assert scaled[3] - scaled[2] == pytest.approx(scaled[5] - scaled[4], abs=0.01)


def test_noise_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    for trial in range(200):
        size = int(rng.integers(8, 90))
        values = np.round(rng.normal(0, 1, size) * rng.choice([0.01, 1, 10]), 2)
        values[: size // 3] = values[0]
        eps = float(rng.uniform(0.01, 2))
        ours = noise_mask(values[None, :], np.array([eps]), 7)[0]
        reference = DBSCAN(eps=eps, min_samples=7).fit(values[:, None]).labels_ == -1
        assert ours.tolist() == reference.tolist(), trial
        assert last_is_noise(values[None, :], np.array([eps]), 7)[0] == reference[-1]


def test_cluster_centre_is_largest_cluster() -> None:
    values = np.array([1.0] * 10 + [5.0] * 8 + [20.0])
    assert cluster_centre(values, eps=0.5, min_samples=7) == pytest.approx(1.0)


def test_vote_needs_more_than_half() -> None:
    flags = np.array(
        [
            [True, True, False, False],  # 2 of 4: a tie is not a majority
            [True, True, True, False],
            [False, False, False, False],
            [True, True, True, True],
        ]
    )
    anomalous, votes = vote(flags)
    assert votes.tolist() == [2, 3, 0, 4]
    assert anomalous.tolist() == [False, True, False, True]


def test_trailing_noise_matches_sklearn_windows() -> None:
    rng = np.random.default_rng(11)
    scores = np.round(rng.normal(0, 1, (6, 40)) * rng.choice([0.1, 1.0], size=(6, 1)), 2)
    scores[:, 25] += 8.0
    positions = np.arange(40)
    noise, eps = trailing_noise(scores, positions, min_samples=5, history_days=20,
                                choose=lambda windows: np.full(len(windows), 0.4))
    assert not noise[:4].any()
    assert np.isnan(eps[:4]).all()
    for position in range(4, 40):
        start = max(0, position - 19)
        for row in range(6):
            window = scores[row, start:position + 1]
            labels = DBSCAN(eps=0.4, min_samples=5).fit(window[:, None]).labels_
            assert noise[position, row] == (labels[-1] == -1), (position, row)
    assert noise[25].all()


def test_multi_day_burst_flagged_each_day() -> None:
    from loglatent.config import DetectionConfig
    from loglatent.jobs import judge_scores

    rng = np.random.default_rng(4)
    scores = rng.normal(2.0, 0.1, (3, 1, 200)).clip(min=0)
    scores[:, 0, 150:153] = 30.0  # three days of a burst
    scores[:, 0, 170:182] = 60.0  # a new level that lasts twelve days
    judgement = judge_scores(scores, np.arange(200), DetectionConfig())
    flagged = np.flatnonzero(judgement.anomalous[:, 0])

    assert [150, 151, 152] == [day for day in flagged if 150 <= day < 153]
    # The first six days of the new level are anomalies; from the seventh on it is a cluster.
    assert [day for day in flagged if day >= 170] == list(range(170, 176))
    assert len(flagged) == 9


def test_sorted_percentiles_equal_numpy() -> None:
    from loglatent.detect import sorted_percentiles

    rng = np.random.default_rng(8)
    for width in (7, 8, 100, 365):
        values = np.sort(rng.lognormal(0.0, 2.0, size=(50, width)), axis=1)
        expected = np.percentile(values, [10, 90], axis=1)
        assert np.array_equal(sorted_percentiles(values, (10, 90)), expected), width
