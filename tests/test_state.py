import uuid

import pytest
from elasticsearch import Elasticsearch

from loglatent.state import DigestPlan, StateStore, days_to_detect, digest_plan


@pytest.fixture
def store(es: Elasticsearch):
    name = f"test-state-{uuid.uuid4().hex[:10]}"
    yield StateStore(es, name)
    es.indices.delete(index=name, ignore_unavailable=True)


def test_state_survives_new_client(store: StateStore, es_url: str) -> None:
    store.set_checkpoint("last_detected_day", "2024-03-30")
    store.record_run("detect", "2024-03-31T00:30:00Z", "2024-03-31T00:31:10Z", "ok", {"anomalies": 4})

    restarted = StateStore(Elasticsearch(es_url), store.index)
    assert restarted.checkpoint("last_detected_day") == "2024-03-30"
    run = restarted.last_run("detect")
    assert run is not None
    assert run["outcome"] == "ok"
    assert run["details"] == {"anomalies": 4}
    assert restarted.checkpoint("last_digest_day") is None
    assert restarted.last_run("train") is None


def test_first_start_backfills() -> None:
    days = days_to_detect(None, "2024-03-10", backfill_days=7)
    assert days == [f"2024-03-{day:02d}" for day in range(4, 11)]


def test_downtime_detects_each_day_once() -> None:
    assert days_to_detect("2024-03-07", "2024-03-10", backfill_days=7) == ["2024-03-08", "2024-03-09", "2024-03-10"]
    assert days_to_detect("2024-03-10", "2024-03-10", backfill_days=7) == []


def test_backfill_must_be_positive() -> None:
    with pytest.raises(ValueError, match="backfill_days must be at least 1"):
        days_to_detect(None, "2024-03-10", backfill_days=0)


def test_missed_digests_become_one_late() -> None:
    today = "2024-03-10"
    assert digest_plan("2024-03-09", "2024-03-10", today) == DigestPlan(["2024-03-10"], late=False)
    assert digest_plan("2024-03-07", "2024-03-10", today) == DigestPlan(["2024-03-08", "2024-03-09", "2024-03-10"], late=True)
    assert digest_plan(None, "2024-03-10", today) == DigestPlan(["2024-03-10"], late=False)
    assert digest_plan("2024-03-10", "2024-03-10", today) is None
    # Detection lags a day behind: the one day the digest can cover is already late.
    assert digest_plan("2024-03-08", "2024-03-09", today) == DigestPlan(["2024-03-09"], late=True)
    # A digest sent by hand for a day years ago does not make the next one cover every day since.
    long_gap = digest_plan("2005-11-16", "2024-03-10", today, max_days=7)
    assert long_gap is not None
    assert long_gap.days == [f"2024-03-{day:02d}" for day in range(4, 11)]
