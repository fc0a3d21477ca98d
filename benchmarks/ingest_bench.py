"""Benchmark: full ingest rate against a bare point-in-time read of the same documents.

Fills an index on a local node with real syslog lines (the bundled Linux.log, replayed for many
hosts) until it contains ``--documents`` documents, then measures in one run:

1. a bare read: point in time, ``search_after``, the same sort, page size and ``_source`` fields
   as the product, decoding the JSON and nothing else;
2. the full ingest: reading, host folding, template mining, minute counting and SQLite commits;
3. the bare read again, and reports the faster of the two bare reads.

Run ``scripts/elasticsearch.sh start`` first, or pass ``--url``. This is not a test: it prints
numbers for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from elasticsearch import Elasticsearch, helpers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugin"))

from loglatent.config import load_config  # noqa: E402
from loglatent.ingest import ingest  # noqa: E402
from loglatent.load import ensure_log_index  # noqa: E402
from loglatent.logfiles import ParseOptions, ParseStats, parse_file  # noqa: E402
from loglatent.reader import TIMESTAMP_FORMAT  # noqa: E402

SAMPLE = ROOT / "samples" / "loghub-linux" / "Linux.log"


def fill_index(client: Elasticsearch, index: str, documents: int) -> None:
    ensure_log_index(client, index)
    present = client.count(index=index)["count"]
    if present >= documents:
        print(f"Index {index} already holds {present:,} documents")
        return
    client.indices.delete(index=index)
    ensure_log_index(client, index)
    records = list(parse_file(SAMPLE, ParseOptions(year=2005), ParseStats()))
    replicas = -(-documents // len(records))

    def actions():  # type: ignore[no-untyped-def]
        for replica in range(replicas):
            host = f"srv{replica:03d}.example.net"
            shift = timedelta(seconds=replica * 7)
            for number, record in enumerate(records):
                yield {
                    "_index": index,
                    "_id": f"{replica}-{number}",
                    "_source": {
                        "@timestamp": (record.timestamp + shift).isoformat(),
                        "host": {"name": host},
                        "message": record.message,
                    },
                }

    started = time.monotonic()
    client.indices.put_settings(index=index, settings={"refresh_interval": "-1"})
    for ok, item in helpers.parallel_bulk(client, actions(), thread_count=2, chunk_size=5000, raise_on_error=False):
        if not ok:
            raise SystemExit(f"bulk indexing failed: {item}")
    client.indices.put_settings(index=index, settings={"refresh_interval": "1s"})
    client.indices.refresh(index=index)
    client.indices.forcemerge(index=index, max_num_segments=1)
    print(f"Indexed {replicas * len(records):,} documents in {time.monotonic() - started:.0f} s")


def bare_read(client: Elasticsearch, index: str, page_size: int) -> tuple[int, float]:
    started = time.monotonic()
    pit = client.open_point_in_time(index=index, keep_alive="2m")["id"]
    sort = [{"@timestamp": {"order": "asc", "format": TIMESTAMP_FORMAT, "numeric_type": "date_nanos"}}]
    search_after = None
    read = 0
    while True:
        body = {
            "size": page_size,
            "sort": sort,
            "_source": {"includes": ["host.name", "message"]},
            "pit": {"id": pit, "keep_alive": "2m"},
            "track_total_hits": False,
        }
        if search_after is not None:
            body["search_after"] = search_after
        hits = client.search(body=body, filter_path=["pit_id", "hits.hits._source", "hits.hits.sort"])["hits"]["hits"]
        if not hits:
            break
        read += len(hits)
        search_after = hits[-1]["sort"]
        if len(hits) < page_size:
            break
    client.close_point_in_time(id=pit)
    return read, time.monotonic() - started


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("LOGLATENT_ES_URL", "http://127.0.0.1:9200"))
    parser.add_argument("--index", default="loglatent-bench-syslog")
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=5000)
    args = parser.parse_args()

    client = Elasticsearch(args.url, request_timeout=300)
    version = client.nodes.info(node_id="_local", metric="_none", filter_path="nodes.*.version")["nodes"]
    fill_index(client, args.index, args.documents)

    with tempfile.TemporaryDirectory() as work:
        config_path = Path(work) / "config.yaml"
        config_path.write_text(
            f"elasticsearch:\n  hosts: ['{args.url}']\n  request_timeout: 300\n"
            f"source:\n  index: {args.index}\n"
            f"ingest:\n  settle_seconds: 0\n  page_size: {args.page_size}\n"
            f"data_dir: {work}/data\n"
        )
        config = load_config(config_path)

        first_read, first_seconds = bare_read(client, args.index, args.page_size)
        summary = ingest(client, config)
        second_read, second_seconds = bare_read(client, args.index, args.page_size)

    bare_seconds = min(first_seconds, second_seconds)
    bare_rate = first_read / bare_seconds
    ingest_rate = summary.documents / summary.seconds
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print()
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"Elasticsearch {next(iter(version.values()))['version']} on the same machine, page size {args.page_size}")
    print(f"Documents: {summary.documents:,} ({summary.templates} templates, {summary.events} events, "
          f"{len(summary.days)} days)")
    print(f"Bare point-in-time read:  {bare_rate:>10,.0f} documents/s  ({first_seconds:.1f} s and {second_seconds:.1f} s)")
    print(f"Full ingest:              {ingest_rate:>10,.0f} documents/s  ({summary.seconds:.1f} s)")
    print(f"Peak resident memory of this process: {peak_mb:,.0f} MB")
    print(f"Ingest / bare read: {ingest_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
