"""Per-event minute histograms: the day and minute of a timestamp, and their store under ``data_dir``.

A data point is one event's one local day: 1,440 counts, one per wall-clock minute of the day in
``source.timezone``. A daylight-saving day keeps 1,440 minutes. On the 23-hour day the skipped
hour's minutes stay zero. On the 25-hour day the repeated hour's messages are added to the same
minutes. So no message is lost, and a job that runs at 03:00 local time stays at minute 180.

The store is one SQLite database, ``DATA_DIR/histograms.sqlite``. Counts, events, templates, the
template miner's state and the ingest checkpoint change together in one transaction, so a worker
stopped at any moment restarts from a consistent state and never counts a document twice. Only
non-zero minutes are stored (most event-days have a handful).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from loglatent.errors import StateError

MINUTES_PER_DAY = 1440
STORE_FILE = "histograms.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS templates (
    template_id INTEGER PRIMARY KEY,
    template TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS masked_templates (
    masked TEXT PRIMARY KEY,
    template_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    template_id INTEGER NOT NULL,
    example TEXT NOT NULL,
    first_day TEXT NOT NULL,
    UNIQUE (host, template_id)
);
CREATE TABLE IF NOT EXISTS minute_counts (
    event_id INTEGER NOT NULL,
    day TEXT NOT NULL,
    minute INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (event_id, day, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS day_examples (
    event_id INTEGER NOT NULL,
    day TEXT NOT NULL,
    example TEXT NOT NULL,
    PRIMARY KEY (event_id, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS miner_state (id INTEGER PRIMARY KEY CHECK (id = 1), state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position TEXT NOT NULL,
    documents INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""

EXAMPLE_MAX_CHARS = 1000


class DayClock:
    """Map UTC timestamps to (local day, minute of the local day) in one timezone."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._is_utc = zone.key in ("UTC", "Etc/UTC", "Etc/GMT", "GMT", "Etc/Universal", "Universal", "Zulu")
        self._cache: dict[str, tuple[str, int]] = {}

    def locate(self, stamp: str) -> tuple[str, int]:
        """Return the ISO day and minute (0 to 1439) of ``stamp``, an ISO 8601 UTC time ending in Z."""
        prefix = stamp[:16]
        located = self._cache.get(prefix)
        if located is not None:
            return located
        if self._is_utc:
            located = (prefix[:10], int(prefix[11:13]) * 60 + int(prefix[14:16]))
        else:
            moment = datetime.fromisoformat(prefix).replace(tzinfo=timezone.utc).astimezone(self.zone)
            located = (moment.date().isoformat(), moment.hour * 60 + moment.minute)
        if len(self._cache) > 500_000:
            self._cache.clear()
        self._cache[prefix] = located
        return located


@dataclass(frozen=True)
class Event:
    """One (host, template) pair."""

    event_id: int
    host: str
    template_id: int
    template: str
    example: str
    first_day: str


@dataclass(frozen=True)
class Checkpoint:
    """Ingest progress: every document with a timestamp at or before ``position`` is counted."""

    position: str
    documents: int


@dataclass
class PendingChanges:
    """Work done since the last commit, written in one transaction by ``HistogramStore.commit``."""

    counts: Counter[tuple[int, str, int]]
    day_examples: dict[tuple[int, str], str]
    new_events: list[tuple[int, str, int, str, str]]
    changed_templates: dict[int, str]
    new_masked: dict[str, int]
    miner_state: bytes
    checkpoint: Checkpoint
    skipped: Counter[str]


class HistogramStore:
    """The SQLite database of events, templates, minute counts and ingest progress.

    ``settings`` is what the stored counts depend on (timezone, host folding, template settings,
    source). Opening a store built with other settings raises ``StateError``: counting on with a
    new timezone would mix two definitions of a day in one history.
    """

    def __init__(self, data_dir: Path, settings: dict[str, object]) -> None:
        self.path = data_dir / STORE_FILE
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the histogram store {self.path}: {exc}; check data_dir") from None
        self._check_settings(settings)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> HistogramStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_settings(self, settings: dict[str, object]) -> None:
        configured = json.dumps(settings, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        if row is None:
            with self._transaction():
                self._db.execute("INSERT INTO meta VALUES ('settings', ?)", (configured,))
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        stored = json.loads(row[0])
        differences = [
            f"{key}: stored {stored.get(key)!r}, configured {value!r}"
            for key, value in settings.items()
            if stored.get(key) != value
        ]
        if differences:
            raise StateError(
                f"the histograms in {self.path} were built with other settings ({'; '.join(differences)}); "
                "restore the old settings, or point data_dir at an empty folder to rebuild from Elasticsearch"
            )

    # Reading

    def checkpoint(self) -> Checkpoint | None:
        row = self._db.execute("SELECT position, documents FROM checkpoint WHERE id = 1").fetchone()
        return None if row is None else Checkpoint(row[0], row[1])

    def miner_state(self) -> bytes | None:
        row = self._db.execute("SELECT state FROM miner_state WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def masked_templates(self) -> Iterator[tuple[str, int]]:
        yield from self._db.execute("SELECT masked, template_id FROM masked_templates")

    def event_ids(self) -> dict[tuple[str, int], int]:
        return {(host, tid): eid for eid, host, tid in self._db.execute("SELECT event_id, host, template_id FROM events")}

    def events(self) -> list[Event]:
        rows = self._db.execute(
            "SELECT e.event_id, e.host, e.template_id, COALESCE(t.template, ''), e.example, e.first_day "
            "FROM events e LEFT JOIN templates t USING (template_id) ORDER BY e.event_id"
        )
        return [Event(*row) for row in rows]

    def day_example(self, event_id: int, day: str) -> str | None:
        """Return the first message of ``event_id`` on ``day``, or None when the day has none."""
        row = self._db.execute(
            "SELECT example FROM day_examples WHERE event_id = ? AND day = ?", (event_id, day)
        ).fetchone()
        return None if row is None else str(row[0])

    def skipped(self) -> Counter[str]:
        return Counter(dict(self._db.execute("SELECT reason, count FROM skipped")))

    def template_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM templates").fetchone()[0])

    def day_range(self) -> tuple[str, str] | None:
        """Return the first and last ISO day with any message, or None when the store is empty."""
        row = self._db.execute("SELECT MIN(day), MAX(day) FROM minute_counts").fetchone()
        return None if row[0] is None else (row[0], row[1])

    def total_count(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(count), 0) FROM minute_counts").fetchone()[0])

    def histograms(self, first_day: date | None = None, last_day: date | None = None) -> Iterator[tuple[int, str, np.ndarray]]:
        """Yield (event id, ISO day, 1,440 counts) for every event-day with a message, ordered by event and day."""
        query = "SELECT event_id, day, minute, count FROM minute_counts WHERE day >= ? AND day <= ? ORDER BY event_id, day"
        low = first_day.isoformat() if first_day else "0000-00-00"
        high = last_day.isoformat() if last_day else "9999-99-99"
        current: tuple[int, str] | None = None
        row_counts = np.zeros(MINUTES_PER_DAY, dtype=np.int64)
        for event_id, day, minute, count in self._db.execute(query, (low, high)):
            if current != (event_id, day):
                if current is not None:
                    yield current[0], current[1], row_counts
                    row_counts = np.zeros(MINUTES_PER_DAY, dtype=np.int64)
                current = (event_id, day)
            row_counts[minute] = count
        if current is not None:
            yield current[0], current[1], row_counts

    # Writing

    def commit(self, changes: PendingChanges) -> None:
        """Write ``changes`` in one transaction: all of them are stored, or none."""
        now = datetime.now(timezone.utc).isoformat()
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO minute_counts VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (event_id, day, minute) DO UPDATE SET count = count + excluded.count",
                    ((eid, day, minute, n) for (eid, day, minute), n in changes.counts.items()),
                )
                self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", changes.new_events)
                self._db.executemany(
                    "INSERT OR IGNORE INTO day_examples VALUES (?, ?, ?)",
                    ((eid, day, text) for (eid, day), text in changes.day_examples.items()),
                )
                self._db.executemany(
                    "INSERT INTO templates VALUES (?, ?, ?) "
                    "ON CONFLICT (template_id) DO UPDATE SET template = excluded.template, updated_at = excluded.updated_at",
                    ((tid, text, now) for tid, text in changes.changed_templates.items()),
                )
                self._db.executemany("INSERT OR IGNORE INTO masked_templates VALUES (?, ?)", changes.new_masked.items())
                self._db.execute("INSERT OR REPLACE INTO miner_state VALUES (1, ?)", (changes.miner_state,))
                self._db.execute(
                    "INSERT OR REPLACE INTO checkpoint VALUES (1, ?, ?, ?)",
                    (changes.checkpoint.position, changes.checkpoint.documents, now),
                )
                self._db.executemany(
                    "INSERT INTO skipped VALUES (?, ?) ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
                    changes.skipped.items(),
                )
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the histogram store {self.path}: {exc}; check free space in data_dir") from None

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def truncate_example(message: str) -> str:
    return message if len(message) <= EXAMPLE_MAX_CHARS else message[:EXAMPLE_MAX_CHARS] + "..."


def export_npz(store: HistogramStore, out: Path, first_day: date | None = None, last_day: date | None = None) -> int:
    """Write every event-day with a message to ``out`` and return the number of rows.

    Arrays: ``counts`` (rows x 1440, int64), and per row ``host``, ``template``, ``template_id``,
    ``day`` (ISO date). The file loads with ``numpy.load(out)`` without pickle.
    """
    events = {event.event_id: event for event in store.events()}
    rows: list[np.ndarray] = []
    hosts: list[str] = []
    templates: list[str] = []
    template_ids: list[int] = []
    days: list[str] = []
    for event_id, day, counts in store.histograms(first_day, last_day):
        event = events[event_id]
        rows.append(counts)
        hosts.append(event.host)
        templates.append(event.template)
        template_ids.append(event.template_id)
        days.append(day)
    matrix = np.vstack(rows) if rows else np.zeros((0, MINUTES_PER_DAY), dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        counts=matrix,
        host=np.array(hosts, dtype=str),
        template=np.array(templates, dtype=str),
        template_id=np.array(template_ids, dtype=np.int64),
        day=np.array(days, dtype=str),
    )
    return len(rows)
