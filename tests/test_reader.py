from elasticsearch import Elasticsearch

from helpers import index_documents
from loglatent.config import SourceConfig
from loglatent.reader import ReadWindow, SourceReader


def docs_at(stamps: list[str]) -> list[dict[str, object]]:
    return [{"@timestamp": s, "host": {"name": "h"}, "message": f"m{i}"} for i, s in enumerate(stamps)]


def test_same_timestamp_across_pages_read_once(es: Elasticsearch, index_name: str) -> None:
    stamps = ["2024-01-01T00:00:00Z"] + ["2024-01-01T00:00:01Z"] * 5 + ["2024-01-01T00:00:02Z"]
    index_documents(es, index_name, docs_at(stamps))
    reader = SourceReader(es, SourceConfig(index=index_name), page_size=2)

    batches = list(reader.batches(ReadWindow()))
    messages = [hit.source["message"] for batch in batches for hit in batch]

    assert sorted(messages) == sorted(f"m{i}" for i in range(7))
    assert len(messages) == 7
    for number, batch in enumerate(batches):  # no timestamp is split between two batches
        later = {hit.timestamp for other in batches[number + 1:] for hit in other}
        assert batch[-1].timestamp not in later
    group = next(batch for batch in batches if batch[-1].timestamp.startswith("2024-01-01T00:00:01"))
    assert sum(1 for hit in group if hit.timestamp.startswith("2024-01-01T00:00:01")) == 5


def test_lost_point_in_time_is_reopened(es: Elasticsearch, index_name: str) -> None:
    stamps = [f"2024-01-01T00:00:{second:02d}Z" for second in range(10)]
    index_documents(es, index_name, docs_at(stamps))
    reader = SourceReader(es, SourceConfig(index=index_name), page_size=3)

    seen: list[str] = []
    for number, batch in enumerate(reader.batches(ReadWindow())):
        seen.extend(hit.source["message"] for hit in batch)
        if number == 0:
            es.close_point_in_time(id=reader.pit_id)

    assert reader.reopened == 1
    assert sorted(seen) == sorted(f"m{i}" for i in range(10))
    assert len(seen) == 10


def test_window_bounds(es: Elasticsearch, index_name: str) -> None:
    stamps = [f"2024-01-0{day}T12:00:00Z" for day in range(1, 6)]
    index_documents(es, index_name, docs_at(stamps))
    reader = SourceReader(es, SourceConfig(index=index_name), page_size=10)

    window = ReadWindow(after="2024-01-01T12:00:00Z", start="2024-01-02T00:00:00Z", end="2024-01-04T12:00:00Z")
    read = [hit.source["message"] for batch in reader.batches(window) for hit in batch]

    assert read == ["m1", "m2"]
    assert reader.count(window) == 2


def test_extra_query_filter_applies(es: Elasticsearch, index_name: str) -> None:
    docs = docs_at(["2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z"])
    docs[1]["host"] = {"name": "other"}
    index_documents(es, index_name, docs)
    source = SourceConfig(index=index_name, query={"term": {"host.name": "other"}})
    read = [hit.source["message"] for batch in SourceReader(es, source).batches(ReadWindow()) for hit in batch]
    assert read == ["m1"]
