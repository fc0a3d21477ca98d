"""The worker's state in Elasticsearch, and the catch-up plan after a first start or downtime.

State lives in one index beside the anomalies, so a worker restarted on another machine with the
same configuration continues where the last one stopped. Its documents:

- ``checkpoint-NAME``: the last day detected, the last day in a digest, the active model;
- ``run-JOB``: the last run of each job, and one ``kind: run`` document per run for the history;
- ``detected-DAY``: a day that detect wrote verdicts for;
- ``digest-DAY``: the digest of each day, created before sending so that no day goes out twice;
- ``lease-worker``: the lease (``loglatent.lease``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from elasticsearch import ConflictError, Elasticsearch, NotFoundError, helpers

from loglatent.lease import ensure_state_index


class StateStore:
    """Checkpoints and the last run of each job, one document each, in ``index``."""

    def __init__(self, client: Elasticsearch, index: str) -> None:
        self.client, self.index = client, index
        ensure_state_index(client, index)

    def checkpoint(self, name: str) -> str | None:
        """Return the value stored for checkpoint ``name``, or None before the first one."""
        document = self._get(f"checkpoint-{name}")
        return None if document is None else str(document["value"])

    def set_checkpoint(self, name: str, value: str) -> None:
        self._put(f"checkpoint-{name}", {"kind": "checkpoint", "name": name, "value": value})

    def last_run(self, job: str) -> dict[str, Any] | None:
        """Return the last recorded run of ``job``: start, end, outcome and details."""
        return self._get(f"run-{job}")

    def record_run(self, job: str, started: str, finished: str, outcome: str, details: dict[str, Any],
                   holder: str = "", trigger: str = "") -> None:
        """Store a run as the job's last run and add it to the history."""
        document = {"job": job, "started": started, "finished": finished, "outcome": outcome,
                    "details": details, "holder": holder, "trigger": trigger}
        self.client.index(index=self.index, document={"kind": "run", **document})
        self._put(f"run-{job}", {"kind": "last-run", **document})

    def runs(self, job: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Return the recorded runs, of ``job`` or of every job, oldest first."""
        filters: list[dict[str, Any]] = [{"term": {"kind": "run"}}]
        if job is not None:
            filters.append({"term": {"job": job}})
        self.client.indices.refresh(index=self.index)
        found = self.client.search(index=self.index, query={"bool": {"filter": filters}},
                                   sort=[{"started": "asc"}], size=limit)
        return [dict(hit["_source"]) for hit in found["hits"]["hits"]]

    def mark_detected(self, days: list[str], model_version: str) -> None:
        """Record that ``days`` have verdicts in the anomaly index, so a digest may report them."""
        if not days:
            return
        actions = [{"_index": self.index, "_id": f"detected-{day}",
                    "_source": {"kind": "detected", "day": day, "model_version": model_version}} for day in days]
        helpers.bulk(self.client, actions, refresh="wait_for")

    def detected(self, day: str) -> bool:
        """Return whether a detect run has written verdicts for ``day``."""
        return self._get(f"detected-{day}") is not None

    def claim_digest_days(self, days: list[str], holder: str) -> list[str]:
        """Mark each of ``days`` as being sent, and return those no digest had claimed before."""
        claimed = []
        for day in days:
            try:
                self.client.create(index=self.index, id=f"digest-{day}", refresh="wait_for",
                                   document={"kind": "digest", "day": day, "status": "sending", "holder": holder})
                claimed.append(day)
            except ConflictError:
                continue
        return claimed

    def finish_digest_days(self, days: list[str], sent: bool, details: dict[str, Any]) -> None:
        """Record ``days`` as sent, or free them for a later digest when the send failed."""
        for day in days:
            if sent:
                self._put(f"digest-{day}", {"kind": "digest", "day": day, "status": "sent", **details})
            else:
                try:
                    self.client.delete(index=self.index, id=f"digest-{day}", refresh="wait_for")
                except NotFoundError:
                    pass

    def digest_record(self, day: str) -> dict[str, Any] | None:
        """Return the digest record of ``day``: its status, and when sent its message id."""
        return self._get(f"digest-{day}")

    def _get(self, document_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.get(index=self.index, id=document_id)["_source"])
        except NotFoundError:
            return None

    def _put(self, document_id: str, document: dict[str, Any]) -> None:
        # NOTE: the state mapping is not dynamic, so the values are stored and returned but not indexed.
        self.client.index(index=self.index, id=document_id, document=document, refresh="wait_for")


def days_to_detect(last_detected: str | None, last_complete: str, backfill_days: int) -> list[str]:
    """Return the days a detect run must cover, oldest first.

    On a first start (no day detected yet) these are the last ``backfill_days`` complete days.
    After downtime they are every day after ``last_detected`` up to ``last_complete``, each once.
    """
    if backfill_days < 1:
        raise ValueError(f"backfill_days must be at least 1, got {backfill_days}")
    end = date.fromisoformat(last_complete)
    if last_detected is None:
        start = end - timedelta(days=backfill_days - 1)
    else:
        start = date.fromisoformat(last_detected) + timedelta(days=1)
    return [(start + timedelta(days=offset)).isoformat() for offset in range((end - start).days + 1)]


@dataclass(frozen=True)
class DigestPlan:
    """The days one digest covers, and whether it is late (it covers days a missed digest should have sent)."""

    days: list[str]
    late: bool


def digest_plan(last_sent: str | None, last_ready: str, late_after: str, max_days: int = 7) -> DigestPlan | None:
    """Return the one digest to send now, or None when the digest for ``last_ready`` went out.

    ``last_ready`` is the last day detected. The digest covers the days after ``last_sent`` up to
    it, or only ``last_ready`` before the first digest. It is late when it covers a day before
    ``late_after``, the day an on-time digest covers now. Missed days become a single digest
    marked late, never one email per missed day, and it covers at most the last ``max_days``.
    """
    if last_sent is not None and last_sent >= last_ready:
        return None
    days = days_to_detect(last_sent, last_ready, backfill_days=1)
    # After a long gap (or a digest sent by hand for an old day) only the last max_days go out.
    days = days[-max_days:]
    return DigestPlan(days, late=days[0] < late_after)
