"""The scheduled worker: the jobs of ``loglatent run``, guarded by the lease and recorded in the state index.

Each job run first takes or renews the lease, so only one worker per configuration runs jobs.
A worker without the lease logs who holds it and waits for the next trigger. Every run is
recorded in the state index with its outcome, and detect advances the ``last_detected_day``
checkpoint one day at a time, so a restart continues with the first day not yet detected.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from elasticsearch import Elasticsearch

from loglatent.config import Config
from loglatent.errors import LoglatentError
from loglatent.lease import Lease
from loglatent.state import StateStore, days_to_detect

log = logging.getLogger(__name__)

LAST_DETECTED = "last_detected_day"
ACTIVE_MODEL = "active_model"
# Jobs the worker schedules. The digest job joins them once the email digest exists.
SCHEDULED_JOBS = ("ingest", "detect", "train")


class Worker:
    """Runs the jobs of one configuration, at most one at a time, while it holds the lease."""

    def __init__(self, client: Elasticsearch, config: Config, holder: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.config, self.clock = client, config, clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.state = StateStore(client, config.schedule.state_index)
        self.lease = Lease(client, config.schedule.state_index, "worker", self.holder,
                           config.schedule.lease_seconds, clock)
        self._busy = threading.Lock()

    def run_job(self, job: str, now: datetime | None = None) -> str:
        """Run ``job`` once if this worker holds the lease, record it, and return its outcome."""
        if not self.lease.acquire():
            holder = self.lease.read()
            log.info("Not running %s: worker %s holds the lease until %s", job, holder.holder if holder else "?",
                     _iso(holder.expires_at) if holder else "?")
            return "waiting"
        if not self._busy.acquire(blocking=False):
            log.warning("Not running %s: another job of this worker is still running", job)
            return "busy"
        started = self.clock()
        try:
            details = _JOBS[job](self, now or datetime.now(timezone.utc))
            outcome = "ok"
        except LoglatentError as exc:
            details, outcome = {"error": str(exc)}, "failed"
            log.error("Job %s failed: %s", job, exc)
        finally:
            self._busy.release()
        finished = self.clock()
        self.state.record_run(job, _iso(started), _iso(finished), outcome, details, holder=self.holder)
        log.info("Job %s %s in %.1f s: %s", job, outcome, finished - started, details)
        return outcome

    def stop(self) -> None:
        """Give up the lease so that another worker can take over at once."""
        self.lease.release()

    def serve(self) -> None:
        """Run the jobs on their schedule until SIGTERM or SIGINT, then release the lease.

        On a signal, the running job finishes before the worker exits; no new job starts.
        """
        from apscheduler.schedulers.background import BackgroundScheduler

        from loglatent.schedule import triggers

        stop = threading.Event()

        def request_stop(signal_number: int, _frame: Any) -> None:
            log.info("Received %s; finishing the running job and stopping", signal.Signals(signal_number).name)
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

        schedule = self.config.schedule
        scheduler = BackgroundScheduler(timezone=schedule.zone)
        for job, trigger in triggers(schedule).items():
            if job not in SCHEDULED_JOBS:
                continue
            scheduler.add_job(self.run_job, trigger, args=[job], id=job, max_instances=1, coalesce=True,
                              misfire_grace_time=getattr(schedule, job).misfire_grace_seconds)
        scheduler.add_job(self.lease.renew, "interval", seconds=max(1, schedule.lease_seconds // 3), id="lease")
        scheduler.start()
        log.info("Worker %s started; jobs: %s", self.holder,
                 ", ".join(f"{job} '{getattr(schedule, job).cron}'" for job in SCHEDULED_JOBS))
        try:
            # A timed wait lets the main thread run the signal handler promptly.
            while not stop.wait(timeout=1.0):
                pass
        finally:
            scheduler.shutdown(wait=True)
            self.stop()
            log.info("Worker %s stopped", self.holder)


def _ingest(worker: Worker, now: datetime) -> dict[str, Any]:
    from loglatent.ingest import ingest

    summary = ingest(worker.client, worker.config)
    return {"documents": summary.documents}


def _train(worker: Worker, now: datetime) -> dict[str, Any]:
    from loglatent.jobs import last_complete_day, train

    summary = train(worker.config, last_day=last_complete_day(worker.config, now))
    worker.state.set_checkpoint(ACTIVE_MODEL, summary.version)
    return {"version": summary.version, "data_points": summary.data_points}


def _detect(worker: Worker, now: datetime) -> dict[str, Any]:
    from loglatent.jobs import active_version, detect, last_complete_day

    last = last_complete_day(worker.config, now)
    days = days_to_detect(worker.state.checkpoint(LAST_DETECTED), last, worker.config.detection.backfill_days)
    if days and active_version(worker.config) is None:
        _train(worker, now)
    anomalies = 0
    for day in days:
        summary = detect(worker.client, worker.config, day, day)
        anomalies += summary.write.written
        worker.state.set_checkpoint(LAST_DETECTED, day)
    return {"days": days, "anomalies": anomalies}


_JOBS: dict[str, Callable[[Worker, datetime], dict[str, Any]]] = {
    "ingest": _ingest,
    "detect": _detect,
    "train": _train,
}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()
