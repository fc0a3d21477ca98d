"""The scheduled worker's jobs against the real node: the lease between two workers, and catch-up after downtime."""

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from helpers import Clock, index_documents
from loglatent.digest import LAST_DIGEST
from loglatent.ingest import ingest, open_store
from loglatent.lease import Lease
from loglatent.state import StateStore
from loglatent.synthetic import generate
from loglatent.worker import LAST_DETECTED, Worker

MODEL = "model:\n  ensemble_size: 3\n  epochs: 15\n  min_steps: 60\n  compile: false\n"
# A schedule that fires nothing during a test but the hourly digest, and a model that trains in seconds.
QUIET = "schedule:\n  state_index: {state}\n  lease_seconds: 6\n  ingest:\n    cron: '0 0 1 1 *'\n" \
        "  detect:\n    cron: '0 0 1 1 *'\n  train:\n    cron: '0 0 1 1 *'\n  digest:\n    cron: '0 * * * *'\n"
TINY = "model:\n  ensemble_size: 1\n  epochs: 1\n  min_steps: 30\n  compile: false\ndetection:\n  backfill_days: 2\n"


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


def mail(server) -> str:  # type: ignore[no-untyped-def]
    return (f"digest:\n  to: [noc@example.net]\n  smtp:\n    host: 127.0.0.1\n    port: {server.port}\n"
            "    retry_seconds: 0\n")


def test_downtime_detects_missed_days_in_order(es: Elasticsearch, index_name: str, make_config, state_index: str,  # type: ignore[no-untyped-def]
                                               mail_server) -> None:
    corpus = generate(seed=5, days=40, hosts=2)
    index_documents(es, index_name, corpus.documents)
    output = f"{index_name}-anomalies"
    config = make_config(index_name, extra=MODEL + f"output:\n  index: {output}\n"
                         f"schedule:\n  state_index: {state_index}\ndetection:\n  backfill_days: 3\n"
                         + mail(mail_server))
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
        assert worker.run_job("digest", now=first_morning) == "ok"
        assert len(mail_server.messages) == 1
        on_time = mail_server.parsed()[0]
        assert on_time["X-Loglatent-Days"] == last_day.isoformat()
        assert "(late)" not in str(on_time["Subject"])

        # Three days down, then one run: the three missed days, oldest first, each once.
        assert worker.run_job("detect", now=first_morning + timedelta(days=3)) == "ok"
        second_run = worker.state.last_run("detect")
        assert second_run is not None
        assert second_run["details"]["days"] == [(last_day + timedelta(days=n)).isoformat() for n in (1, 2, 3)]
        assert worker.state.checkpoint(LAST_DETECTED) == (last_day + timedelta(days=3)).isoformat()
        missed = [(last_day + timedelta(days=n)).isoformat() for n in (1, 2, 3)]

        # The digest missed on those days becomes one digest, marked late.
        assert worker.run_job("digest", now=first_morning + timedelta(days=3)) == "ok"
        assert worker.run_job("digest", now=first_morning + timedelta(days=3, hours=1)) == "ok"
        assert len(mail_server.messages) == 2
        late = mail_server.parsed()[1]
        assert late["X-Loglatent-Days"] == ",".join(missed)
        assert "(late)" in str(late["Subject"])
        assert f"{missed[0]} to {missed[-1]}" in str(late["Subject"])
        assert worker.state.checkpoint(LAST_DIGEST) == missed[-1]
        digest_runs = worker.state.runs("digest")
        assert [run["details"]["status"] for run in digest_runs] == ["sent", "sent", "up_to_date"]
        assert digest_runs[1]["details"]["late"] is True

        assert worker.run_job("detect", now=first_morning + timedelta(days=3, hours=2)) == "ok"
        third_run = worker.state.last_run("detect")
        assert third_run is not None
        assert third_run["details"]["days"] == []
    finally:
        es.indices.delete(index=f"{output},{output}-scores", ignore_unavailable=True)


def test_run_stops_on_sigterm(es: Elasticsearch, index_name: str, make_config, state_index: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    index_documents(es, index_name, generate(seed=6, days=2, hosts=1).documents)
    make_config(index_name, extra=QUIET.format(state=state_index) + TINY)
    config_file = make_config.last_path
    process = subprocess.Popen([sys.executable, "-m", "loglatent", "--config", str(config_file), "run"],
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    # A thread reads the worker's log, so that a missing line fails the test instead of hanging it.
    lines: queue.Queue[str] = queue.Queue()
    log_stream = process.stderr

    def read_log() -> None:
        for line in log_stream:
            lines.put(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("started; waiting for the next scheduled job" in line for line in seen):
            try:
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"timed out after 120 s waiting for the worker to start; its log:\n{''.join(seen)}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    rest = "".join(seen) + "".join(lines.queue)
    assert "Received SIGTERM" in rest
    assert "stopped" in rest
    assert Lease(es, state_index, "worker", "probe", 60).read() is None


def test_takeover_catch_up_keeps_renewing(es: Elasticsearch, index_name: str, make_config, state_index: str) -> None:  # type: ignore[no-untyped-def]
    from apscheduler.schedulers.background import BackgroundScheduler

    index_documents(es, index_name, generate(seed=9, days=10, hosts=1).documents)
    output = f"{index_name}-anomalies"
    config = make_config(index_name, extra=QUIET.format(state=state_index) + TINY + f"output:\n  index: {output}\n")
    worker = Worker(es, config, holder="taker")
    worker.scheduler = BackgroundScheduler()
    worker.scheduler.start()
    try:
        # The lease is free: keep_lease takes it and leaves the catch-up (ingest, train, detect) to a job of its own.
        worker.keep_lease()
        assert worker.state.last_run("detect") is None

        expiries = []
        deadline = time.monotonic() + 180
        while worker.state.last_run("detect") is None:
            assert time.monotonic() < deadline, "timed out after 180 s waiting for the catch-up's detect"
            worker.keep_lease()
            lease = worker.lease.read()
            assert lease is not None
            expiries.append(lease.expires_at)
            time.sleep(0.5)
        assert len(expiries) >= 2
        assert expiries == sorted(set(expiries))
    finally:
        worker.scheduler.shutdown(wait=True)
        es.indices.delete(index=f"{output},{output}-scores", ignore_unavailable=True)
    assert worker.state.last_run("detect")["outcome"] == "ok"  # type: ignore[index]


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


# Real worker processes


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_worker(config_file: Path, log_file: Path, *arguments: str) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "loglatent", "--config", str(config_file), *arguments],
                                stdout=log, stderr=subprocess.STDOUT)


def holder_pid(holder: str) -> int:
    return int(holder.split(":")[-2])



def test_two_worker_processes_run_each_job_once(es: Elasticsearch, index_name: str, make_config, state_index: str,  # type: ignore[no-untyped-def]
                                                mail_server, tmp_path: Path) -> None:
    today = datetime.now(timezone.utc).date()
    corpus = generate(seed=8, days=20, hosts=1, start=today - timedelta(days=20))
    index_documents(es, index_name, corpus.documents)
    output = f"{index_name}-anomalies"
    make_config(index_name, extra=QUIET.format(state=state_index) + TINY + mail(mail_server)
                + f"output:\n  index: {output}\n")
    config_file = make_config.last_path
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(config_file, log, "run") for log in logs]
    state = StateStore(es, state_index)
    try:
        wait_for(lambda: state.last_run("digest") is not None, 180, "the first worker's catch-up")
        lease = Lease(es, state_index, "worker", "probe", 6).read()
        assert lease is not None
        first = next(w for w in workers if w.pid == holder_pid(lease.holder))
        second = next(w for w in workers if w is not first)
        first_holder = lease.holder

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        wait_for(lambda: (state.last_run("detect") or {}).get("holder", first_holder) != first_holder, 60,
                 "the second worker to take over and catch up")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        es.indices.delete(index=f"{output},{output}-scores", ignore_unavailable=True)

    runs = state.runs()
    by_first = [run for run in runs if run["holder"] == first_holder]
    by_second = [run for run in runs if run["holder"] != first_holder]
    assert [run["job"] for run in by_first] == ["ingest", "detect", "digest"]
    assert all(run["outcome"] == "ok" for run in runs), runs
    assert len({run["holder"] for run in by_second}) == 1
    # The second worker ran nothing until the first had stopped, then caught up with nothing left to do.
    assert by_second and min(run["started"] for run in by_second) >= max(run["finished"] for run in by_first), runs
    assert [run["job"] for run in by_second][:2] == ["ingest", "detect"]
    assert by_second[0]["details"]["documents"] == 0
    assert by_second[1]["details"]["days"] == []
    detected_days = [day for run in runs if run["job"] == "detect" for day in run["details"]["days"]]
    assert len(detected_days) == len(set(detected_days)) == 2
    assert len(mail_server.messages) == 1
    assert state.checkpoint(LAST_DIGEST) == detected_days[-1]
    # The worker without the lease logged once why it waited.
    second_log = logs[workers.index(second)].read_text()
    assert second_log.count(f"Waiting: worker {first_holder} holds the lease") == 1


def test_worker_killed_during_ingest_resumes_exactly(es: Elasticsearch, index_name: str, make_config,  # type: ignore[no-untyped-def]
                                                    state_index: str, tmp_path: Path) -> None:
    corpus = generate(seed=9, days=40, hosts=6)
    index_documents(es, index_name, corpus.documents)
    extra = QUIET.format(state=state_index) + TINY
    killed = make_config(index_name, data_dir="killed", extra=extra, page_size=500, commit_every=2000)
    config_file = make_config.last_path
    log_file = tmp_path / "worker.log"

    worker = start_worker(config_file, log_file, "run")
    store_file = killed.data_dir / "histograms.sqlite"

    def committed() -> int:
        if not store_file.exists():
            return 0
        with sqlite3.connect(f"file:{store_file}?mode=ro", uri=True) as db:
            try:
                row = db.execute("SELECT documents FROM checkpoint WHERE id = 1").fetchone()
            except sqlite3.OperationalError:
                return 0
        return 0 if row is None else int(row[0])

    try:
        wait_for(lambda: committed() > 0, 120, "the first ingest commit")
        assert worker.poll() is None, log_file.read_text()
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        at_kill = committed()
        assert 0 < at_kill < len(corpus.documents), "the kill came after the ingest had finished"

        # The restarted worker waits for the dead one's lease to expire, then ingests the rest.
        restarted = start_worker(config_file, log_file, "run")
        state = StateStore(es, state_index)
        wait_for(lambda: (state.last_run("ingest") or {}).get("outcome") == "ok", 120, "the restarted ingest")
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=120) == 0
    finally:
        for process in (worker, locals().get("restarted")):
            if process is not None and process.poll() is None:
                process.kill()

    run = state.last_run("ingest")
    assert run is not None
    assert run["details"]["documents"] == len(corpus.documents) - at_kill
    whole = make_config(index_name, data_dir="whole", page_size=500, commit_every=2000)
    ingest(es, whole)
    with open_store(whole) as a, open_store(killed) as b:
        assert [(e.host, e.template_id, e.template) for e in a.events()] == [
            (e.host, e.template_id, e.template) for e in b.events()]
        assert [(eid, day, counts.tolist()) for eid, day, counts in a.histograms()] == [
            (eid, day, counts.tolist()) for eid, day, counts in b.histograms()]
        assert b.total_count() == len(corpus.documents)


def test_new_events_retrain_and_rollback(es: Elasticsearch, index_name: str, make_config,  # type: ignore[no-untyped-def]
                                                          state_index: str, capsys) -> None:
    from loglatent.cli import main
    from loglatent.jobs import active_version, model_versions

    start = date(2024, 3, 1)
    known = generate(seed=10, days=30, hosts=1, start=start)
    index_documents(es, index_name, [d for d in known.documents if d["@timestamp"] < "2024-03-28"])
    output = f"{index_name}-anomalies"
    config = make_config(index_name, extra=MODEL + f"output:\n  index: {output}\n"
                         f"schedule:\n  state_index: {state_index}\ndetection:\n  backfill_days: 2\n")
    worker = Worker(es, config, holder="worker")
    morning = datetime(2024, 3, 28, 1, tzinfo=timezone.utc)
    try:
        assert worker.run_job("ingest") == "ok"
        assert worker.run_job("detect", now=morning) == "ok"
        first_version = active_version(config)
        assert first_version is not None
        assert "retrained" not in worker.state.runs("detect")[-1]["details"]

        # Two more hosts start logging on 2024-03-28: two thirds of the events are new to the model.
        newcomers = generate(seed=11, days=2, hosts=3, start=date(2024, 3, 28))
        index_documents(es, index_name, [d for d in newcomers.documents if d["host"]["name"] != "edge01"],
                        id_prefix="new-")
        assert worker.run_job("ingest") == "ok"
        assert worker.run_job("detect", now=morning + timedelta(days=1)) == "ok"
        details = worker.state.runs("detect")[-1]["details"]
        assert details["days"] == ["2024-03-28"]
        second_version = details["retrained"]
        assert second_version != first_version
        assert active_version(config) == second_version
        # The new events were reported by the model that had not seen them, before the early training.
        es.indices.refresh(index=output)
        new_events = es.search(index=output, query={"term": {"reason": "new_event"}}, size=100)["hits"]["hits"]
        assert {hit["_source"]["host"] for hit in new_events} == {"edge02", "edge03"}
        assert {hit["_source"]["model_version"] for hit in new_events} == {first_version}

        main(["--config", str(make_config.last_path), "models", "list"])
        listing = capsys.readouterr().out
        assert f"* {second_version}" in listing
        assert f"  {first_version}" in listing
        main(["--config", str(make_config.last_path), "models", "activate", first_version])
        assert active_version(config) == first_version
        assert worker.state.checkpoint("active_model") == first_version
        assert set(model_versions(config)) == {first_version, second_version}
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", str(make_config.last_path), "models", "activate", "20990101T000000000000Z"])
        assert exit_info.value.code == 5
        assert "not found" in capsys.readouterr().err
    finally:
        es.indices.delete(index=f"{output},{output}-scores", ignore_unavailable=True)


def test_overrun_is_reported(es: Elasticsearch, index_name: str, make_config, state_index: str, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    index_documents(es, index_name, generate(seed=12, days=1, hosts=1).documents)
    config = make_config(index_name, extra=f"schedule:\n  state_index: {state_index}\n  ingest:\n    cron: '*/10 * * * *'\n")

    class SlowClock(Clock):
        """Each reading is 15 minutes after the one before: every job seems to take that long."""

        def __call__(self) -> float:
            self.now += 900
            return self.now

    worker = Worker(es, config, holder="slow", clock=SlowClock())
    with caplog.at_level(logging.WARNING, logger="loglatent.worker"):
        assert worker.run_job("ingest", trigger="schedule") == "ok"
    warnings = [r.getMessage() for r in caplog.records if "past its next start" in r.getMessage()]
    assert len(warnings) == 1
    assert "schedule.ingest.cron" in warnings[0]


def test_job_waits_for_running_job(es: Elasticsearch, index_name: str, make_config, state_index: str) -> None:  # type: ignore[no-untyped-def]
    import threading

    index_documents(es, index_name, generate(seed=13, days=1, hosts=1).documents)
    config = make_config(index_name, extra=f"schedule:\n  state_index: {state_index}\n")
    worker = Worker(es, config, holder="one")
    outcomes: list[str] = []
    with worker._busy:  # another job of this worker is running
        waiting = threading.Thread(target=lambda: outcomes.append(worker.run_job("ingest")))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive()
        assert outcomes == []
    waiting.join(timeout=60)
    assert outcomes == ["ok"]
