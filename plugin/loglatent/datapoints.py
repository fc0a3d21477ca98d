"""Data points for the model: every event's every day in a window, silent days included.

A window of E events and D days has E x D data points, but most are silent days or repeat another
day exactly (a cron job that logs at the same minutes every day). They are stored once:
``counts`` contains the distinct (event, counts) pairs and ``row_of[e, d]`` points at the row of event
e's day d. Training weighs each distinct row by how often it occurs, and scoring computes each
distinct row's KL value once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from loglatent.histograms import MINUTES_PER_DAY, Event, HistogramStore
from loglatent.model import TrainingSet


@dataclass(frozen=True)
class DataPoints:
    """Minute counts of ``events`` over the ISO days ``days``, stored as distinct rows."""

    events: list[Event]
    days: list[str]
    counts: np.ndarray  # (distinct rows x 1,440) float32
    row_events: np.ndarray  # event position (index into ``events``) of each distinct row
    row_of: np.ndarray  # (events x days) index into ``counts``

    def training_set(self, model_index: np.ndarray) -> TrainingSet:
        """Return the distinct rows with weights, conditioned on ``model_index`` (event position to model id)."""
        weights = np.bincount(self.row_of.ravel(), minlength=len(self.counts)).astype(np.float32)
        return TrainingSet(self.counts, model_index[self.row_events], weights)

    def day_totals(self) -> np.ndarray:
        """Return the (events x days) message counts."""
        return self.counts.sum(axis=1)[self.row_of]

    def hourly(self, event_position: int, day_position: int) -> list[int]:
        row = self.counts[self.row_of[event_position, day_position]]
        return [int(value) for value in row.reshape(24, 60).sum(axis=1)]

    def typical_hourly(self, event_position: int, first_position: int, end_position: int) -> list[float]:
        """Return the mean hourly counts of the event over days ``first_position`` to ``end_position`` (excluded)."""
        if end_position <= first_position:
            return [0.0] * 24
        rows = self.counts[self.row_of[event_position, first_position:end_position]]
        hourly = rows.reshape(len(rows), 24, 60).sum(axis=2).mean(axis=0)
        return [round(float(value), 2) for value in hourly]


def day_span(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=offset)).isoformat() for offset in range((end - start).days + 1)]


def shift_day(day: str, days: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()


def collect(store: HistogramStore, events: list[Event], first_day: str, last_day: str) -> DataPoints:
    """Read the counts of ``events`` for every day from ``first_day`` to ``last_day``, both included."""
    days = day_span(first_day, last_day)
    day_position = {day: position for position, day in enumerate(days)}
    event_position = {event.event_id: position for position, event in enumerate(events)}

    rows: list[np.ndarray] = []
    row_events: list[int] = []
    distinct: dict[tuple[int, bytes], int] = {}
    zero = np.zeros(MINUTES_PER_DAY, dtype=np.float32)

    def row_index(position: int, counts: np.ndarray) -> int:
        key = (position, counts.tobytes())
        index = distinct.get(key)
        if index is None:
            index = len(rows)
            distinct[key] = index
            rows.append(counts)
            row_events.append(position)
        return index

    row_of = np.empty((len(events), len(days)), dtype=np.int64)
    for position in range(len(events)):
        row_of[position, :] = row_index(position, zero)
    for event_id, day, counts in store.histograms(date.fromisoformat(first_day), date.fromisoformat(last_day)):
        found = event_position.get(event_id)
        if found is not None:
            row_of[found, day_position[day]] = row_index(found, counts.astype(np.float32))

    return DataPoints(
        events=events,
        days=days,
        counts=np.vstack(rows) if rows else np.zeros((0, MINUTES_PER_DAY), dtype=np.float32),
        row_events=np.asarray(row_events, dtype=np.int64),
        row_of=row_of,
    )
