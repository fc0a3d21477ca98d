"""The scheduled worker's jobs against the real node: the lease between two workers, and catch-up after downtime."""

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import pytest
from elasticsearch import Elasticsearch

from helpers import Clock, index_documents
from loglatent.synthetic import generate
from loglatent.worker import LAST_DETECTED, Worker

MODEL = "model:\n  ensemble_size: 3\n  epochs: 15\n  min_steps: 60\n"


@pytest.fixture
def state_index(es: Elasticsearch) -> Iterator[str]:
    name = f"test-state-{uuid.uuid4().hex[:10]}"
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def test_two_workers_one_runs_jobs(es: Elasticsearch, index_name: str, make_config, state_index: str) -> None:  # type: ignore[no-untyped-def]
    corpus = generate(seed=3, days=10, hosts=1)
    index_documents(es, index_name, corpus.documents)
    config = make_config(index_name, extra=f"schedule:\n  state_index: {state_index}\n  lease_seconds: 60\n")
    clock = Clock()
    first = Worker(es, config, holder="first", clock=clock)
    second = Worker(es, config, holder="second", clock=clock)

    assert first.run_job("ingest") == "ok"
    assert second.run_job("ingest") == "waiting"
    run = first.state.last_run("ingest")
    assert run is not None
    assert run["holder"] == "first"
    assert run["details"]["documents"] == len(corpus.documents)

    first.stop()
    assert second.run_job("ingest") == "ok"
    run = second.state.last_run("ingest")
    assert run is not None
    assert run["holder"] == "second"
    assert run["details"]["documents"] == 0  # ingest resumes from the first worker's checkpoint
    assert first.run_job("ingest") == "waiting"


def test_lease_expires_when_worker_dies(es: Elasticsearch, index_name: str, make_config, state_index: str) -> None:  # type: ignore[no-untyped-def]
    index_documents(es, index_name, generate(seed=4, days=3, hosts=1).documents)
    config = make_config(index_name, extra=f"schedule:\n  state_index: {state_index}\n  lease_seconds: 30\n")
    clock = Clock()
    dead = Worker(es, config, holder="dead", clock=clock)
    assert dead.run_job("ingest") == "ok"
    survivor = Worker(es, config, holder="survivor", clock=clock)
    clock.now += 29
    assert survivor.run_job("ingest") == "waiting"
    clock.now += 2
    assert survivor.run_job("ingest") == "ok"


def test_downtime_detects_missed_days_in_order(es: Elasticsearch, index_name: str, make_config, state_index: str) -> None:  # type: ignore[no-untyped-def]
    corpus = generate(seed=5, days=40, hosts=2)
    index_documents(es, index_name, corpus.documents)
    output = f"{index_name}-anomalies"
    config = make_config(index_name, extra=MODEL + f"output:\n  index: {output}\n"
                         f"schedule:\n  state_index: {state_index}\ndetection:\n  backfill_days: 3\n")
    try:
        worker = Worker(es, config, holder="worker", clock=Clock())
        assert worker.run_job("ingest") == "ok"
        first_morning = datetime.combine(date.fromisoformat(corpus.last_day), datetime.min.time(),
                                         tzinfo=timezone.utc) - timedelta(days=5) + timedelta(hours=1)

        assert worker.run_job("detect", now=first_morning) == "ok"
        first_run = worker.state.last_run("detect")
        assert first_run is not None
        last_day = (first_morning - timedelta(days=1)).date()
        assert first_run["details"]["days"] == [(last_day - timedelta(days=n)).isoformat() for n in (2, 1, 0)]

        # Three days down, then one run: the three missed days, oldest first, each once.
        assert worker.run_job("detect", now=first_morning + timedelta(days=3)) == "ok"
        second_run = worker.state.last_run("detect")
        assert second_run is not None
        assert second_run["details"]["days"] == [(last_day + timedelta(days=n)).isoformat() for n in (1, 2, 3)]
        assert worker.state.checkpoint(LAST_DETECTED) == (last_day + timedelta(days=3)).isoformat()

        assert worker.run_job("detect", now=first_morning + timedelta(days=3, hours=2)) == "ok"
        third_run = worker.state.last_run("detect")
        assert third_run is not None
        assert third_run["details"]["days"] == []
    finally:
        es.indices.delete(index=output, ignore_unavailable=True)


def test_run_stops_on_sigterm(es: Elasticsearch, index_name: str, make_config, state_index: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys
    import time

    from loglatent.lease import Lease

    index_documents(es, index_name, generate(seed=6, days=2, hosts=1).documents)
    make_config(index_name, extra=f"schedule:\n  state_index: {state_index}\n")
    config_file = make_config.last_path
    process = subprocess.Popen([sys.executable, "-m", "loglatent", "--config", str(config_file), "run"],
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    started = time.monotonic()
    lines = []
    while time.monotonic() - started < 60:
        line = process.stderr.readline()
        lines.append(line)
        if "started; jobs:" in line:
            break
    assert any("started; jobs:" in line for line in lines), lines
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    rest = process.stderr.read()
    assert "Received SIGTERM" in rest
    assert "stopped" in rest
    assert Lease(es, state_index, "worker", "probe", 60).read() is None


def test_status_shows_runs_and_lease(es: Elasticsearch, index_name: str, make_config, state_index: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from loglatent.cli import main

    index_documents(es, index_name, generate(seed=7, days=2, hosts=1).documents)
    config = make_config(index_name, extra=f"schedule:\n  state_index: {state_index}\n")
    worker = Worker(es, config, holder="status-test")
    assert worker.run_job("ingest") == "ok"
    main(["--config", str(make_config.last_path), "status"])
    printed = capsys.readouterr().out
    assert f"State index: {state_index}" in printed
    assert "ingest  ok" in printed
    assert "by status-test" in printed
    assert "detect  never run" in printed
    assert "last_detected_day: none" in printed
    assert "lease: held by status-test" in printed
    assert "model on disk: none" in printed
