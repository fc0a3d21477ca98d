from elasticsearch import Elasticsearch

from loglatent.sink import anomaly_id, install_template, replace_days


def document(day: str, host: str, template_id: int, **extra: object) -> dict[str, object]:
    source = {"day": day, "host": host, "template_id": template_id, "method": "cvae", "count": 3, **extra}
    return {"_id": anomaly_id("cvae", day, host, template_id), "_source": source}


def test_failed_item_reported_others_written(es: Elasticsearch, index_name: str) -> None:
    output = f"{index_name}-anomalies"
    install_template(es, output)
    try:
        documents = [
            document("2024-01-01", "r1", 1),
            document("2024-01-01", "r1", 2, unknown_field="rejected by the strict mapping"),
            document("2024-01-01", "r2", 1),
        ]
        summary = replace_days(es, output, documents, ["2024-01-01"], ["cvae"], initial_backoff=0.01)
        assert summary.written == 2
        assert sum(summary.failed.values()) == 1
        (reason,) = summary.failed
        assert reason.startswith("400 strict_dynamic_mapping_exception")
        assert es.count(index=output)["count"] == 2
    finally:
        es.indices.delete(index=output, ignore_unavailable=True)


def test_rerun_replaces_days_verdicts(es: Elasticsearch, index_name: str) -> None:
    output = f"{index_name}-anomalies"
    install_template(es, output)
    try:
        replace_days(es, output, [document("2024-01-01", "r1", 1), document("2024-01-02", "r1", 1)],
                     ["2024-01-01", "2024-01-02"], ["cvae"])
        # A new run of 2024-01-01 flags another event: the old verdict of that day goes, 01-02 stays.
        summary = replace_days(es, output, [document("2024-01-01", "r2", 5)], ["2024-01-01"], ["cvae"])
        assert summary.written == 1
        assert summary.deleted == 1
        days = sorted((hit["_source"]["day"], hit["_source"]["host"])
                      for hit in es.search(index=output, size=10)["hits"]["hits"])
        assert days == [("2024-01-01", "r2"), ("2024-01-02", "r1")]
    finally:
        es.indices.delete(index=output, ignore_unavailable=True)


def test_template_mapping_is_installed(es: Elasticsearch, index_name: str) -> None:
    output = f"{index_name}-anomalies"
    install_template(es, output)
    install_template(es, output)  # idempotent
    try:
        mapping = es.indices.get_mapping(index=output)[output]["mappings"]
        assert mapping["properties"]["kl"]["type"] == "double"
        assert mapping["properties"]["host"]["type"] == "keyword"
        assert mapping["properties"]["@timestamp"]["type"] == "date"
    finally:
        es.indices.delete(index=output, ignore_unavailable=True)
        es.indices.delete_index_template(name=f"loglatent-anomalies-{output}")
