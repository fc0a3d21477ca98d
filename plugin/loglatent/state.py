"""The worker's state in Elasticsearch, and the catch-up plan after a first start or downtime.

State lives in one index beside the anomalies (documents ``checkpoint-NAME`` and ``run-JOB``),
so a worker restarted on another machine with the same configuration continues where the last
one stopped. The lease document shares the index (``loglatent.lease``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

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
                   holder: str = "") -> None:
        self._put(f"run-{job}", {"kind": "run", "job": job, "started": started, "finished": finished,
                                 "outcome": outcome, "details": details, "holder": holder})

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


def digest_plan(last_sent: str | None, last_complete: str) -> DigestPlan | None:
    """Return the one digest to send now, or None when the digest for ``last_complete`` went out.

    Missed days become a single digest marked late, never one email per missed day.
    """
    if last_sent is not None and last_sent >= last_complete:
        return None
    days = days_to_detect(last_sent, last_complete, backfill_days=1)
    return DigestPlan(days, late=len(days) > 1)
