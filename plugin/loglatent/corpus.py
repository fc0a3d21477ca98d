"""A labelled corpus of minute counts shaped like the network logs of Otomo et al. (BIG-DAMA 2018).

The paper's data set has 120 events (host and template pairs) over 456 days. This module draws
such a corpus directly as (events x days x 1,440) minute counts, with a label per event-day, so
that detectors can be compared against known labels without an Elasticsearch node.

Every device runs one event of each behaviour class:

- ``cron``: an hourly job that logs a few lines at a fixed minute; a busy host sometimes delays
  a run into the next minute.
- ``ntp``: a check every 5, 10 or 15 minutes, now and then missing one.
- ``poisson``: messages from a Poisson process that follows working hours, fewer at weekends.
- ``noisy``: a heavy-tailed stream: the daily volume is log-normal and messages come in clumps.
- ``silent``: mostly nothing; a few days a month carry one to three messages.

Anomalies are injected after a warm-up, so that every detector has history to compare with:

- ``burst``: a dense run of messages within minutes;
- ``multi_day_burst``: the same burst on three days in a row;
- ``stop``: a periodic or working-hours stream stops for the rest of the day;
- ``flood``: a periodic stream logs many lines at its usual minutes, or a Poisson stream
  runs at ten times its rate, for hours;
- ``phase_shift``: a periodic stream runs at other minutes for the rest of the day;
- ``huge_burst`` and ``burst_after_huge``: a very large burst and, weeks later, a smaller one
  in the same event, to measure whether one outlier hides the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np

MINUTES = 1440
CLASSES = ("cron", "ntp", "poisson", "noisy", "silent")
KINDS_BY_CLASS = {
    "cron": ("burst", "stop", "flood", "phase_shift"),
    "ntp": ("burst", "stop", "flood", "phase_shift"),
    "poisson": ("burst", "multi_day_burst", "stop", "flood", "huge_burst"),
    "noisy": ("burst", "multi_day_burst", "huge_burst"),
    "silent": ("burst", "multi_day_burst", "huge_burst"),
}
BURST_KINDS = frozenset({"burst", "multi_day_burst", "huge_burst", "burst_after_huge"})
# A burst adds (multiple of the event's typical daily volume, minimum count) messages, and is
# at least 1.5 times as dense as the event's busiest normal minute.
BURST_SIZES = {"burst": (4.0, 30), "multi_day_burst": (4.0, 30), "huge_burst": (40.0, 1000), "burst_after_huge": (3.0, 30)}
START = date(2024, 1, 1)


@dataclass(frozen=True)
class Injection:
    """One labelled anomalous event-day: the event index, the day index and the kind of anomaly."""

    event: int
    day: int
    kind: str


@dataclass
class LabelledCorpus:
    """Minute counts with their labels.

    ``counts`` is (events x days x 1,440) float32. ``labels`` marks the anomalous event-days.
    ``warmup_days`` is the number of leading days that carry no anomaly.
    """

    counts: np.ndarray
    labels: np.ndarray
    classes: list[str]
    hosts: list[str]
    injections: list[Injection] = field(default_factory=list)
    warmup_days: int = 0

    @property
    def days(self) -> list[str]:
        return [(START + timedelta(days=offset)).isoformat() for offset in range(self.counts.shape[1])]

    def kind_labels(self) -> np.ndarray:
        """Return an (events x days) array with each labelled day's kind and '' elsewhere."""
        kinds = np.full(self.labels.shape, "", dtype=object)
        for injection in self.injections:
            kinds[injection.event, injection.day] = injection.kind
        return kinds


def generate(events: int = 120, devices: int = 24, days: int = 456, seed: int = 0) -> LabelledCorpus:
    """Draw a corpus of ``events`` events spread over ``devices`` devices and ``days`` days.

    Event i has class ``CLASSES[i % 5]`` and runs on device ``(i // 5) % devices``. Each event
    gets one or two anomaly episodes after the warm-up of ``days // 6`` days, at least 30 days
    apart. Raises ``ValueError`` for sizes that leave no room for the episodes.
    """
    if events < 1 or devices < 1:
        raise ValueError(f"events and devices must be at least 1, got {events} and {devices}")
    warmup = days // 6
    if days - warmup < 70:
        raise ValueError(f"days must be at least 84 so that anomalies have room after the warm-up, got {days}")
    rng = np.random.default_rng(seed)
    weekdays = np.array([(START + timedelta(days=offset)).weekday() < 5 for offset in range(days)])
    counts = np.zeros((events, days, MINUTES), dtype=np.float32)
    labels = np.zeros((events, days), dtype=bool)
    classes = [CLASSES[index % len(CLASSES)] for index in range(events)]
    hosts = [f"device{(index // len(CLASSES)) % devices + 1:02d}" for index in range(events)]
    injections: list[Injection] = []

    for index, kind in enumerate(classes):
        stream = _STREAMS[kind](rng, days, weekdays)
        counts[index] = stream.normal
        for episode in _episodes(rng, kind, days, warmup):
            for day, anomaly in episode:
                stream.inject(rng, counts[index, day], day, anomaly)
                labels[index, day] = True
                injections.append(Injection(index, day, anomaly))
    return LabelledCorpus(counts, labels, classes, hosts, injections, warmup)


def _episodes(rng: np.random.Generator, kind: str, days: int, warmup: int) -> list[list[tuple[int, str]]]:
    """Choose one or two anomaly episodes for an event: lists of (day, kind)."""
    episodes: list[list[tuple[int, str]]] = []
    used_days: list[int] = []
    for _ in range(int(rng.integers(1, 3))):
        anomaly = str(rng.choice(KINDS_BY_CLASS[kind]))
        length = {"multi_day_burst": 3, "huge_burst": 45}.get(anomaly, 1)
        for _attempt in range(50):
            day = int(rng.integers(warmup, days - length))
            later = day + int(rng.integers(7, 45)) if anomaly == "huge_burst" else day
            if all(abs(candidate - other) >= 30 for candidate in (day, later) for other in used_days):
                break
        else:
            continue
        used_days += [day, later]
        if anomaly == "multi_day_burst":
            episodes.append([(day + offset, anomaly) for offset in range(3)])
        elif anomaly == "huge_burst":
            episodes.append([(day, anomaly), (later, "burst_after_huge")])
        else:
            episodes.append([(day, anomaly)])
    return episodes


class _Stream:
    """One event's normal days and the way anomalies change a day."""

    normal: np.ndarray
    typical_volume: float

    def inject(self, rng: np.random.Generator, day_counts: np.ndarray, day: int, anomaly: str) -> None:
        if anomaly in BURST_KINDS:
            size, floor = BURST_SIZES[anomaly]
            total = int(max(floor, size * self.typical_volume * rng.uniform(0.7, 1.5)))
            _add_burst(rng, day_counts, total, peak=float(self.normal.max()))
        elif anomaly == "stop":
            day_counts[self._stop_minute(rng):] = 0
        else:
            self.inject_periodic(rng, day_counts, day, anomaly)

    def _stop_minute(self, rng: np.random.Generator) -> int:
        return int(rng.integers(8 * 60, 12 * 60))

    def inject_periodic(self, rng: np.random.Generator, day_counts: np.ndarray, day: int, anomaly: str) -> None:
        raise ValueError(f"anomaly {anomaly!r} does not apply to {type(self).__name__}")


class _Periodic(_Stream):
    """A job that logs ``lines`` lines at ``minutes`` every day (cron, NTP)."""

    def __init__(self, rng: np.random.Generator, days: int, minutes: np.ndarray, lines: int, delay: float,
                 miss: float) -> None:
        self.minutes, self.lines = minutes, lines
        self.normal = np.zeros((days, MINUTES), dtype=np.float32)
        for day in range(days):
            runs = minutes[rng.random(len(minutes)) >= miss]
            delayed = (runs + (rng.random(len(runs)) < delay)) % MINUTES
            np.add.at(self.normal[day], delayed, lines)
        self.typical_volume = float(len(minutes) * lines)

    def inject_periodic(self, rng: np.random.Generator, day_counts: np.ndarray, day: int, anomaly: str) -> None:
        start = int(rng.integers(2 * 60, 14 * 60))
        window = (self.minutes >= start) & (self.minutes < start + int(rng.integers(4, 9)) * 60)
        if anomaly == "flood":
            day_counts[self.minutes[window]] = self.lines * int(rng.integers(10, 31))
        elif anomaly == "phase_shift":
            later = self.minutes[self.minutes >= start]
            day_counts[later] = 0
            period = int(np.diff(self.minutes).min()) if len(self.minutes) > 1 else MINUTES
            shift = int(rng.integers(max(2, period // 4), max(3, period // 2 + 1)))
            day_counts[(later + shift) % MINUTES] = self.lines
        else:
            super().inject_periodic(rng, day_counts, day, anomaly)


def _cron(rng: np.random.Generator, days: int, weekdays: np.ndarray) -> _Stream:
    minute = int(rng.integers(0, 60))
    return _Periodic(rng, days, np.arange(minute, MINUTES, 60), lines=int(rng.integers(1, 4)), delay=0.03, miss=0.0)


def _ntp(rng: np.random.Generator, days: int, weekdays: np.ndarray) -> _Stream:
    period = int(rng.choice([5, 5, 10, 15]))
    return _Periodic(rng, days, np.arange(int(rng.integers(0, period)), MINUTES, period), lines=1, delay=0.0,
                     miss=0.003)


class _Poisson(_Stream):
    """Messages at a rate that follows working hours, a third of it at weekends."""

    def __init__(self, rng: np.random.Generator, days: int, weekdays: np.ndarray) -> None:
        hours = np.arange(MINUTES) / 60.0
        shape = 0.15 + np.exp(-0.5 * ((hours - 13.0) / 3.0) ** 2)
        self.profile = shape / shape.sum()
        self.volume = float(np.exp(rng.uniform(np.log(20), np.log(400))))
        scale = np.where(weekdays, 1.0, 0.3)
        self.rates = scale[:, None] * self.volume * self.profile[None, :]
        self.normal = rng.poisson(self.rates).astype(np.float32)
        self.typical_volume = self.volume

    def inject_periodic(self, rng: np.random.Generator, day_counts: np.ndarray, day: int, anomaly: str) -> None:
        if anomaly != "flood":
            super().inject_periodic(rng, day_counts, day, anomaly)
        start = int(rng.integers(6 * 60, 14 * 60))
        end = start + int(rng.integers(4, 9)) * 60
        day_counts[start:end] += rng.poisson(9.0 * self.rates[day, start:end])


class _Noisy(_Stream):
    """A heavy-tailed stream: log-normal daily volume, messages in clumps of a few minutes."""

    def __init__(self, rng: np.random.Generator, days: int, weekdays: np.ndarray) -> None:
        self.typical_volume = float(np.exp(rng.uniform(np.log(10), np.log(200))))
        self.normal = np.zeros((days, MINUTES), dtype=np.float32)
        volumes = self.typical_volume * rng.lognormal(0.0, 0.8, size=days)
        for day in range(days):
            remaining = int(rng.poisson(volumes[day]))
            while remaining > 0:
                clump = min(remaining, int(rng.geometric(1 / 4)))
                start = int(rng.integers(0, MINUTES - 3))
                np.add.at(self.normal[day], start + rng.integers(0, 3, size=clump), 1)
                remaining -= clump


class _Silent(_Stream):
    """Silent days, and one to three messages on about one day in thirty."""

    def __init__(self, rng: np.random.Generator, days: int, weekdays: np.ndarray) -> None:
        self.normal = np.zeros((days, MINUTES), dtype=np.float32)
        for day in np.flatnonzero(rng.random(days) < 1 / 30):
            np.add.at(self.normal[day], rng.integers(0, MINUTES, size=int(rng.integers(1, 4))), 1)
        self.typical_volume = 2.0


def _add_burst(rng: np.random.Generator, day_counts: np.ndarray, total: int, peak: float) -> None:
    """Add a run of 10 to 60 minutes at a random time of day: ``total`` messages, or more.

    The run carries at least 1.5 times ``peak`` (the event's busiest normal minute) per minute on
    average, so that it is denser than anything the event does normally.
    """
    length = int(rng.integers(10, 61))
    start = int(rng.integers(0, MINUTES - length))
    total = max(total, int(np.ceil(1.5 * max(peak, 1.0) * length)))
    np.add.at(day_counts, start + rng.integers(0, length, size=total), 1)


_STREAMS = {
    "cron": _cron,
    "ntp": _ntp,
    "poisson": _Poisson,
    "noisy": _Noisy,
    "silent": _Silent,
}
