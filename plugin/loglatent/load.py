"""Bulk-index parsed log files into Elasticsearch, for demos, tests and back-filling archives."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError, helpers

from loglatent.errors import ElasticsearchUnavailable, InputError
from loglatent.logfiles import LogRecord, ParseOptions, ParseStats, document_id, parse_file

log = logging.getLogger(__name__)

# ``keyword`` terms are limited to 32,766 bytes, which is 8,191 characters of 4-byte UTF-8.
KEYWORD_IGNORE_ABOVE = 8191

SOURCE_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "host": {"properties": {"name": {"type": "keyword"}}},
        "message": {
            "type": "text",
            "fields": {"keyword": {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE}},
        },
        "event": {"properties": {"original": {"type": "keyword", "index": False, "doc_values": False}}},
        "log": {"properties": {"file": {"properties": {"path": {"type": "keyword"}}}}},
    },
}


@dataclass
class LoadSummary:
    """Outcome of one ``load``: parse counts, documents indexed, failures by reason."""

    parse: ParseStats = field(default_factory=ParseStats)
    indexed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


EXPECTED_TYPES = {
    "@timestamp": ("date", "date_nanos"),
    "host.name": ("keyword", "constant_keyword"),
    "message": ("text", "match_only_text", "keyword", "wildcard"),
}


def mapping_conflicts(client: Elasticsearch, index: str) -> list[str]:
    """Return a line for each field of ``index`` whose mapped type ingest cannot use as loaded here."""
    try:
        response = client.indices.get_field_mapping(index=index, fields=list(EXPECTED_TYPES))
    except (ApiError, TransportError):
        return []
    conflicts = []
    for index_name, mappings in response.body.items():
        fields = mappings.get("mappings", {})
        for field, allowed in EXPECTED_TYPES.items():
            leaf = field.rsplit(".", 1)[-1]
            mapped = fields.get(field, {}).get("mapping", {}).get(leaf, {}).get("type")
            if mapped is not None and mapped not in allowed:
                conflicts.append(f"{index_name}: {field} is mapped as {mapped}, expected {' or '.join(allowed)}")
    return conflicts


def ensure_log_index(client: Elasticsearch, index: str) -> bool:
    """Create ``index`` with the syslog mapping unless it exists. Returns True when it was created."""
    if any(char in index for char in "*?,"):
        raise InputError(f"--index {index!r}: expected one index name, not a pattern or list")
    try:
        if client.indices.exists(index=index):
            return False
        client.indices.create(index=index, mappings=SOURCE_MAPPING)
    except ApiError as exc:
        if exc.meta.status == 400 and "resource_already_exists_exception" in str(exc.body):
            return False
        raise ElasticsearchUnavailable(f"cannot create index {index!r}: {exc.meta.status} {exc.body}") from None
    log.info("Created index %s with the syslog mapping", index)
    return True


def load_files(
    client: Elasticsearch,
    paths: Iterable[Path],
    index: str,
    options: ParseOptions,
    chunk_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> LoadSummary:
    """Parse ``paths`` and bulk-index their records into ``index``.

    Rejected chunks (HTTP 429) are retried with exponential backoff. Items that still fail are
    counted by reason in the summary and never stop the remaining items.
    """
    summary = LoadSummary()
    started = time.monotonic()
    if not ensure_log_index(client, index):
        for conflict in mapping_conflicts(client, index):
            log.warning("Index %s already exists with another mapping (%s); check that it is the index you meant",
                        index, conflict)

    actions = _actions(paths, index, options, summary.parse)
    results = helpers.streaming_bulk(
        client,
        actions,
        chunk_size=chunk_size,
        max_chunk_bytes=10 * 1024 * 1024,
        raise_on_error=False,
        raise_on_exception=False,
        max_retries=5,
        initial_backoff=1,
        max_backoff=30,
    )
    try:
        for ok, item in results:
            if ok:
                summary.indexed += 1
            else:
                summary.failed[_failure_reason(item)] += 1
            if progress is not None:
                progress(1)
    except TransportError as exc:
        raise ElasticsearchUnavailable(f"bulk indexing into {index!r} failed: {exc}") from None

    client.indices.refresh(index=index)
    summary.seconds = time.monotonic() - started
    return summary


def _actions(paths: Iterable[Path], index: str, options: ParseOptions, stats: ParseStats) -> Iterator[dict[str, Any]]:
    for path in paths:
        if not path.is_file():
            raise InputError(f"log file not found: {str(path)!r}")
        for record in parse_file(path, options, stats):
            yield {
                "_op_type": "index",
                "_index": index,
                "_id": document_id(record, path.name),
                "_source": _document(record, path),
            }


def _document(record: LogRecord, path: Path) -> dict[str, Any]:
    return {
        "@timestamp": record.timestamp.isoformat(),
        "host": {"name": record.host},
        "message": record.message,
        "event": {"original": record.original},
        "log": {"file": {"path": str(path)}},
    }


def _failure_reason(item: dict[str, Any]) -> str:
    result: dict[str, Any] = next(iter(item.values()), {})
    error = result.get("error", {})
    if isinstance(error, dict):
        return f"{result.get('status', '?')} {error.get('type', 'error')}: {str(error.get('reason', ''))[:200]}"
    return f"{result.get('status', '?')} {str(error)[:200]}"
