"""The scheduled worker: the jobs of ``loglatent run``, guarded by the lease and recorded in the state index.

Each job run first takes or renews the lease, so only one worker per configuration runs jobs.
A worker without the lease logs once who holds it, and tries again every third of
``schedule.lease_seconds``. When a worker gains the lease, at start or by taking over from one
that stopped, it catches up: it ingests, trains if no model exists, detects every day not yet
detected, and sends a digest whose time passed while no worker ran. Every run is recorded in the
state index with its outcome, and detect advances the ``last_detected_day`` checkpoint one day at
a time, so a restart continues with the first day not yet detected.
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
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from elasticsearch import ApiError, Elasticsearch, TransportError

from loglatent.config import Config
from loglatent.digest import LAST_DIGEST
from loglatent.errors import LoglatentError
from loglatent.lease import Lease
from loglatent.schedule import JOBS, fire_times, triggers
from loglatent.state import StateStore, days_to_detect, digest_plan

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger(__name__)

LAST_DETECTED = "last_detected_day"
ACTIVE_MODEL = "active_model"
INGEST_POSITION = "ingest_position"


def scheduled_jobs(config: Config) -> tuple[str, ...]:
    """Return the jobs the worker schedules: all of them, less the digest when it has no recipients."""
    return tuple(job for job in JOBS if job != "digest" or config.digest.to)


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
        self._holding = False
        self._reported_waiting = False
        self._catching_up = threading.Lock()
        self._lease_error_reported = False
        self.scheduler: BaseScheduler | None = None
        self.stopping = threading.Event()

    def run_job(self, job: str, now: datetime | None = None, trigger: str = "manual") -> str:
        """Run ``job`` once if this worker holds the lease, record it, and return its outcome.

        The outcome is ok, failed, waiting (another worker holds the lease) or stopping (the
        worker received SIGTERM or SIGINT). A job that fires while another job of this worker runs
        waits for it to finish: detect at 00:30 must not be dropped because ingest also runs then.
        """
        if self.stopping.is_set():
            return "stopping"
        with self._busy:
            if self.stopping.is_set():
                return "stopping"
            if not self._hold_lease():
                return "waiting"
            return self._run_holding_lease(job, now, trigger)

    def _run_holding_lease(self, job: str, now: datetime | None, trigger: str) -> str:
        started = self.clock()
        try:
            details = _JOBS[job](self, now or datetime.now(timezone.utc))
            outcome = "ok"
        except LoglatentError as exc:
            details, outcome = {"error": str(exc)}, "failed"
            log.error("Job %s failed: %s", job, exc)
        except Exception as exc:  # noqa: BLE001 - the worker records the failure and lives on
            details, outcome = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
            log.exception("Job %s failed unexpectedly; the next run tries again", job)
        finished = self.clock()
        self.state.record_run(job, _iso(started), _iso(finished), outcome, details, holder=self.holder,
                              trigger=trigger)
        log.info("Job %s %s in %.1f s: %s", job, outcome, finished - started, details)
        if trigger == "schedule":
            self._warn_on_overrun(job, started, finished)
        return outcome

    def catch_up(self, now: datetime | None = None) -> dict[str, str]:
        """Run what is due after a start or a takeover: ingest, detect, and a missed digest.

        Detect trains first when no model exists, and covers every day not yet detected. The
        digest runs when one of its scheduled times passed after its last recorded run.
        """
        now = now or datetime.now(timezone.utc)
        outcomes: dict[str, str] = {}
        if not self._catching_up.acquire(blocking=False):
            return outcomes
        try:
            for job in ("ingest", "detect", "digest"):
                if self.stopping.is_set() or job not in scheduled_jobs(self.config):
                    continue
                if job == "digest" and not self._missed(job, now):
                    continue
                outcomes[job] = self.run_job(job, now, trigger="catch-up")
                if outcomes[job] == "waiting":
                    break
        finally:
            self._catching_up.release()
        return outcomes

    def keep_lease(self) -> None:
        """Renew the lease, or take it when it is free, and catch up after taking it."""
        try:
            renewed = self.lease.renew()
        except (ApiError, TransportError) as exc:
            if not self._lease_error_reported:
                log.warning("Cannot renew the lease in %s: %s; trying again every %d s",
                            self.config.schedule.state_index, exc, max(1, self.config.schedule.lease_seconds // 3))
                self._lease_error_reported = True
            return
        if self._lease_error_reported:
            log.info("Elasticsearch is reachable again; the lease is checked as before")
            self._lease_error_reported = False
        if renewed:
            # A renewal proves the lease is ours, even if the last acquire reported otherwise.
            gained = not self._holding
            self._holding = True
        else:
            had_lease = self._holding
            if had_lease:
                log.warning("Worker %s lost the lease (it was not renewed within schedule.lease_seconds, %d s); "
                            "a job that is still running may overlap with another worker's",
                            self.holder, self.config.schedule.lease_seconds)
            gained = self._hold_lease() and not had_lease
        if gained:
            log.info("Worker %s now holds the lease; catching up", self.holder)
            self._start_catch_up()

    def _start_catch_up(self) -> None:
        """Catch up as a job of its own, so that this thread goes on renewing the lease meanwhile."""
        if self.scheduler is None:
            self.catch_up()
            return
        self.scheduler.add_job(self.catch_up, id="catch-up", max_instances=1, replace_existing=True,
                                misfire_grace_time=None)

    def _hold_lease(self) -> bool:
        """Take or renew the lease; log once when another worker holds it."""
        held = self.lease.acquire()
        if not held and (self._holding or not self._reported_waiting):
            holder = self.lease.read()
            log.info("Waiting: worker %s holds the lease until %s; this worker takes over when it stops or its "
                     "lease expires", holder.holder if holder else "?", _iso(holder.expires_at) if holder else "?")
            self._reported_waiting = True
        if held:
            self._reported_waiting = False
        self._holding = held
        return held

    def _missed(self, job: str, now: datetime) -> bool:
        """Return whether a scheduled time of ``job`` in the last week passed after its last recorded run."""
        times = fire_times(triggers(self.config.schedule)[job], now - timedelta(days=7), now)
        if not times:
            return False
        last = self.state.last_run(job)
        return last is None or datetime.fromisoformat(last["started"]) < times[-1]

    def _warn_on_overrun(self, job: str, started: float, finished: float) -> None:
        start = datetime.fromtimestamp(started, timezone.utc)
        following = triggers(self.config.schedule)[job].get_next_fire_time(None, start + timedelta(seconds=1))
        if following is not None and following.timestamp() < finished:
            log.warning("Job %s ran for %.0f s, past its next start at %s, which was skipped because runs of one job "
                        "never overlap; make schedule.%s.cron less frequent or the job faster",
                        job, finished - started, following.isoformat(), job)

    def stop(self) -> None:
        """Give up the lease so that another worker can take over at once."""
        self.lease.release()

    def serve(self) -> None:
        """Catch up, then run the jobs on their schedule until SIGTERM or SIGINT, then release the lease.

        On a signal, the running job finishes before the worker exits; no new job starts.
        """
        from apscheduler.schedulers.background import BackgroundScheduler

        stop = self.stopping

        def request_stop(signal_number: int, _frame: Any) -> None:
            log.info("Received %s; finishing the running job and stopping", signal.Signals(signal_number).name)
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

        # APScheduler logs each job it adds and runs at INFO, which the worker's summary lines already cover.
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("apscheduler").setLevel(logging.WARNING)
        schedule = self.config.schedule
        jobs = scheduled_jobs(self.config)
        scheduler = BackgroundScheduler(timezone=schedule.zone)
        self.scheduler = scheduler
        # The lease is renewed from the start, so that it outlives a long catch-up.
        scheduler.add_job(self.keep_lease, "interval", seconds=max(1, schedule.lease_seconds // 3), id="lease",
                          max_instances=1, coalesce=True)
        scheduler.start()
        log.info("Worker %s starting; jobs: %s%s", self.holder,
                 ", ".join(f"{job} '{getattr(schedule, job).cron}'" for job in jobs),
                 "" if "digest" in jobs else "; no digest (digest.to is empty)")
        try:
            if self._hold_lease():
                self.catch_up()
            if stop.is_set():
                return
            for job, trigger in triggers(schedule).items():
                if job in jobs:
                    scheduler.add_job(self.run_job, trigger, args=[job], kwargs={"trigger": "schedule"}, id=job,
                                      max_instances=1, coalesce=True,
                                      misfire_grace_time=getattr(schedule, job).misfire_grace_seconds)
            log.info("Worker %s started; %s", self.holder, "waiting for the next scheduled job" if self._holding
                     else "waiting for the lease")
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
    if summary.checkpoint is not None:
        worker.state.set_checkpoint(INGEST_POSITION, summary.checkpoint)
    return {"documents": summary.documents, "skipped": summary.skipped_total}


def _train(worker: Worker, now: datetime) -> dict[str, Any]:
    from loglatent.jobs import last_complete_day, train

    summary = train(worker.config, last_day=last_complete_day(worker.config, now))
    worker.state.set_checkpoint(ACTIVE_MODEL, summary.version)
    return {"version": summary.version, "data_points": summary.data_points}


def _detect(worker: Worker, now: datetime) -> dict[str, Any]:
    """Detect each day not yet detected, oldest first, then train early if many events are new."""
    from loglatent.jobs import active_version, detect, early_retrain_reason, last_complete_day

    last = last_complete_day(worker.config, now)
    days = days_to_detect(worker.state.checkpoint(LAST_DETECTED), last, worker.config.detection.backfill_days)
    details: dict[str, Any] = {}
    if days and active_version(worker.config) is None:
        details["trained"] = _train(worker, now)["version"]
    anomalies = 0
    done: list[str] = []
    for day in days:
        if worker.stopping.is_set():
            log.info("Stopping after %d of %d days; the next start detects from %s", len(done), len(days), day)
            break
        summary = detect(worker.client, worker.config, day, day, warn_after_data=not done)
        anomalies += summary.write.written
        worker.state.set_checkpoint(LAST_DETECTED, day)
        done.append(day)
    details.update(days=done, anomalies=anomalies)
    # The model that has not seen the new events reports them on their first day. The early
    # training comes after that, so that report is not lost.
    reason = early_retrain_reason(worker.config, last) if done and not worker.stopping.is_set() else None
    if reason is not None:
        log.info("Training a new model before its schedule: %s", reason)
        details["retrained"] = _train(worker, now)["version"]
    return details


def _digest(worker: Worker, now: datetime) -> dict[str, Any]:
    """Send one digest of the detected days not yet sent, marked late when it covers missed days."""
    from loglatent.digest import send_digest
    from loglatent.jobs import last_complete_day

    last_detected = worker.state.checkpoint(LAST_DETECTED)
    if last_detected is None:
        log.info("No digest yet: no day has been detected")
        return {"days": [], "status": "nothing_detected"}
    plan = digest_plan(worker.state.checkpoint(LAST_DIGEST), last_detected, last_complete_day(worker.config, now),
                       max_days=max(7, worker.config.detection.backfill_days))
    if plan is None:
        return {"days": [], "status": "up_to_date"}
    outcome = send_digest(worker.client, worker.config, worker.state, plan, worker.holder)
    return {"days": outcome.days, "late": outcome.late, "anomalies": outcome.anomalies, "status": outcome.status,
            "message_id": outcome.message_id}


_JOBS: dict[str, Callable[[Worker, datetime], dict[str, Any]]] = {
    "ingest": _ingest,
    "detect": _detect,
    "train": _train,
    "digest": _digest,
}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()
