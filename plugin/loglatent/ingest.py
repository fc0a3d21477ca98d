"""Ingest: read syslog documents, reduce them to events and add them to the minute histograms.

Each run reads the documents after the stored checkpoint, up to ``now - ingest.settle_seconds``
(so late arrivals are not skipped), and commits counts, templates, events and the checkpoint
together every ``ingest.commit_every`` documents. A run that stops at any point, by a crash, a
kill or a lost connection, leaves the last commit behind, and the next run resumes from it with
the same result as one uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from elasticsearch import Elasticsearch

from loglatent.config import Config
from loglatent.histograms import Checkpoint, DayClock, HistogramStore, PendingChanges, truncate_example
from loglatent.hosts import HostNormaliser
from loglatent.reader import Hit, ReadWindow, SourceReader
from loglatent.templates import TemplateMinerState

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    """Counts of one ingest run: documents read, counted and skipped, templates, events and days."""

    documents: int = 0
    counted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    new_templates: int = 0
    templates: int = 0
    new_events: int = 0
    events: int = 0
    days: set[str] = field(default_factory=set)
    without_timestamp: int = 0
    checkpoint: str | None = None
    previous_checkpoint: str | None = None
    source_exists: bool = True
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def store_settings(config: Config) -> dict[str, object]:
    """Return the settings that give stored counts their meaning. A store rejects a change of them."""
    return {
        "timezone": config.source.timezone,
        "strip_domain": config.hosts.strip_domain,
        "templates": config.templates.model_dump(),
        "source": config.source.model_dump(exclude={"timezone"}),
    }


def open_store(config: Config) -> HistogramStore:
    return HistogramStore(config.data_dir, store_settings(config))


def ingest(
    client: Elasticsearch,
    config: Config,
    start: datetime | None = None,
    end: datetime | None = None,
    max_documents: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Count the documents of ``[start, end)`` that come after the checkpoint.

    ``end`` defaults to now minus ``ingest.settle_seconds``. ``max_documents`` stops the run at the
    first timestamp boundary past that many documents, with everything read so far committed.
    """
    started = time.monotonic()
    if end is None:
        end = datetime.now(timezone.utc) - timedelta(seconds=config.ingest.settle_seconds)
    with open_store(config) as store:
        run = _IngestRun(client, config, store)
        summary = run.execute(start, end, max_documents, progress, on_total)
    summary.seconds = time.monotonic() - started
    log.debug(
        "Ingest read %d documents (%d counted, %d skipped%s) into %d events and %d templates on %d days in %.1f s",
        summary.documents,
        summary.counted,
        summary.skipped_total,
        "".join(f", {reason}: {n}" for reason, n in sorted(summary.skipped.items())),
        summary.events,
        summary.templates,
        len(summary.days),
        summary.seconds,
    )
    return summary


class _IngestRun:
    def __init__(self, client: Elasticsearch, config: Config, store: HistogramStore) -> None:
        self.config = config
        self.store = store
        self.reader = SourceReader(
            client, config.source, config.ingest.page_size, config.ingest.point_in_time_keep_alive
        )
        self.miner = TemplateMinerState(config.templates, store.miner_state(), store.masked_templates())
        self.hosts = HostNormaliser(config.hosts.strip_domain)
        self.clock = DayClock(config.source.zone)
        self.event_ids = store.event_ids()
        self.next_event_id = max(self.event_ids.values(), default=0) + 1
        self.host_field = config.source.host_field
        self.message_field = config.source.message_field
        self.summary = IngestSummary()
        self._reset_pending()

    def _reset_pending(self) -> None:
        self.counts: Counter[tuple[int, str, int]] = Counter()
        self.day_examples: dict[tuple[int, str], str] = {}
        self.new_events: list[tuple[int, str, int, str, str]] = []
        self.skipped: Counter[str] = Counter()
        self.pending_documents = 0

    def execute(
        self,
        start: datetime | None,
        end: datetime,
        max_documents: int | None,
        progress: Callable[[int], None] | None,
        on_total: Callable[[int], None] | None,
    ) -> IngestSummary:
        checkpoint = self.store.checkpoint()
        self.summary.previous_checkpoint = checkpoint.position if checkpoint else None
        self.summary.source_exists = self.reader.source_exists()
        templates_before = self.store.template_count()
        documents_before = checkpoint.documents if checkpoint else 0
        window = ReadWindow(
            after=checkpoint.position if checkpoint else None,
            start=_iso(start) if start else None,
            end=_iso(end),
        )
        if on_total is not None:
            on_total(self.reader.count(window))
        self.summary.without_timestamp = self.reader.count_without_timestamp()

        position = checkpoint.position if checkpoint else None
        for batch in self.reader.batches(window):
            self._count_batch(batch)
            position = batch[-1].timestamp
            if progress is not None:
                progress(len(batch))
            if self.pending_documents >= self.config.ingest.commit_every:
                self._commit(position, documents_before)
            if max_documents is not None and self.summary.documents >= max_documents:
                self.summary.stopped_early = True
                break
        if position is not None and (self.pending_documents or checkpoint is None):
            self._commit(position, documents_before)

        self.summary.checkpoint = position
        self.summary.templates = self.store.template_count()
        self.summary.new_templates = self.summary.templates - templates_before
        self.summary.events = len(self.event_ids)
        self.summary.notes["messages truncated for templating"] += self.miner.truncated
        self.summary.notes = +self.summary.notes
        return self.summary

    def _count_batch(self, batch: list[Hit]) -> None:
        for hit in batch:
            host_value = _field(hit.source, self.host_field)
            message = _field(hit.source, self.message_field)
            host = _single_string(host_value)
            if not host:
                self.skipped["missing host" if host_value in (None, "", []) else "invalid host"] += 1
                continue
            text = _single_string(message)
            if text is None or not text.strip():
                self.skipped["missing message" if message in (None, "", []) else "invalid message"] += 1
                continue
            if not text.isascii():
                text = self._valid_unicode(text)

            host_key = self.hosts(host)
            template_id = self.miner.template_id(text)
            day, minute = self.clock.locate(hit.timestamp)
            event_id = self.event_ids.get((host_key, template_id))
            if event_id is None:
                event_id = self._new_event(host_key, template_id, text, day)
            self.counts[(event_id, day, minute)] += 1
            if (event_id, day) not in self.day_examples:
                self.day_examples[(event_id, day)] = truncate_example(text)
            self.summary.days.add(day)
        self.summary.documents += len(batch)
        self.pending_documents += len(batch)

    def _valid_unicode(self, text: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.summary.notes["invalid Unicode replaced"] += 1
            return text.encode("utf-8", errors="replace").decode("utf-8")
        return text

    def _new_event(self, host: str, template_id: int, example: str, day: str) -> int:
        event_id = self.next_event_id
        self.next_event_id += 1
        self.event_ids[(host, template_id)] = event_id
        self.new_events.append((event_id, host, template_id, truncate_example(example), day))
        self.summary.new_events += 1
        return event_id

    def _commit(self, position: str, documents_before: int) -> None:
        self.store.commit(
            PendingChanges(
                counts=self.counts,
                day_examples=self.day_examples,
                new_events=self.new_events,
                changed_templates=self.miner.take_changed(),
                new_masked=self.miner.take_new_masked(),
                miner_state=self.miner.state_bytes(),
                checkpoint=Checkpoint(position, documents_before + self.summary.documents),
                skipped=self.skipped,
            )
        )
        self.summary.counted += sum(self.counts.values())
        self.summary.skipped.update(self.skipped)
        log.debug("Committed %d documents up to %s", self.pending_documents, position)
        self._reset_pending()

def _field(source: dict[str, Any], path: str) -> Any:
    """Return the value at dotted ``path`` in ``source``, whether stored nested, dotted or mixed."""
    if path in source:
        return source[path]
    head, dot, rest = path.partition(".")
    while dot:
        node = source.get(head)
        if isinstance(node, dict):
            value = _field(node, rest)
            if value is not None:
                return value
        next_head, dot, rest = rest.partition(".")
        head = f"{head}.{next_head}"
    return None


def _single_string(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("ingest window bounds must be timezone-aware")
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
