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
