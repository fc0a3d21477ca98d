"""Compare the CVAE's reconstruction likelihoods (Poisson on counts, Bernoulli on presence).

Generates labelled corpora with ``loglatent.synthetic`` (hourly cron, five-minute NTP, Poisson
logins, a quiet kernel message and a silent disk alarm per host, with a burst, a stopped job and a
waking event injected), builds the minute histograms directly from the generated messages (event
= host and kind), trains the ensemble with each likelihood and runs the product's DBSCAN rule and
vote on every day. Prints, per likelihood, the injected anomalies found (recall), the share of
flagged event-days that are injected anomalies (precision), and the training time.

This is not a test: it prints the numbers behind the default in docs/model.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugin"))

from loglatent.config import DetectionConfig, ModelConfig  # noqa: E402
from loglatent.detect import choose_eps, last_is_noise, vote  # noqa: E402
from loglatent.model import TrainingSet, train_ensemble  # noqa: E402
from loglatent.stacked import ensemble_kl  # noqa: E402
from loglatent.synthetic import generate, kind_of  # noqa: E402


def histograms(corpus) -> tuple[list[tuple[str, str]], np.ndarray, list[str]]:  # type: ignore[no-untyped-def]
    """Return the events, the (events x days x 1440) counts and the ISO days of ``corpus``."""
    first = date.fromisoformat(corpus.first_day)
    days = (date.fromisoformat(corpus.last_day) - first).days + 1
    events: dict[tuple[str, str], int] = {}
    cells: list[tuple[int, int, int]] = []
    for document in corpus.documents:
        moment = datetime.fromisoformat(document["@timestamp"])
        key = (document["host"]["name"], kind_of(document["message"]))
        index = events.setdefault(key, len(events))
        cells.append((index, (moment.date() - first).days, moment.hour * 60 + moment.minute))
    counts = np.zeros((len(events), days, 1440), dtype=np.float32)
    for index, day, minute in cells:
        counts[index, day, minute] += 1
    names = [(first.fromordinal(first.toordinal() + offset)).isoformat() for offset in range(days)]
    return list(events), counts, names


def evaluate(likelihood: str, seeds: list[int], epochs: int, members: int) -> dict[str, float]:
    detection = DetectionConfig()
    found = flagged = injected = true_flags = 0
    seconds = 0.0
    for seed in seeds:
        corpus = generate(seed=seed, days=90, hosts=4)
        events, counts, days = histograms(corpus)
        flat = counts.reshape(-1, 1440)
        event_of_row = np.repeat(np.arange(len(events)), len(days))
        data = TrainingSet(flat, event_of_row, np.ones(len(flat), dtype=np.float32))
        settings = ModelConfig(likelihood=likelihood, epochs=epochs, ensemble_size=members, seed=seed * 100)
        started = time.monotonic()
        ensemble = train_ensemble(data, [(host, index) for index, (host, _) in enumerate(events)], days[0], days[-1], settings)
        seconds += time.monotonic() - started
        kl = ensemble_kl(ensemble.members, flat, event_of_row)
        kl = kl.reshape(members, len(events), len(days))

        labels = {(a.host, a.kind, a.day) for a in corpus.anomalies}
        detected = set()
        for position in range(detection.min_cluster_days - 1, len(days)):
            start = max(0, position - detection.history_days + 1)
            windows = kl[:, :, start:position + 1].reshape(-1, position - start + 1)
            eps = choose_eps(windows, detection.spread_factor, detection.min_eps)
            flags = last_is_noise(windows, eps, detection.min_cluster_days).reshape(members, -1).T
            anomalous, _ = vote(flags)
            for index in np.flatnonzero(anomalous):
                detected.add((events[index][0], events[index][1], days[position]))
        injected += len(labels)
        found += len(labels & detected)
        flagged += len(detected)
        true_flags += len(detected & labels)
    return {
        "recall": found / injected,
        "precision": true_flags / flagged if flagged else 0.0,
        "flagged": flagged,
        "injected": injected,
        "train_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--members", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = list(range(1, args.seeds + 1))
    print(f"{args.seeds} corpora of 4 hosts x 5 events x 90 days; {args.members} members x {args.epochs} epochs")
    print(f"{'likelihood':<10} {'recall':>7} {'precision':>9} {'flagged':>8} {'injected':>8} {'train s':>8}")
    for likelihood in ("poisson", "bernoulli"):
        result = evaluate(likelihood, seeds, args.epochs, args.members)
        print(f"{likelihood:<10} {result['recall']:>7.2f} {result['precision']:>9.2f} {result['flagged']:>8} "
              f"{result['injected']:>8} {result['train_seconds']:>8.0f}")


if __name__ == "__main__":
    main()
