"""End to end against the real node: generated logs with injected anomalies, through ingest, train and detect."""

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from elasticsearch import Elasticsearch, helpers

from helpers import index_documents
from loglatent.config import Config
from loglatent.jobs import detect, run_once, train
from loglatent.ingest import ingest, open_store
from loglatent.synthetic import generate, kind_of

MODEL = "model:\n  ensemble_size: 3\n  epochs: 15\n  min_steps: 300\n  batch_size: 256\n  compile: false\n"


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    return generate(seed=11, days=60, hosts=3)


@pytest.fixture
def output(es: Elasticsearch, index_name: str, corpus) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Index the corpus into ``index_name`` and return the anomaly index, deleted after the test."""
    index_documents(es, index_name, corpus.documents)
    name = f"{index_name}-anomalies"
    yield name
    es.indices.delete(index=f"{name},{name}-scores", ignore_unavailable=True)


def trained_config(es: Elasticsearch, make_config, index: str, output: str, extra: str = "", **options: str) -> Config:  # type: ignore[no-untyped-def]
    """Return the configuration of a small model, after ingesting ``index`` and training on all of it."""
    config = make_config(index, extra=MODEL + extra + f"output:\n  index: {output}\n", **options)
    ingest(es, config)
    train(config)
    return config


def anomaly_documents(es: Elasticsearch, index: str) -> dict[str, dict]:  # type: ignore[type-arg]
    es.indices.refresh(index=index)
    return {hit["_id"]: hit["_source"] for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}})}


def test_injected_anomalies_found_and_rerun_stable(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    config = trained_config(es, make_config, index_name, output)

    first = detect(es, config, corpus.first_day, corpus.last_day)
    stored = anomaly_documents(es, output)
    found = {(doc["host"], kind_of(doc["template"]), doc["day"]) for doc in stored.values()}
    for anomaly in corpus.anomalies:
        assert (anomaly.host, anomaly.kind, anomaly.day) in found, anomaly

    event_days = 3 * 5 * 60
    assert len(stored) <= 0.05 * event_days, sorted(found)
    assert first.write.written == len(stored)

    again = detect(es, config, corpus.first_day, corpus.last_day)
    restored = anomaly_documents(es, output)
    assert restored.keys() == stored.keys()
    assert again.write.written == len(stored)
    assert again.write.deleted == 0
    for doc_id, doc in restored.items():
        assert doc["kl"] == stored[doc_id]["kl"]
        assert doc["votes"] == stored[doc_id]["votes"]
        assert doc["run_id"] != stored[doc_id]["run_id"]


def test_anomaly_document_fields(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    config = trained_config(es, make_config, index_name, output, timezone="Europe/Berlin")
    burst = corpus.anomalies[0]
    detect(es, config, burst.day, burst.day)
    stored = anomaly_documents(es, output)
    (doc,) = [d for d in stored.values() if d["host"] == burst.host and kind_of(d["template"]) == "link"]
    assert doc["day"] == burst.day
    assert doc["@timestamp"] == f"{burst.day}T00:00:00+01:00"
    assert doc["method"] == "cvae"
    assert doc["reason"] == "behaviour"
    assert doc["count"] >= 300
    assert doc["count"] == sum(doc["hourly_counts"])
    assert len(doc["hourly_counts"]) == 24
    assert doc["typical_count"] <= 1
    assert 2 <= doc["votes"] <= doc["ensemble_size"] == 3
    assert doc["confidence"] == pytest.approx(doc["votes"] / 3)
    assert doc["kl"] != pytest.approx(doc["typical_kl"])
    assert doc["example"].startswith("kernel: eth1: link down")
    mapping = es.indices.get_mapping(index=output)[output]["mappings"]
    assert mapping["dynamic"] == "strict"
    assert set(doc) <= set(mapping["properties"])


def test_new_event_reported_before_retraining(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    config = make_config(index_name, extra=MODEL + f"output:\n  index: {output}\n")
    ingest(es, config)
    wake = corpus.anomalies[2]
    train(config, last_day=corpus.anomalies[0].day)  # before the disk alarm's first message
    summary = detect(es, config, wake.day, wake.day)
    new = [doc["_source"] for doc in summary.documents if doc["_source"]["reason"] == "new_event"]
    assert [(doc["host"], kind_of(doc["template"])) for doc in new] == [(wake.host, "disk")]
    assert new[0]["count"] == 40
    train(config)
    after = detect(es, config, wake.day, wake.day)
    assert all(doc["_source"]["reason"] != "new_event" for doc in after.documents)


def test_run_once_trains_and_scores_last_day(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    config = make_config(index_name, extra=MODEL + f"output:\n  index: {output}\n")
    burst = corpus.anomalies[0]
    now = datetime.fromisoformat(f"{burst.day}T00:00:00+00:00") + timedelta(days=1, hours=6)
    summary = run_once(es, config, now=now)
    assert summary.day == burst.day
    assert summary.ingest.documents == len(corpus.documents)
    assert summary.trained is not None
    assert summary.detect is not None
    found = {(d["_source"]["host"], kind_of(d["_source"]["template"])) for d in summary.detect.documents}
    assert (burst.host, "link") in found

    again = run_once(es, config, now=now)
    assert again.trained is None  # the model is younger than model.retrain_days
    assert again.ingest.documents == 0


def test_cli_detect_twice_writes_same_documents(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    make_config(index_name, extra=MODEL + f"output:\n  index: {output}\n")
    path = make_config.last_path
    wake = corpus.anomalies[2]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "loglatent", "--config", str(path), *args],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    cli("ingest")
    cli("train")
    first = cli("detect", "--day", wake.day)
    ids_first = set(anomaly_documents(es, output))
    second = cli("detect", "--day", wake.day)
    ids_second = set(anomaly_documents(es, output))

    assert ids_first == ids_second
    assert len(ids_first) >= 1
    for output_text in (first.stderr, second.stderr):
        assert re.search(rf"Detect wrote {len(ids_first)} anomaly documents", output_text)
    assert "deleted 0 stale ones" in second.stdout
    assert wake.host in second.stdout


def test_pca_method_writes_its_own_documents(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    detection = "detection:\n  methods: [cvae, pca]\n"
    config = trained_config(es, make_config, index_name, output, detection)
    first = detect(es, config, corpus.first_day, corpus.last_day)
    stored = anomaly_documents(es, output)
    pca = [doc for doc in stored.values() if doc["method"] == "pca"]
    cvae = [doc for doc in stored.values() if doc["method"] == "cvae"]
    assert pca and cvae
    for doc in pca:
        assert doc["ensemble_size"] == 1
        assert doc["kl"] is None
        assert doc["score"] > 0
    assert all(doc["kl"] == doc["score"] for doc in cvae)
    assert first.write.written == len(stored)

    again = detect(es, config, corpus.first_day, corpus.last_day)
    assert set(anomaly_documents(es, output)) == set(stored)
    assert again.write.deleted == 0


def test_burst_method_flags_burst_day(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    detection = "detection:\n  methods: [burst]\n"
    config = trained_config(es, make_config, index_name, output, detection)
    summary = detect(es, config, corpus.first_day, corpus.last_day)
    found = {(d["_source"]["host"], kind_of(d["_source"]["template"]), d["_source"]["day"]) for d in summary.documents}
    burst = corpus.anomalies[0]
    assert (burst.host, burst.kind, burst.day) in found
    assert all(d["_source"]["method"] == "burst" for d in summary.documents)
    assert all(d["_source"]["count"] > 0 for d in summary.documents)
    assert summary.write.written == len(summary.documents)


def test_scores_cover_every_event_day(es: Elasticsearch, index_name: str, make_config, corpus, output: str) -> None:  # type: ignore[no-untyped-def]
    config = trained_config(es, make_config, index_name, output)
    scores_index = config.output.scores
    assert scores_index == f"{output}-scores"
    try:
        summary = detect(es, config, corpus.last_day, corpus.last_day)
        es.indices.refresh(index=scores_index)
        hits = es.search(index=scores_index, size=1000, query={"term": {"day": corpus.last_day}})["hits"]["hits"]
        with open_store(config) as store:
            events = store.events()
        assert len(hits) == len(events)
        flagged = {hit["_source"]["event"] for hit in hits if hit["_source"]["anomalous"]}
        behaviour = {doc["_source"]["event"] for doc in summary.documents if doc["_source"]["reason"] == "behaviour"}
        assert flagged == behaviour
        assert all(hit["_source"]["kl"] == hit["_source"]["score"] for hit in hits)
        assert {hit["_source"]["model_version"] for hit in hits} == {summary.model_version}
    finally:
        es.indices.delete(index=scores_index, ignore_unavailable=True)
