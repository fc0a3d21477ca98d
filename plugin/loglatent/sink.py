"""Anomaly documents: the index template of ``output.index`` and retried bulk writes.

Each document is one event's one day for one method, with the id
``sha1(method | day | host | template_id)``: a rerun overwrites its earlier verdict instead of
adding another. Documents of the rerun days that the new run no longer flags are deleted, so the
index always contains the latest verdict of each day.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError, helpers

from loglatent.errors import ElasticsearchUnavailable

log = logging.getLogger(__name__)

TEMPLATE_NAME = "loglatent-anomalies"
RETRYABLE_STATUSES = {429, 500, 502, 503, 504}

ANOMALY_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "@timestamp": {"type": "date"},
        "day": {"type": "keyword"},
        "timezone": {"type": "keyword"},
        "host": {"type": "keyword"},
        "template_id": {"type": "long"},
        "template": {"type": "keyword", "ignore_above": 8191, "fields": {"text": {"type": "text"}}},
        "event": {"type": "keyword"},
        "example": {"type": "text"},
        "method": {"type": "keyword"},
        "reason": {"type": "keyword"},
        "kl": {"type": "double"},
        "typical_kl": {"type": "double"},
        "score": {"type": "double"},
        "typical_score": {"type": "double"},
        "votes": {"type": "integer"},
        "ensemble_size": {"type": "integer"},
        "confidence": {"type": "float"},
        "count": {"type": "long"},
        "typical_count": {"type": "double"},
        "hourly_counts": {"type": "long"},
        "typical_hourly": {"type": "float"},
        "model_version": {"type": "keyword"},
        "run_id": {"type": "keyword"},
        "detected_at": {"type": "date"},
    },
}


SCORES_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "@timestamp": {"type": "date"},
        "day": {"type": "keyword"},
        "host": {"type": "keyword"},
        "template_id": {"type": "long"},
        "event": {"type": "keyword"},
        "method": {"type": "keyword"},
        "score": {"type": "double"},
        "kl": {"type": "double"},
        "anomalous": {"type": "boolean"},
        "votes": {"type": "integer"},
        "ensemble_size": {"type": "integer"},
        "count": {"type": "long"},
        "model_version": {"type": "keyword"},
        "run_id": {"type": "keyword"},
    },
}


@dataclass
class WriteSummary:
    """Outcome of one write: documents written and deleted, failures by reason."""

    written: int = 0
    deleted: int = 0
    failed: Counter[str] = field(default_factory=Counter)


def anomaly_id(method: str, day: str, host: str, template_id: int) -> str:
    return hashlib.sha1(f"{method}|{day}|{host}|{template_id}".encode()).hexdigest()


def install_template(client: Elasticsearch, index: str, mapping: dict[str, Any] = ANOMALY_MAPPING) -> None:
    """Install (or update) the index template for ``index`` and create the index if it is missing."""
    try:
        client.indices.put_index_template(
            name=f"{TEMPLATE_NAME}-{index}" if index != TEMPLATE_NAME else TEMPLATE_NAME,
            index_patterns=[index],
            priority=200,
            template={"settings": {"number_of_replicas": 0 if _single_node(client) else 1}, "mappings": mapping},
            meta={"managed_by": "loglatent"},
        )
        if not client.indices.exists(index=index):
            client.indices.create(index=index)
        else:
            # An index created by an older loglatent gains the fields added since.
            client.indices.put_mapping(index=index, properties=mapping["properties"])
    except ApiError as exc:
        if "resource_already_exists_exception" in str(exc.body):
            return
        raise ElasticsearchUnavailable(
            f"cannot install the index template for output.index {index!r}: {exc.meta.status} {str(exc.body)[:300]}"
        ) from None
    except TransportError as exc:
        raise ElasticsearchUnavailable(f"cannot install the index template for {index!r}: {exc}") from None


def _single_node(client: Elasticsearch) -> bool:
    try:
        return int(client.cluster.health()["number_of_data_nodes"]) <= 1
    except (ApiError, TransportError, KeyError, ValueError):
        return False


def replace_days(
    client: Elasticsearch,
    index: str,
    documents: list[dict[str, Any]],
    days: Iterable[str],
    methods: Iterable[str],
    max_attempts: int = 5,
    initial_backoff: float = 1.0,
    kind: str = "anomaly",
) -> WriteSummary:
    """Write ``documents`` and delete older documents of ``days`` and ``methods`` that are not among them.

    Items rejected with 429 or a 5xx status are retried with exponential backoff, up to
    ``max_attempts`` in all. Items that still fail are counted by reason; they never stop the rest.
    """
    summary = WriteSummary()
    keep = {doc["_id"] for doc in documents}
    stale = [doc_id for doc_id in _existing_ids(client, index, list(days), list(methods)) if doc_id not in keep]
    actions: list[dict[str, Any]] = [
        {"_op_type": "index", "_index": index, "_id": doc["_id"], "_source": doc["_source"]} for doc in documents
    ]
    actions += [{"_op_type": "delete", "_index": index, "_id": doc_id} for doc_id in stale]

    backoff = initial_backoff
    for attempt in range(1, max_attempts + 1):
        retry: list[dict[str, Any]] = []
        for action, (ok, item) in zip(actions, _bulk(client, actions)):
            operation, result = next(iter(item.items()))
            status = _status(result)
            if ok or (operation == "delete" and status == 404):
                if operation == "delete":
                    summary.deleted += 1
                else:
                    summary.written += 1
            elif status in RETRYABLE_STATUSES and attempt < max_attempts:
                retry.append(action)
            else:
                summary.failed[_reason(status, result)] += 1
        if not retry:
            break
        log.warning("Retrying %d of %d %s writes to %s in %.0f s (attempt %d of %d)",
                    len(retry), len(actions), kind, index, backoff, attempt + 1, max_attempts)
        time.sleep(backoff)
        backoff *= 2
        actions = retry

    client.indices.refresh(index=index)
    for reason, count in summary.failed.items():
        log.error("Failed to write %d %s documents to %s: %s", count, kind, index, reason)
    return summary


def _bulk(client: Elasticsearch, actions: list[dict[str, Any]]) -> list[tuple[bool, dict[str, Any]]]:
    """Send ``actions`` and return one (ok, item) per action, in order, also for a failed request."""
    results: list[tuple[bool, dict[str, Any]]] = []
    try:
        for ok, item in helpers.streaming_bulk(
            client, actions, chunk_size=500, raise_on_error=False, raise_on_exception=False, max_retries=0
        ):
            results.append((ok, item))
    except TransportError as exc:
        # Connection-level failures: every remaining action is retryable.
        log.warning("Bulk request to Elasticsearch failed: %s", exc)
    while len(results) < len(actions):
        action = actions[len(results)]
        results.append((False, {action["_op_type"]: {"status": 503, "error": "connection failed"}}))
    return results


def _existing_ids(client: Elasticsearch, index: str, days: list[str], methods: list[str]) -> list[str]:
    if not days:
        return []
    query = {"bool": {"filter": [{"terms": {"day": days}}, {"terms": {"method": methods}}]}}
    try:
        return [hit["_id"] for hit in helpers.scan(client, index=index, query={"query": query, "_source": False})]
    except ApiError as exc:
        if exc.meta.status == 404:
            return []
        raise ElasticsearchUnavailable(f"cannot read earlier anomalies from {index!r}: {str(exc.body)[:300]}") from None
    except TransportError as exc:
        raise ElasticsearchUnavailable(f"cannot read earlier anomalies from {index!r}: {exc}") from None


def _status(result: dict[str, Any]) -> int:
    # A request that failed on the connection reports "N/A": retry it like a 503.
    try:
        return int(result.get("status", 503))
    except (TypeError, ValueError):
        return 503


def _reason(status: int, result: dict[str, Any]) -> str:
    error = result.get("error", "")
    if isinstance(error, dict):
        return f"{status} {error.get('type', 'error')}: {str(error.get('reason', ''))[:200]}"
    return f"{status} {str(error)[:200]}"
