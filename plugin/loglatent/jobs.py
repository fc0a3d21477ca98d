"""The worker's jobs: train the ensemble, detect anomalous event-days, and one full run."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time as clock_time, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from loglatent.config import Config, DetectionConfig
from loglatent.burst import bursty_days
from loglatent.datapoints import DataPoints, collect, shift_day
from loglatent.detect import choose_eps, cluster_centre, log_scale, trailing_noise
from loglatent.errors import StateError
from loglatent.histograms import Event, HistogramStore
from loglatent.ingest import IngestSummary, ingest, open_store
from loglatent.model import Ensemble, load_ensemble, load_metadata, save_ensemble, train_ensemble
from loglatent.pca import fit_pca, from_arrays, reconstruction_error, to_arrays
from loglatent.state import StateStore
from loglatent.sink import SCORES_MAPPING, WriteSummary, anomaly_id, install_template, replace_days
from loglatent.stacked import ensemble_kl

log = logging.getLogger(__name__)

ACTIVE_FILE = "ACTIVE"


# Model versions on disk


def models_dir(config: Config) -> Path:
    return config.data_dir / "models"


def model_versions(config: Config) -> list[str]:
    """Return the saved model versions, oldest first."""
    folder = models_dir(config)
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def active_version(config: Config) -> str | None:
    marker = models_dir(config) / ACTIVE_FILE
    if not marker.exists():
        return None
    return marker.read_text().strip() or None


def activate(config: Config, version: str) -> None:
    """Make ``version`` the model that detect uses."""
    if version not in model_versions(config):
        raise StateError(f"model version {version!r} not found in {models_dir(config)}; "
                         f"saved versions: {', '.join(model_versions(config)) or 'none'}")
    marker = models_dir(config) / ACTIVE_FILE
    staging = marker.with_suffix(".partial")
    staging.write_text(version + "\n")
    os.replace(staging, marker)


def load_active(config: Config) -> Ensemble:
    version = active_version(config)
    if version is None:
        raise StateError(f"no trained model in {models_dir(config)}; run 'loglatent --config FILE train' first")
    return load_ensemble(models_dir(config) / version)


def _prune(config: Config, keep: int) -> None:
    active = active_version(config)
    versions = model_versions(config)
    for version in versions[:-keep]:
        if version != active:
            shutil.rmtree(models_dir(config) / version, ignore_errors=True)


# Training


@dataclass
class TrainSummary:
    """Outcome of one training: the version, its window and its size."""

    version: str
    first_day: str
    last_day: str
    events: int
    data_points: int
    distinct_data_points: int
    final_loss: list[float]
    seconds: float


def train(config: Config, last_day: str | None = None) -> TrainSummary:
    """Train an ensemble on the ``model.train_days`` days up to ``last_day`` and make it active.

    ``last_day`` defaults to, and is capped at, the last day with data. Every event seen up to
    ``last_day`` joins the vocabulary, with its silent days in the window as data points.
    """
    started = time.monotonic()
    with open_store(config) as store:
        span = _require_data(store)
        last = min(last_day, span[1]) if last_day else span[1]
        first = max(span[0], shift_day(last, -(config.model.train_days - 1)))
        if first > last:
            raise StateError(f"no histograms on or before {last}; the first day with data is {span[0]}")
        events = [event for event in store.events() if event.first_day <= last]
        points = collect(store, events, first, last)

    vocabulary = [(event.host, event.template_id) for event in events]
    training_set = points.training_set(np.arange(len(events)))
    ensemble = train_ensemble(training_set, vocabulary, first, last, config.model)
    if "pca" in config.detection.methods:
        ensemble.extras.update(to_arrays(fit_pca(training_set.counts, training_set.weights, config.detection.pca_coverage)))
    save_ensemble(ensemble, models_dir(config))
    activate(config, ensemble.version)
    _prune(config, config.model.keep_versions)

    summary = TrainSummary(
        version=ensemble.version,
        first_day=first,
        last_day=last,
        events=len(events),
        data_points=training_set.data_points,
        distinct_data_points=len(training_set.counts),
        final_loss=ensemble.metadata["final_loss"],
        seconds=time.monotonic() - started,
    )
    log.info(
        "Trained model %s on %s to %s: %d events, %d data points (%d distinct), %d members in %.1f s",
        summary.version, first, last, summary.events, summary.data_points, summary.distinct_data_points,
        ensemble.size, summary.seconds,
    )
    return summary


def _require_data(store: HistogramStore) -> tuple[str, str]:
    span = store.day_range()
    if span is None:
        raise StateError(f"no histograms in {store.path}; run 'loglatent --config FILE ingest' first")
    return span


# Detection


@dataclass
class DetectSummary:
    """Outcome of one detection run: days scored, anomalies found and the write."""

    first_day: str
    last_day: str
    model_version: str
    run_id: str
    days_scored: list[str] = field(default_factory=list)
    days_without_history: list[str] = field(default_factory=list)
    last_day_with_data: str = ""
    anomalies: Counter[str] = field(default_factory=Counter)
    documents: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    write: WriteSummary = field(default_factory=WriteSummary)
    scores_write: WriteSummary = field(default_factory=WriteSummary)
    seconds: float = 0.0


def detect(client: Elasticsearch, config: Config, first_day: str, last_day: str,
           warn_after_data: bool = True) -> DetectSummary:
    """Score every event on each day from ``first_day`` to ``last_day`` and write the anomalies.

    Each day is judged against its event's trailing ``detection.history_days`` days, scored by the
    active model, so scoring a day again with the same model gives the same verdict. A day with
    fewer than ``detection.min_cluster_days`` days of history gets no verdict.
    """
    started = time.monotonic()
    ensemble = load_active(config)
    summary = DetectSummary(first_day, last_day, ensemble.version, uuid.uuid4().hex)
    history = config.detection.history_days

    with open_store(config) as store:
        span = _require_data(store)
        summary.last_day_with_data = span[1]
        if last_day > span[1] and warn_after_data:
            log.warning(
                "No messages were ingested after %s, so the days up to %s are scored as silent days; "
                "if logs did arrive, run ingest first or check source.index", span[1], last_day)
        history_first = max(span[0], shift_day(first_day, -(history - 1)))
        known = ensemble.event_index()
        events = store.events()
        model_events = [event for event in events if (event.host, event.template_id) in known]
        new_events = [event for event in events if (event.host, event.template_id) not in known
                      and first_day <= event.first_day <= last_day]
        points = collect(store, model_events, min(history_first, first_day), last_day)
        new_points = collect(store, new_events, first_day, last_day) if new_events else None

    context = _RunContext(config, ensemble, summary)
    if model_events:
        model_ids = np.array([known[(e.host, e.template_id)] for e in model_events])
        for method in config.detection.methods:
            if method == "burst":
                _judge_bursts(context, points)
            else:
                _judge_days(context, points, _scores(ensemble, method, points, model_ids), method)
    if new_points is not None:
        _report_new_events(context, new_points, config.detection.methods[0])

    with open_store(config) as store:
        _use_day_examples(store, summary.documents)

    install_template(client, config.output.index)
    scored_days = sorted(set(summary.days_scored) | {e.first_day for e in new_events})
    summary.write = replace_days(
        client, config.output.index, summary.documents, scored_days, list(config.detection.methods)
    )
    if config.output.write_scores and summary.scores:
        install_template(client, config.output.scores, SCORES_MAPPING)
        summary.scores_write = replace_days(client, config.output.scores, summary.scores, [], [], kind="score")
    if not summary.write.failed:
        StateStore(client, config.schedule.state_index).mark_detected(scored_days, ensemble.version)
    summary.seconds = time.monotonic() - started
    log.info(
        "Detect wrote %d anomaly documents (%s) and %d score documents for %s to %s with model %s in %.1f s; "
        "%d stale deleted, %d failed, %d days without enough history",
        summary.write.written,
        ", ".join(f"{reason}: {count}" for reason, count in sorted(summary.anomalies.items())) or "none",
        summary.scores_write.written, first_day, last_day, ensemble.version, summary.seconds,
        summary.write.deleted, sum(summary.write.failed.values()) + sum(summary.scores_write.failed.values()),
        len(summary.days_without_history),
    )
    return summary


@dataclass
class _RunContext:
    config: Config
    ensemble: Ensemble
    summary: DetectSummary
    detected_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def _use_day_examples(store: HistogramStore, documents: list[dict[str, Any]]) -> None:
    """Replace each document's example with the event's first message of that day, where stored."""
    for document in documents:
        example = store.day_example(document["event_id"], document["_source"]["day"])
        if example is not None:
            document["_source"]["example"] = example


def _scores(ensemble: Ensemble, method: str, points: DataPoints, model_ids: np.ndarray) -> np.ndarray:
    """Return the (members x events x days) scores of ``method``: one member for PCA."""
    if method == "pca":
        pca = from_arrays(ensemble.extras)
        if pca is None:
            raise StateError(f"model {ensemble.version} has no PCA fit; run 'loglatent train' with 'pca' in "
                             "detection.methods")
        return reconstruction_error(pca, points.counts)[None, :][:, points.row_of]
    return ensemble_kl(ensemble.members, points.counts, model_ids[points.row_events])[:, points.row_of]


@dataclass(frozen=True)
class Judgement:
    """Verdicts on some days of (members x events x days) scores.

    ``anomalous`` and ``votes`` are (positions x events). ``eps`` is (positions x members x
    events), NaN where a day has too little history for a verdict, and applies to ``scale``: the
    scores on the scale DBSCAN compared them on.
    """

    anomalous: np.ndarray
    votes: np.ndarray
    eps: np.ndarray
    scale: np.ndarray
    offset: float | None

    def to_score(self, value: float) -> float:
        """Return the score that ``value`` on the DBSCAN scale stands for."""
        return value if self.offset is None else float(np.exp(value) - self.offset)


def judge_scores(scores: np.ndarray, positions: np.ndarray, detection: DetectionConfig) -> Judgement:
    """Judge the days at ``positions`` of (members x events x days) ``scores`` by DBSCAN and the vote.

    A fixed ``detection.eps`` applies to the scores themselves, as in Otomo et al. Otherwise eps
    follows from each window by the rule in ``loglatent.detect``.
    """
    members, events, days = scores.shape
    fixed = detection.eps

    def choose(windows: np.ndarray) -> np.ndarray:
        if fixed is not None:
            return np.full(len(windows), fixed)
        return choose_eps(windows, detection.spread_factor, detection.min_eps, ordered=True)

    if fixed is not None:
        scale, offset = scores, None
    else:
        scale, offset = log_scale(scores, detection.score_offset), detection.score_offset
    noise, eps = trailing_noise(
        scale.reshape(members * events, days), positions, detection.min_cluster_days, detection.history_days, choose)
    flags = noise.reshape(len(positions), members, events)
    votes = flags.sum(axis=1)
    return Judgement(votes * 2 > members, votes, eps.reshape(len(positions), members, events), scale, offset)


def _judge_days(context: _RunContext, points: DataPoints, scores: np.ndarray, method: str) -> None:
    """Flag the event-days that a majority of the members leave as DBSCAN noise.

    ``scores`` is (members x events x days): KL values for the CVAE, reconstruction errors for PCA.
    """
    config = context.config.detection
    member_count = scores.shape[0]
    totals = points.day_totals()
    min_samples = config.min_cluster_days
    positions = np.array([position for position, day in enumerate(points.days) if day >= context.summary.first_day])
    judgement = judge_scores(scores, positions, config)

    for index, position in enumerate(int(p) for p in positions):
        day = points.days[position]
        if position + 1 < min_samples:
            context.summary.days_without_history.append(day)
            continue
        if day not in context.summary.days_scored:
            context.summary.days_scored.append(day)
        _add_scores(context, points, scores, judgement, index, position, method)
        start = max(0, position - config.history_days + 1)
        for event_position in (int(e) for e in np.flatnonzero(judgement.anomalous[index])):
            member_windows = judgement.scale[:, event_position, start:position + 1]
            typical_score = judgement.to_score(float(np.mean([
                cluster_centre(member_windows[m], float(judgement.eps[index, m, event_position]), min_samples)
                for m in range(member_count)
            ])))
            history_totals = totals[event_position, start:position]
            context.summary.documents.append(_document(
                context,
                points.events[event_position],
                day,
                method=method,
                reason="behaviour",
                score=float(scores[:, event_position, position].mean()),
                typical_score=float(typical_score),
                votes=int(judgement.votes[index, event_position]),
                members=member_count,
                count=int(totals[event_position, position]),
                typical_count=float(np.median(history_totals)) if len(history_totals) else 0.0,
                hourly=points.hourly(event_position, position),
                typical_hourly=points.typical_hourly(event_position, start, position),
            ))
            context.summary.anomalies[f"{method} behaviour"] += 1


def _add_scores(context: _RunContext, points: DataPoints, scores: np.ndarray, judgement: Judgement, index: int,
                position: int, method: str) -> None:
    """Add one score document per event for the day at ``position``: its mean score and the verdict."""
    if not context.config.output.write_scores:
        return
    day = points.days[position]
    timestamp = datetime.combine(date.fromisoformat(day), clock_time(0), tzinfo=context.config.source.zone).isoformat()
    totals = points.counts[points.row_of[:, position]].sum(axis=1)
    means = scores[:, :, position].mean(axis=0)
    for event_position, event in enumerate(points.events):
        score = float(means[event_position])
        context.summary.scores.append({
            "_id": anomaly_id(method, day, event.host, event.template_id),
            "_source": {
                "@timestamp": timestamp,
                "day": day,
                "host": event.host,
                "template_id": event.template_id,
                "event": f"{event.host}/{event.template_id}",
                "method": method,
                "score": score,
                "kl": score if method == "cvae" else None,
                "anomalous": bool(judgement.anomalous[index, event_position]),
                "votes": int(judgement.votes[index, event_position]),
                "ensemble_size": int(scores.shape[0]),
                "count": int(totals[event_position]),
                "model_version": context.ensemble.version,
                "run_id": context.summary.run_id,
            },
        })


def _judge_bursts(context: _RunContext, points: DataPoints) -> None:
    """Flag the event-days that Kleinberg's automaton puts in a burst state (level 1 or more).

    The automaton runs once per event over all days read for this run, the history before the
    first scored day included. Unlike the CVAE's verdict, a day's burst state can change when
    the run covers other days around it.
    """
    totals = points.day_totals()
    targets = [position for position, day in enumerate(points.days) if day >= context.summary.first_day]
    for position in targets:
        if points.days[position] not in context.summary.days_scored:
            context.summary.days_scored.append(points.days[position])
    for event_position, event in enumerate(points.events):
        minute_counts = points.counts[points.row_of[event_position]]
        flags = bursty_days(minute_counts)
        for position in targets:
            if not flags[position] or totals[event_position, position] == 0:
                continue
            start = max(0, position - context.config.detection.history_days + 1)
            history_totals = totals[event_position, start:position]
            context.summary.documents.append(_document(
                context,
                event,
                points.days[position],
                method="burst",
                reason="burst",
                score=None,
                typical_score=None,
                votes=1,
                members=1,
                count=int(totals[event_position, position]),
                typical_count=float(np.median(history_totals)) if len(history_totals) else 0.0,
                hourly=points.hourly(event_position, position),
                typical_hourly=points.typical_hourly(event_position, start, position),
            ))
            context.summary.anomalies["burst"] += 1


def _report_new_events(context: _RunContext, points: DataPoints, method: str) -> None:
    totals = points.day_totals()
    day_position = {day: position for position, day in enumerate(points.days)}
    for event_position, event in enumerate(points.events):
        position = day_position[event.first_day]
        context.summary.documents.append(_document(
            context,
            event,
            event.first_day,
            method=method,
            reason="new_event",
            score=None,
            typical_score=None,
            votes=None,
            members=context.ensemble.size if method == "cvae" else 1,
            count=int(totals[event_position, position]),
            typical_count=0.0,
            hourly=points.hourly(event_position, position),
            typical_hourly=[0.0] * 24,
        ))
        context.summary.anomalies["new_event"] += 1


def _document(
    context: _RunContext,
    event: Event,
    day: str,
    method: str,
    reason: str,
    score: float | None,
    typical_score: float | None,
    votes: int | None,
    members: int,
    count: int,
    typical_count: float,
    hourly: list[int],
    typical_hourly: list[float],
) -> dict[str, Any]:
    zone = context.config.source.zone
    is_kl = method == "cvae"
    source = {
        "@timestamp": datetime.combine(date.fromisoformat(day), clock_time(0), tzinfo=zone).isoformat(),
        "day": day,
        "timezone": context.config.source.timezone,
        "host": event.host,
        "template_id": event.template_id,
        "template": event.template,
        "event": f"{event.host}/{event.template_id}",
        "example": event.example,
        "method": method,
        "reason": reason,
        "kl": score if is_kl else None,
        "typical_kl": typical_score if is_kl else None,
        "score": score,
        "typical_score": typical_score,
        "votes": votes,
        "ensemble_size": members,
        # A new event is certain to be new; no vote took place.
        "confidence": 1.0 if votes is None else votes / members,
        "count": count,
        "typical_count": typical_count,
        "hourly_counts": hourly,
        "typical_hourly": typical_hourly,
        "model_version": context.ensemble.version,
        "run_id": context.summary.run_id,
        "detected_at": context.detected_at,
    }
    return {"_id": anomaly_id(method, day, event.host, event.template_id), "_source": source, "event_id": event.event_id}


# One full run


@dataclass
class RunSummary:
    """Outcome of ``run --once``: the ingest, the training if one was due, and the detection."""

    ingest: IngestSummary
    trained: TrainSummary | None
    detect: DetectSummary | None
    day: str
    retrained: TrainSummary | None = None


def last_complete_day(config: Config, now: datetime | None = None) -> str:
    """Return the last local day that ended before ``now`` minus ``ingest.settle_seconds``."""
    moment = (now or datetime.now(timezone.utc)) - timedelta(seconds=config.ingest.settle_seconds)
    return (moment.astimezone(config.source.zone).date() - timedelta(days=1)).isoformat()


def model_is_due(config: Config, now: datetime | None = None) -> bool:
    """Return whether there is no active model or it was trained ``model.retrain_days`` or more ago."""
    version = active_version(config)
    if version is None:
        return True
    trained_at = datetime.fromisoformat(load_metadata(models_dir(config) / version)["trained_at"])
    return (now or datetime.now(timezone.utc)) - trained_at >= timedelta(days=config.model.retrain_days)


def unseen_share(config: Config, last_day: str) -> tuple[int, int]:
    """Return how many events seen up to ``last_day`` the active model has not seen, and how many there are."""
    version = active_version(config)
    with open_store(config) as store:
        events = [(event.host, event.template_id) for event in store.events() if event.first_day <= last_day]
    if version is None:
        return len(events), len(events)
    known = {(str(host), int(template_id)) for host, template_id in load_metadata(models_dir(config) / version)["vocabulary"]}
    return sum(1 for event in events if event not in known), len(events)


def early_retrain_reason(config: Config, last_day: str) -> str | None:
    """Return why the model needs training before its schedule, or None.

    That is when more than ``model.retrain_unseen_share`` of the events seen up to ``last_day``
    are new to the active model: their days get no verdict until it learns them.
    """
    unseen, total = unseen_share(config, last_day)
    if total and unseen / total > config.model.retrain_unseen_share:
        return (f"{unseen} of {total} events ({unseen / total:.0%}) are new to model {active_version(config)}, "
                f"more than model.retrain_unseen_share ({config.model.retrain_unseen_share:.0%})")
    return None


def run_once(client: Elasticsearch, config: Config, now: datetime | None = None) -> RunSummary:
    """Ingest, train when the model is due, and detect the last complete day.

    When the day brought many events the model has not seen, they are reported as new first,
    and the model is trained again afterwards.
    """
    ingested = ingest(client, config)
    day = last_complete_day(config, now)
    trained = train(config, last_day=day) if model_is_due(config, now) else None
    detected = detect(client, config, day, day)
    retrained = None
    reason = early_retrain_reason(config, day)
    if reason is not None:
        log.info("Training a new model before its schedule: %s", reason)
        retrained = train(config, last_day=day)
    return RunSummary(ingested, trained, detected, day, retrained)
