"""Stream syslog documents out of Elasticsearch in timestamp order with a point in time.

Pages are fetched with ``search_after`` on (timestamp, ``_shard_doc``), the unique tie-breaker
Elasticsearch adds to a point-in-time sort, so documents that share a timestamp across a page
boundary are each read once. Batches are handed out only at timestamp boundaries: every
document with a batch's last timestamp is in that batch. That makes "all documents up to
timestamp T" a position that survives a new point in time, which is what a checkpoint stores and
what a read resumes from when its point in time expired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError

from loglatent.config import SourceConfig
from loglatent.errors import ElasticsearchUnavailable

log = logging.getLogger(__name__)

TIMESTAMP_FORMAT = "strict_date_optional_time_nanos"
MAX_REOPENS_WITHOUT_PROGRESS = 3


@dataclass(frozen=True, slots=True)
class Hit:
    """One document: its timestamp as ISO 8601 UTC (nanosecond precision) and its filtered ``_source``."""

    timestamp: str
    source: dict[str, Any]


@dataclass(frozen=True)
class ReadWindow:
    """Timestamps to read: later than ``after``, at or after ``start``, and before ``end``. None means no bound."""

    after: str | None = None
    start: str | None = None
    end: str | None = None


class SourceReader:
    """Reads the configured source index pattern.

    Parameters
    ----------
    page_size
        Documents per search request (at most 10,000, the default ``index.max_result_window``).
    keep_alive
        How long the point in time lives between two pages, as an Elasticsearch duration.
    """

    def __init__(self, client: Elasticsearch, source: SourceConfig, page_size: int = 5000, keep_alive: str = "2m") -> None:
        self.client = client
        self.source = source
        self.page_size = page_size
        self.keep_alive = keep_alive
        self.pit_id: str | None = None
        self.reopened = 0

    def count(self, window: ReadWindow) -> int:
        """Return the number of documents in ``window`` now."""
        try:
            response = self.client.count(index=self.source.index, query=self._query(window), allow_no_indices=True)
        except (ApiError, TransportError) as exc:
            raise self._unavailable("count documents in", exc) from None
        return int(response["count"])

    def source_exists(self) -> bool:
        """Return whether the source index pattern matches at least one index, alias or data stream."""
        try:
            resolved = self.client.indices.resolve_index(name=self.source.index)
        except NotFoundError:
            return False
        except (ApiError, TransportError) as exc:
            raise self._unavailable("resolve", exc) from None
        return any(resolved.get(kind) for kind in ("indices", "aliases", "data_streams"))

    def count_without_timestamp(self) -> int:
        """Return how many documents lack the timestamp field. No time window can contain them."""
        query: dict[str, Any] = {"bool": {"must_not": [{"exists": {"field": self.source.timestamp_field}}]}}
        if self.source.query:
            query["bool"]["filter"] = [self.source.query]
        try:
            response = self.client.count(index=self.source.index, query=query, allow_no_indices=True)
        except (ApiError, TransportError) as exc:
            raise self._unavailable("count documents in", exc) from None
        return int(response["count"])

    def batches(self, window: ReadWindow) -> Iterator[list[Hit]]:
        """Yield the window's documents in timestamp order, in batches that end at a timestamp boundary.

        A point in time that expires or disappears is reopened, and reading resumes after the last
        timestamp handed out. Raises ``ElasticsearchUnavailable`` on any other failure.
        """
        boundary = window.after
        reopens_without_progress = 0
        while True:
            current = ReadWindow(after=boundary, start=window.start, end=window.end)
            try:
                for batch in self._read_once(current):
                    boundary = batch[-1].timestamp
                    reopens_without_progress = 0
                    yield batch
                return
            except _PointInTimeLost as lost:
                reopens_without_progress += 1
                self.reopened += 1
                if reopens_without_progress > MAX_REOPENS_WITHOUT_PROGRESS:
                    raise ElasticsearchUnavailable(
                        f"the point in time on {self.source.index!r} expired {reopens_without_progress} times "
                        f"without progress ({lost}); raise ingest.point_in_time_keep_alive"
                    ) from None
                log.warning("Point in time on %s was lost (%s); reopening after %s", self.source.index, lost, boundary)
            finally:
                self._close()

    def _read_once(self, window: ReadWindow) -> Iterator[list[Hit]]:
        self._open()
        query = self._query(window)
        sort = [
            {
                self.source.timestamp_field: {
                    "order": "asc",
                    "format": TIMESTAMP_FORMAT,
                    "numeric_type": "date_nanos",
                    "unmapped_type": "date_nanos",
                }
            }
        ]
        fields = [self.source.host_field, self.source.message_field]

        def fetch(search_after: list[Any] | None) -> tuple[list[Hit], list[Any] | None]:
            response = self._search(query, sort, fields, search_after)
            hits = response.get("hits", {}).get("hits", [])
            page = [Hit(hit["sort"][0], hit.get("_source", {})) for hit in hits]
            return page, (hits[-1]["sort"] if hits else None)

        # The next page is requested while the caller processes this one, so the node's search
        # and the caller's work overlap.
        pending: list[Hit] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loglatent-read") as prefetcher:
            next_page = prefetcher.submit(fetch, None)
            while True:
                page, search_after = next_page.result()
                if not page:
                    break
                last_page = len(page) < self.page_size
                if not last_page:
                    next_page = prefetcher.submit(fetch, search_after)
                pending.extend(page)
                complete, pending = _split_trailing_group(pending)
                if complete:
                    yield complete
                if last_page:
                    break
        if pending:
            yield pending

    def _search(self, query: dict[str, Any], sort: list[Any], fields: list[str], search_after: list[Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "size": self.page_size,
            "query": query,
            "sort": sort,
            "_source": {"includes": fields},
            "pit": {"id": self.pit_id, "keep_alive": self.keep_alive},
            "track_total_hits": False,
        }
        if search_after is not None:
            body["search_after"] = search_after
        try:
            response = self.client.search(
                body=body,
                allow_partial_search_results=False,
                filter_path=["pit_id", "hits.hits._source", "hits.hits.sort", "_shards"],
            ).body
        except NotFoundError as exc:
            if _is_lost_context(exc):
                raise _PointInTimeLost(exc.error) from None
            raise self._unavailable("search", exc) from None
        except ApiError as exc:
            if _is_lost_context(exc):
                raise _PointInTimeLost(exc.error) from None
            raise self._unavailable("search", exc) from None
        except TransportError as exc:
            raise self._unavailable("search", exc) from None

        shards = response.get("_shards", {})
        if shards.get("failed", 0):
            failures = shards.get("failures", [])
            text = str(failures)
            if "search_context_missing_exception" in text:
                raise _PointInTimeLost("search context missing on a shard")
            raise ElasticsearchUnavailable(
                f"search on {self.source.index!r} failed on {shards['failed']} shard(s): {text[:300]}"
            )
        self.pit_id = response.get("pit_id", self.pit_id)
        return response

    def _open(self) -> None:
        try:
            response = self.client.open_point_in_time(
                index=self.source.index, keep_alive=self.keep_alive
            )
        except (ApiError, TransportError) as exc:
            raise self._unavailable("open a point in time on", exc) from None
        self.pit_id = response["id"]

    def _close(self) -> None:
        if self.pit_id is None:
            return
        try:
            self.client.close_point_in_time(id=self.pit_id)
        except (ApiError, TransportError):
            pass  # It expires by itself after keep_alive.
        self.pit_id = None

    def _query(self, window: ReadWindow) -> dict[str, Any]:
        field = self.source.timestamp_field
        filters: list[dict[str, Any]] = []
        if window.after is not None:
            filters.append({"range": {field: {"gt": window.after, "format": TIMESTAMP_FORMAT}}})
        bounds: dict[str, Any] = {"format": TIMESTAMP_FORMAT}
        if window.start is not None:
            bounds["gte"] = window.start
        if window.end is not None:
            bounds["lt"] = window.end
        if len(bounds) == 1:
            filters.append({"exists": {"field": field}})
        else:
            filters.append({"range": {field: bounds}})
        if self.source.query:
            filters.append(self.source.query)
        return {"bool": {"filter": filters}}

    def _unavailable(self, action: str, exc: ApiError | TransportError) -> ElasticsearchUnavailable:
        if isinstance(exc, ApiError) and "index_not_found_exception" in str(exc.body):
            return ElasticsearchUnavailable(
                f"source index {self.source.index!r} not found; check source.index, or load logs into it first"
            )
        if isinstance(exc, ApiError):
            detail = f"{exc.meta.status} {str(exc.body)[:300]}"
        else:
            detail = str(exc)
        return ElasticsearchUnavailable(
            f"cannot {action} {self.source.index!r}: {detail}; check source.index and source.query"
        )


class _PointInTimeLost(Exception):
    pass


def _is_lost_context(exc: ApiError) -> bool:
    text = str(exc.body)
    return "search_context_missing_exception" in text or "No search context found" in text


def _split_trailing_group(hits: list[Hit]) -> tuple[list[Hit], list[Hit]]:
    """Split ``hits`` into the documents before the last timestamp and those at the last timestamp."""
    last = hits[-1].timestamp
    cut = len(hits)
    while cut > 0 and hits[cut - 1].timestamp == last:
        cut -= 1
    return hits[:cut], hits[cut:]
