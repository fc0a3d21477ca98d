import numpy as np
import pytest

from loglatent.corpus import BURST_KINDS, CLASSES, KINDS_BY_CLASS, generate


@pytest.fixture(scope="module")
def corpus():
    return generate(events=20, devices=4, days=120, seed=3)


def test_shape_and_labels(corpus) -> None:
    assert corpus.counts.shape == (20, 120, 1440)
    assert corpus.labels.shape == (20, 120)
    assert corpus.labels.sum() == len({(i.event, i.day) for i in corpus.injections})
    assert corpus.classes[:5] == list(CLASSES)
    assert corpus.hosts[0] == corpus.hosts[4] != corpus.hosts[5]


def test_no_anomaly_before_warmup(corpus) -> None:
    assert corpus.warmup_days == 20
    assert not corpus.labels[:, :corpus.warmup_days].any()


def test_kinds_fit_classes(corpus) -> None:
    for injection in corpus.injections:
        allowed = set(KINDS_BY_CLASS[corpus.classes[injection.event]]) | {"burst_after_huge"}
        assert injection.kind in allowed


def test_same_seed_same_corpus(corpus) -> None:
    again = generate(events=20, devices=4, days=120, seed=3)
    assert np.array_equal(again.counts, corpus.counts)
    assert again.injections == corpus.injections
    other = generate(events=20, devices=4, days=120, seed=4)
    assert not np.array_equal(other.counts, corpus.counts)


def test_normal_cron_runs_hourly(corpus) -> None:
    cron = corpus.counts[0][~corpus.labels[0]]
    active = (cron > 0).sum(axis=1)
    # 24 runs a day; a delayed run lands in the next minute, so a day has 24 active minutes.
    assert np.all(active == 24)
    minutes = np.flatnonzero(cron.sum(axis=0))
    assert len(minutes) <= 48


def test_silent_event_mostly_silent(corpus) -> None:
    silent = corpus.counts[4][~corpus.labels[4]].sum(axis=1)
    assert (silent == 0).mean() > 0.85
    assert silent.max() <= 3


def test_bursts_exceed_normal_days(corpus) -> None:
    kinds = corpus.kind_labels()
    for event in range(20):
        normal = corpus.counts[event][~corpus.labels[event]]
        busiest_minute = normal.max()
        for day in np.flatnonzero(np.isin(kinds[event], list(BURST_KINDS))):
            assert corpus.counts[event, day].max() > busiest_minute, (event, day)


def test_stop_silences_rest_of_day() -> None:
    corpus = generate(events=120, devices=24, days=120, seed=1)
    stops = [i for i in corpus.injections if i.kind == "stop"]
    assert stops
    for injection in stops:
        day = corpus.counts[injection.event, injection.day]
        assert day[12 * 60:].sum() == 0
        assert day.sum() < np.median(corpus.counts[injection.event].sum(axis=1))


def test_too_few_days_rejected() -> None:
    with pytest.raises(ValueError, match="days must be at least 84"):
        generate(events=5, devices=1, days=60)
