"""Shared helpers for tests that write documents into the real node."""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch, helpers

from loglatent.load import ensure_log_index


def index_documents(es: Elasticsearch, index: str, documents: list[dict[str, Any]], id_prefix: str = "") -> None:
    ensure_log_index(es, index)
    actions = ({"_index": index, "_id": f"{id_prefix}{i}", "_source": doc} for i, doc in enumerate(documents))
    indexed, errors = helpers.bulk(es, actions, raise_on_error=False)
    es.indices.refresh(index=index)
    assert errors == [], errors
    assert indexed == len(documents)


class Clock:
    """A controlled clock in Unix seconds: tests move ``now`` by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now
