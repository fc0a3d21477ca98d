import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from elasticsearch import Elasticsearch

from helpers import index_documents
from loglatent.histograms import export_npz
from loglatent.ingest import ingest, open_store

FAMILIES = {
    "cron": "CRON[{n}]: (root) CMD (run-parts /etc/cron.hourly)",
    "sshd": "sshd[{n}]: Accepted publickey for deploy from 10.0.{k}.{n2} port {port} ssh2",
    "link": "kernel: eth{k} link is down",
    "ntp": "ntpd[{n}]: adjusting local clock by {n2}.{port}s",
}


def random_corpus(seed: int, size: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    start = datetime(2024, 5, 1, tzinfo=timezone.utc)
    documents = []
    for _ in range(size):
        family = rng.choice(sorted(FAMILIES))
        message = FAMILIES[family].format(
            n=rng.randrange(100, 99999), n2=rng.randrange(1, 250), k=rng.randrange(0, 4), port=rng.randrange(1024, 65535)
        )
        moment = start + timedelta(seconds=rng.randrange(0, 3 * 86400))
        host = rng.choice(["r1", "r2", "sw-core"])
        documents.append({"@timestamp": moment.isoformat(), "host": {"name": host}, "message": message, "family": family})
    return documents


def expected_counts(documents: list[dict[str, object]], zone: ZoneInfo) -> dict[tuple[str, str, str], np.ndarray]:
    """Count per (host, family, local day) and local wall-clock minute, independently of loglatent."""
    expected: dict[tuple[str, str, str], np.ndarray] = {}
    for doc in documents:
        local = datetime.fromisoformat(str(doc["@timestamp"])).astimezone(zone)
        key = (str(doc["host"]["name"]), str(doc["family"]), local.date().isoformat())  # type: ignore[index]
        expected.setdefault(key, np.zeros(1440, dtype=np.int64))[local.hour * 60 + local.minute] += 1
    return expected


def family_of(template: str) -> str:
    for family, pattern in FAMILIES.items():
        if template.split("[")[0].split(":")[0] == pattern.split("[")[0].split(":")[0]:
            return family
    raise AssertionError(f"template {template!r} matches no family")


def exported(config, tmp_path: Path) -> dict[tuple[str, str, str], np.ndarray]:  # type: ignore[no-untyped-def]
    out = tmp_path / f"export-{random.random()}.npz"
    with open_store(config) as store:
        export_npz(store, out)
    data = np.load(out)
    result: dict[tuple[str, str, str], np.ndarray] = {}
    for host, template, day, counts in zip(data["host"], data["template"], data["day"], data["counts"]):
        key = (str(host), family_of(str(template)), str(day))
        result[key] = result.get(key, np.zeros(1440, dtype=np.int64)) + counts
    return result


def test_exact_minute_counts(es: Elasticsearch, index_name: str, make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    documents = random_corpus(seed=7, size=3000)
    index_documents(es, index_name, documents)
    config = make_config(index_name, timezone="America/New_York", page_size=500, commit_every=700)

    summary = ingest(es, config)

    assert summary.documents == 3000
    assert summary.counted == 3000
    expected = expected_counts(documents, ZoneInfo("America/New_York"))
    actual = exported(config, tmp_path)
    assert actual.keys() == expected.keys()
    for key in expected:
        assert np.array_equal(actual[key], expected[key]), key


def test_second_run_reads_only_new_documents(es: Elasticsearch, index_name: str, make_config) -> None:  # type: ignore[no-untyped-def]
    documents = random_corpus(seed=1, size=200)
    index_documents(es, index_name, documents[:120])
    config = make_config(index_name)
    assert ingest(es, config).documents == 120
    assert ingest(es, config).documents == 0

    later = [dict(doc, **{"@timestamp": "2024-06-01T00:00:00+00:00"}) for doc in documents[120:]]
    es.index(index=index_name, id="late", document=later[0], refresh="wait_for")
    second = ingest(es, config)
    assert second.documents == 1
    with open_store(config) as store:
        assert store.total_count() == 121


def test_resumed_ingest_equals_uninterrupted(es: Elasticsearch, index_name: str, make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    documents = random_corpus(seed=3, size=1500)
    index_documents(es, index_name, documents)
    whole = make_config(index_name, data_dir="whole", page_size=100, commit_every=100)
    pieces = make_config(index_name, data_dir="pieces", page_size=100, commit_every=100)

    ingest(es, whole)
    runs = 0
    while True:
        runs += 1
        summary = ingest(es, pieces, max_documents=250)
        if not summary.stopped_early:
            break
    assert runs >= 5

    with open_store(whole) as a, open_store(pieces) as b:
        assert [(e.host, e.template_id, e.template) for e in a.events()] == [
            (e.host, e.template_id, e.template) for e in b.events()
        ]
        rows_a = [(eid, day, counts.tolist()) for eid, day, counts in a.histograms()]
        rows_b = [(eid, day, counts.tolist()) for eid, day, counts in b.histograms()]
        assert rows_a == rows_b
        assert a.total_count() == 1500


def test_host_spellings_are_one_host(es: Elasticsearch, index_name: str, make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    names = ["host-a", "HOST-A", "host-a.example.net"]
    documents = [
        {"@timestamp": f"2024-02-01T10:0{i}:00Z", "host": {"name": name}, "message": "kernel: eth0 link is down"}
        for i, name in enumerate(names)
    ]
    index_documents(es, index_name, documents)
    config = make_config(index_name)
    ingest(es, config)
    with open_store(config) as store:
        events = store.events()
        assert [event.host for event in events] == ["host-a"]
        (_, _, counts), = list(store.histograms())
        assert counts.sum() == 3


def test_daylight_saving_days_in_berlin(es: Elasticsearch, index_name: str, make_config) -> None:  # type: ignore[no-untyped-def]
    # 2024-03-31: clocks jump from 02:00 to 03:00 (CET to CEST); 2024-10-27: from 03:00 back to 02:00.
    stamps = {
        "2024-03-31T00:59:00Z": ("2024-03-31", 1 * 60 + 59),  # 01:59 CET
        "2024-03-31T01:00:00Z": ("2024-03-31", 3 * 60),  # 03:00 CEST, the hour 02:xx does not exist
        "2024-03-31T21:59:00Z": ("2024-03-31", 23 * 60 + 59),  # 23:59 CEST, the day's last minute
        "2024-10-27T00:30:00Z": ("2024-10-27", 2 * 60 + 30),  # 02:30 CEST, first pass
        "2024-10-27T01:30:00Z": ("2024-10-27", 2 * 60 + 30),  # 02:30 CET, second pass, same minute
        "2024-10-27T22:59:00Z": ("2024-10-27", 23 * 60 + 59),  # 23:59 CET
    }
    documents = [{"@timestamp": s, "host": {"name": "r1"}, "message": "ntpd: sync"} for s in stamps]
    index_documents(es, index_name, documents)
    config = make_config(index_name, timezone="Europe/Berlin")
    ingest(es, config)

    with open_store(config) as store:
        rows = {day: counts for _, day, counts in store.histograms()}
    assert sorted(rows) == ["2024-03-31", "2024-10-27"]
    expected = {day: np.zeros(1440, dtype=np.int64) for day in rows}
    for day, minute in stamps.values():
        expected[day][minute] += 1
    for day in rows:
        assert np.array_equal(rows[day], expected[day]), day
    assert rows["2024-03-31"][120:180].sum() == 0
    assert rows["2024-10-27"][150] == 2


def test_bad_documents_are_counted_not_fatal(es: Elasticsearch, index_name: str, make_config) -> None:  # type: ignore[no-untyped-def]
    documents: list[dict[str, object]] = [
        {"@timestamp": "2024-01-01T00:00:00Z", "host": {"name": "r1"}, "message": "good one"},
        {"@timestamp": "2024-01-01T00:00:01Z", "host": {"name": "r1"}},
        {"@timestamp": "2024-01-01T00:00:02Z", "message": "no host"},
        {"@timestamp": "2024-01-01T00:00:03Z", "host": {"name": "r1"}, "message": 12345},
        {"@timestamp": "2024-01-01T00:00:04Z", "host": {"name": "r1"}, "message": "big " + "x" * 1_000_000},
        {"@timestamp": "2024-01-01T00:00:05Z", "host": {"name": "r1"}, "message": "bad bytes \udcff here"},
        {"host": {"name": "r1"}, "message": "no timestamp at all"},
    ]
    index_documents(es, index_name, documents)
    config = make_config(index_name)

    summary = ingest(es, config)

    assert summary.documents == 6
    assert summary.counted == 3
    assert summary.skipped == {"missing message": 1, "missing host": 1, "invalid message": 1}
    assert summary.notes["messages truncated for templating"] == 1
    assert summary.notes["invalid Unicode replaced"] == 1
    assert summary.without_timestamp == 1
    with open_store(config) as store:
        assert store.total_count() == 3
        assert store.skipped() == summary.skipped


def test_first_message_of_each_day_kept(es: Elasticsearch, index_name: str, make_config) -> None:  # type: ignore[no-untyped-def]
    documents = [
        {"@timestamp": "2024-03-01T08:00:00Z", "host": {"name": "r1"}, "message": "sshd[1]: Accepted key for alice"},
        {"@timestamp": "2024-03-01T09:00:00Z", "host": {"name": "r1"}, "message": "sshd[2]: Accepted key for bob"},
        {"@timestamp": "2024-03-02T07:00:00Z", "host": {"name": "r1"}, "message": "sshd[3]: Accepted key for carol"},
    ]
    index_documents(es, index_name, documents)
    config = make_config(index_name, page_size=1, commit_every=1)
    ingest(es, config)
    with open_store(config) as store:
        (event,) = store.events()
        assert event.example == "sshd[1]: Accepted key for alice"
        assert store.day_example(event.event_id, "2024-03-01") == "sshd[1]: Accepted key for alice"
        assert store.day_example(event.event_id, "2024-03-02") == "sshd[3]: Accepted key for carol"
        assert store.day_example(event.event_id, "2024-03-03") is None
