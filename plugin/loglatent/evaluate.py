"""Detectors compared on a labelled corpus: the numbers behind ``loglatent evaluate``.

Each method scores a generated corpus (``loglatent.corpus``) with the same code the worker runs.
The per-event DBSCAN rule on each day's trailing window (``jobs.judge_scores``) judges the CVAE
ensemble's KL values and the PCA reconstruction errors. Kleinberg's automaton flags bursty days
(``burst.bursty_days``). A day counts only when it has the ``min_cluster_days``
days of history that a verdict needs, for every method alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loglatent.burst import bursty_days
from loglatent.config import DetectionConfig, ModelConfig
from loglatent.corpus import BURST_KINDS, CLASSES, LabelledCorpus, generate
from loglatent.model import TrainingSet, train_ensemble
from loglatent.pca import fit_pca, reconstruction_error
from loglatent.stacked import ensemble_kl

log = logging.getLogger(__name__)

METHODS = ("cvae", "pca", "burst")


@dataclass(frozen=True)
class CorpusSize:
    """The shape of the generated corpus."""

    events: int = 120
    devices: int = 24
    days: int = 456


@dataclass
class Tally:
    """True positives, false positives and false negatives of one method on some event-days."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @staticmethod
    def of(flags: np.ndarray, labels: np.ndarray) -> Tally:
        return Tally(int((flags & labels).sum()), int((flags & ~labels).sum()), int((~flags & labels).sum()))

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"detected": self.tp + self.fp, "anomalies": self.tp + self.fn, "tp": self.tp, "fp": self.fp,
                "fn": self.fn, "precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass
class MethodRun:
    """One method's verdicts on one corpus: ``flags`` and the mean ``scores`` are (events x days)."""

    method: str
    flags: np.ndarray
    scores: np.ndarray | None
    seconds: float


@dataclass
class SeedResult:
    """Every method's run on the corpus drawn with ``seed``."""

    seed: int
    corpus: LabelledCorpus
    first_judged: int
    runs: dict[str, MethodRun] = field(default_factory=dict)
    training_seconds: float = 0.0


def run_seed(
    seed: int, size: CorpusSize, methods: list[str], model: ModelConfig, detection: DetectionConfig
) -> SeedResult:
    """Generate the corpus for ``seed`` and run ``methods`` on it."""
    from loglatent.jobs import judge_scores

    corpus = generate(size.events, size.devices, size.days, seed)
    result = SeedResult(seed, corpus, first_judged=detection.min_cluster_days - 1)
    training_set, row_of = _distinct_rows(corpus.counts)
    positions = np.arange(size.days)

    if "cvae" in methods:
        started = time.monotonic()
        vocabulary = [(host, index) for index, host in enumerate(corpus.hosts)]
        days = corpus.days
        ensemble = train_ensemble(training_set, vocabulary, days[0], days[-1], model)
        result.training_seconds = time.monotonic() - started
        kl = ensemble_kl(ensemble.members, training_set.counts, training_set.events)[:, row_of]
        judgement = judge_scores(kl, positions, detection)
        result.runs["cvae"] = MethodRun("cvae", judgement.anomalous.T, kl.mean(axis=0), time.monotonic() - started)
        log.info("Seed %d: CVAE trained and judged in %.1f s", seed, time.monotonic() - started)
    if "pca" in methods:
        started = time.monotonic()
        pca = fit_pca(training_set.counts, training_set.weights, detection.pca_coverage)
        errors = reconstruction_error(pca, training_set.counts)[row_of][None, :, :]
        judgement = judge_scores(errors, positions, detection)
        result.runs["pca"] = MethodRun("pca", judgement.anomalous.T, errors[0], time.monotonic() - started)
    if "burst" in methods:
        started = time.monotonic()
        flags = np.stack([bursty_days(counts) for counts in corpus.counts])
        flags[:, :result.first_judged] = False
        result.runs["burst"] = MethodRun("burst", flags, None, time.monotonic() - started)
    return result


def _distinct_rows(counts: np.ndarray) -> tuple[TrainingSet, np.ndarray]:
    """Return each event's distinct days as a weighted training set, and the (events x days) row index."""
    events, days, _ = counts.shape
    distinct: dict[tuple[int, bytes], int] = {}
    first_rows: list[int] = []
    row_of = np.empty((events, days), dtype=np.int64)
    flat = counts.reshape(events * days, -1)
    for index in range(events * days):
        key = (index // days, flat[index].tobytes())
        row = distinct.setdefault(key, len(first_rows))
        if row == len(first_rows):
            first_rows.append(index)
        row_of.flat[index] = row
    weights = np.bincount(row_of.ravel(), minlength=len(first_rows)).astype(np.float32)
    rows = np.asarray(first_rows)
    return TrainingSet(flat[rows], rows // days, weights), row_of


def summarise(results: list[SeedResult], methods: list[str]) -> dict[str, Any]:
    """Return the table as plain data: per method, the mean over seeds and the tallies per seed."""
    summary: dict[str, Any] = {}
    for method in methods:
        per_seed = []
        for result in results:
            per_seed.append(_seed_tallies(result, method))
        overall = [entry["overall"] for entry in per_seed]
        summary[method] = {
            "precision": _mean(overall, "precision"),
            "recall": _mean(overall, "recall"),
            "f1": _mean(overall, "f1"),
            "bursts_covered": _mean([entry["bursts"] for entry in per_seed], "recall"),
            "data_points": per_seed[0]["data_points"],
            "anomalies": _mean(overall, "anomalies"),
            "detected": _mean(overall, "detected"),
            "by_class": {name: {key: _mean([entry["by_class"][name] for entry in per_seed], key)
                                for key in ("precision", "recall", "f1", "detected", "anomalies")}
                         for name in CLASSES if name in per_seed[0]["by_class"]},
            "recall_by_kind": {kind: _mean([entry["by_kind"][kind] for entry in per_seed if kind in entry["by_kind"]],
                                           "recall")
                               for kind in sorted({kind for entry in per_seed for kind in entry["by_kind"]})},
            "seconds": float(np.mean([result.runs[method].seconds for result in results])),
            "seeds": {str(result.seed): entry["overall"] for result, entry in zip(results, per_seed)},
        }
        if method == "cvae":
            summary[method]["training_seconds"] = float(np.mean([result.training_seconds for result in results]))
    return summary


def _seed_tallies(result: SeedResult, method: str) -> dict[str, Any]:
    corpus = result.corpus
    judged = slice(result.first_judged, None)
    flags = result.runs[method].flags[:, judged]
    labels = corpus.labels[:, judged]
    kinds = corpus.kind_labels()[:, judged]
    classes = np.asarray(corpus.classes)
    bursts = np.isin(kinds, list(BURST_KINDS))
    return {
        "data_points": int(labels.size),
        "overall": Tally.of(flags, labels).as_dict(),
        "bursts": Tally.of(flags & bursts, bursts).as_dict(),
        "by_class": {name: Tally.of(flags[classes == name], labels[classes == name]).as_dict()
                     for name in CLASSES if (classes == name).any()},
        "by_kind": {str(kind): Tally.of(flags & (kinds == kind), kinds == kind).as_dict()
                    for kind in set(kinds[labels].tolist())},
    }


def _mean(entries: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([entry[key] for entry in entries])) if entries else 0.0


def format_table(summary: dict[str, Any], seeds: list[int]) -> str:
    """Return the printed tables: methods overall, then per behaviour class, then recall per anomaly kind."""
    methods = list(summary)
    corpora = "1 corpus (seed" if len(seeds) == 1 else f"{len(seeds)} corpora (seeds"
    lines = [f"Mean over {corpora} {', '.join(map(str, seeds))}); "
             f"{next(iter(summary.values()))['data_points']} judged data points each.", ""]
    lines.append(f"{'method':8} {'data points':>11} {'anomalies':>9} {'detected':>9} {'precision':>9} {'recall':>7} "
                 f"{'F1':>6} {'bursts covered':>14}")
    for method in methods:
        entry = summary[method]
        lines.append(f"{method:8} {entry['data_points']:11d} {entry['anomalies']:9.1f} {entry['detected']:9.1f} "
                     f"{entry['precision']:9.3f} {entry['recall']:7.3f} {entry['f1']:6.3f} {entry['bursts_covered']:14.3f}")

    lines += ["", "By behaviour class (precision / recall / F1):"]
    classes = [name for name in CLASSES if name in summary[methods[0]]["by_class"]]
    lines.append(f"{'class':8} " + " ".join(f"{method:>20}" for method in methods))
    for name in classes:
        cells = []
        for method in methods:
            entry = summary[method]["by_class"][name]
            cells.append(f"{entry['precision']:.2f} / {entry['recall']:.2f} / {entry['f1']:.2f}".rjust(20))
        lines.append(f"{name:8} " + " ".join(cells))

    lines += ["", "Recall by anomaly kind:"]
    kinds = sorted({kind for method in methods for kind in summary[method]["recall_by_kind"]})
    lines.append(f"{'kind':17} " + " ".join(f"{method:>7}" for method in methods))
    for kind in kinds:
        lines.append(f"{kind:17} " + " ".join(f"{summary[method]['recall_by_kind'].get(kind, 0.0):7.3f}"
                                               for method in methods))
    return "\n".join(lines)


def plot_events(result: SeedResult, folder: Path, events: list[int] | None = None) -> list[Path]:
    """Draw each chosen event's daily score per method with the detected and labelled days marked.

    Without ``events``, draws the first event of each behaviour class that has a labelled anomaly.
    Returns the PNG files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    corpus = result.corpus
    if events is None:
        events = []
        for name in CLASSES:
            candidates = [index for index, kind in enumerate(corpus.classes)
                          if kind == name and corpus.labels[index].any()]
            events += candidates[:1]
    for event in events:
        if not 0 <= event < len(corpus.classes):
            raise ValueError(f"event {event} is not in the corpus; it has events 0 to {len(corpus.classes) - 1}")

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    day_numbers = np.arange(corpus.labels.shape[1])
    for event in events:
        runs = list(result.runs.values())
        figure, axes = pyplot.subplots(len(runs), 1, figsize=(11, 2.4 * len(runs)), sharex=True, squeeze=False)
        labelled = np.flatnonzero(corpus.labels[event])
        for axis, run in zip(axes[:, 0], runs):
            detected = np.flatnonzero(run.flags[event])
            values = run.scores[event] if run.scores is not None else corpus.counts[event].sum(axis=1)
            axis.plot(day_numbers, values, color="#4a6fa5", linewidth=0.8)
            axis.scatter(labelled, values[labelled], s=90, facecolors="none", edgecolors="#2a9d3a",
                         linewidths=1.5, label="labelled anomaly")
            axis.scatter(detected, values[detected], s=22, color="#d1342f", zorder=3, label="detected")
            axis.set_ylabel({"cvae": "KL (nats)", "pca": "PCA error"}.get(run.method, "messages"))
            axis.set_title(f"{run.method}: {len(detected)} detected", fontsize=9, loc="left")
            if run.method == "cvae" and values.min() > 0:
                axis.set_yscale("log")
        axes[0, 0].legend(loc="upper right", fontsize=8)
        axes[-1, 0].set_xlabel("day")
        figure.suptitle(f"event {event}: {corpus.hosts[event]}, class {corpus.classes[event]}, seed {result.seed}")
        figure.tight_layout()
        path = folder / f"seed{result.seed}-event{event:03d}-{corpus.classes[event]}.png"
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        written.append(path)
    return written
