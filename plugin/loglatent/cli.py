"""The ``loglatent`` command line. Errors become one message and an exit code here, and only here."""

from __future__ import annotations

import fnmatch
import functools
import logging
import math
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, time as clock_time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from loglatent import __version__
from loglatent.config import Config, load_config
from loglatent.errors import InputError, LoglatentError

log = logging.getLogger("loglatent")


class _Progress:
    """A progress bar on a terminal, a log line every 10 seconds elsewhere."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.total: int | None = None
        self.done = 0
        self._bar: Any = None
        self._last_log = time.monotonic()
        self._tty = sys.stderr.isatty()

    def set_total(self, total: int) -> None:
        self.total = total
        if self._tty:
            self._bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr, show_pos=True)
            self._bar.__enter__()

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif time.monotonic() - self._last_log >= 10:
            self._last_log = time.monotonic()
            of_total = f" of {self.total}" if self.total is not None else ""
            log.info("%s: %d%s documents", self.label, self.done, of_total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
            click.echo(err=True)


CONFIG_HELP = "YAML configuration file (see config.example.yaml). Also read from LOGLATENT_CONFIG."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LOGLATENT_CONFIG",
    help=CONFIG_HELP,
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Minimum level of log lines written to standard error.",
)
@click.version_option(__version__, prog_name="loglatent")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str) -> None:
    """Learn each log stream's daily rhythm from syslog in Elasticsearch and report anomalies."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The client logs every retried request with a traceback; the final error is reported once, below.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    logging.getLogger("drain3").setLevel(logging.WARNING)
    ctx.obj = config_path


def pass_config(command: Callable[..., None]) -> Callable[..., None]:
    """Load the configuration only when a command runs, so that ``COMMAND --help`` needs none.

    ``--config`` works before the command's name and after it; the one after it wins.
    """

    @click.option("--config", "command_config_path", type=click.Path(dir_okay=False, path_type=Path),
                  help=CONFIG_HELP)
    @functools.wraps(command)
    def with_config(*args: Any, command_config_path: Path | None = None, **kwargs: Any) -> None:
        config_path = command_config_path or click.get_current_context().obj
        if config_path is None:
            raise click.UsageError("Missing option '--config' (or the LOGLATENT_CONFIG variable).")
        command(load_config(config_path), *args, **kwargs)

    return with_config


@cli.command()
@click.argument("logfiles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--index", help="Index to load into. Default: source.index, when it names one index.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "rfc3164", "rfc5424", "jsonl", "iosxr"]),
    default="auto",
    show_default=True,
    help="Line format; auto recognises each line on its own.",
)
@click.option("--year", type=click.IntRange(1970, 2100), help="Year of the first line, for formats without a year.")
@click.option("--host", help="Host of lines that carry none. Default for IOS-XR files: the file name up to its first dot.")
@click.option("--timezone", "zone_name", help="Timezone of timestamps written without an offset. Default: source.timezone.")
@click.option(
    "--reference-time",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="When the file was written out, in UTC, for inferring years without --year. Default: now.",
)
@pass_config
def load(
    config: Config,
    logfiles: tuple[Path, ...],
    index: str | None,
    fmt: str,
    year: int | None,
    host: str | None,
    zone_name: str | None,
    reference_time: datetime | None,
) -> None:
    """Parse LOGFILE... and bulk-index the lines into Elasticsearch."""
    from loglatent.es import connect
    from loglatent.load import load_files
    from loglatent.logfiles import ParseOptions

    if index is not None and not any(fnmatch.fnmatchcase(index, pattern) for pattern in config.source.index.split(",")):
        click.echo(f"Note: source.index {config.source.index!r} does not match {index!r}, so ingest will not "
                   "read these documents.", err=True)
    if index is None:
        if any(char in config.source.index for char in "*?,"):
            raise InputError(f"source.index {config.source.index!r} is a pattern; pass --index NAME to choose "
                             "the index to load into (a name the pattern matches, so ingest reads it)")
        index = config.source.index
    zone_name = zone_name or config.source.timezone
    _check_timezone(zone_name)
    options = ParseOptions(
        fmt=fmt,
        year=year,
        host=host,
        timezone=zone_name,
        reference_time=reference_time.replace(tzinfo=timezone.utc) if reference_time else None,
    )
    client = connect(config.elasticsearch)
    progress = _Progress(f"Loading into {index}")
    try:
        summary = load_files(client, list(logfiles), index, options, progress=progress.advance)
    finally:
        progress.close()

    parse = summary.parse
    click.echo(f"Loaded {summary.indexed} of {parse.lines} lines from {len(logfiles)} file(s) into {index} "
               f"in {summary.seconds:.1f} s")
    _echo_counter("Skipped", parse.skipped)
    _echo_counter("Kept with a note", parse.notes)
    if summary.failed:
        _echo_counter("Failed to index", summary.failed)
        raise LoglatentError(f"{sum(summary.failed.values())} documents were not indexed; see the reasons above")


@cli.command()
@click.option("--from", "start", help="First day (YYYY-MM-DD, in source.timezone) or time (ISO 8601 with offset).")
@click.option("--to", "end", help="Last day, included, or an end time, excluded. Default: now minus ingest.settle_seconds.")
@click.option("--max-documents", type=click.IntRange(1), help="Stop after about this many documents; the next run resumes.")
@pass_config
def ingest(config: Config, start: str | None, end: str | None, max_documents: int | None) -> None:
    """Read new syslog documents and add them to the per-event minute histograms."""
    from loglatent.es import connect
    from loglatent.ingest import ingest as run_ingest

    zone = config.source.zone
    start_time = _parse_bound(start, zone, "--from", end_of_day=False) if start else None
    end_time = _parse_bound(end, zone, "--to", end_of_day=True) if end else None
    if start_time and end_time and start_time >= end_time:
        raise InputError(f"--from {start} is not before --to {end}")
    client = connect(config.elasticsearch)
    progress = _Progress("Ingesting")
    try:
        summary = run_ingest(
            client, config, start_time, end_time, max_documents, progress=progress.advance, on_total=progress.set_total
        )
    finally:
        progress.close()

    click.echo(f"Read {summary.documents} documents in {summary.seconds:.1f} s "
               f"({summary.documents / max(summary.seconds, 1e-9):,.0f}/s); counted {summary.counted}")
    _echo_counter("Skipped", summary.skipped)
    _echo_counter("Kept with a note", summary.notes)
    if summary.without_timestamp:
        click.echo(f"Documents without {config.source.timestamp_field} in {config.source.index} (never read): "
                   f"{summary.without_timestamp}")
    click.echo(f"Templates: {summary.templates} ({summary.new_templates} new); "
               f"events: {summary.events} ({summary.new_events} new); days touched: {len(summary.days)}")
    if summary.previous_checkpoint and start_time and _iso_utc(start_time) < summary.previous_checkpoint:
        click.echo(f"Note: documents up to the checkpoint {summary.previous_checkpoint} were counted by earlier runs, "
                   "so --from only reads what comes after it. To count older data again, use an empty data_dir.")
    if summary.checkpoint:
        click.echo(f"Checkpoint: {summary.checkpoint}")
    elif not summary.source_exists:
        click.echo(f"source.index {config.source.index!r} matches no index, alias or data stream; check "
                   "source.index, or load logs into an index it matches")
    else:
        click.echo(f"No documents found in {config.source.index} for this window; check source.query and "
                   "--from/--to")
    if summary.stopped_early:
        click.echo("Stopped at --max-documents; run ingest again to continue.")


@cli.command("export-histograms")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npz file.")
@click.option("--from", "start", type=click.DateTime(formats=["%Y-%m-%d"]), help="First day to export (YYYY-MM-DD).")
@click.option("--to", "end", type=click.DateTime(formats=["%Y-%m-%d"]), help="Last day to export, included.")
@pass_config
def export_histograms(config: Config, out: Path, start: datetime | None, end: datetime | None) -> None:
    """Write every event-day's 1,440 minute counts to an .npz file."""
    from loglatent.histograms import STORE_FILE, export_npz
    from loglatent.ingest import open_store

    if not (config.data_dir / STORE_FILE).exists():
        raise InputError(f"no histograms in data_dir {str(config.data_dir)!r}; run ingest first, or check data_dir")
    with open_store(config) as store:
        rows = export_npz(store, out, start.date() if start else None, end.date() if end else None)
        total = store.total_count() if start is None and end is None else None
    click.echo(f"Wrote {rows} event-days with messages to {out}" + (f" ({total} messages)" if total is not None else ""))


@cli.command()
@click.option("--to", "last_day", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Last day of the training window (YYYY-MM-DD). Default: the last day with data.")
@pass_config
def train(config: Config, last_day: datetime | None) -> None:
    """Train the CVAE ensemble on the trailing model.train_days days and make it the active model."""
    from loglatent.jobs import train as run_train

    summary = run_train(config, last_day.date().isoformat() if last_day else None)
    _record_active_model(config, summary.version)
    click.echo(f"Trained model {summary.version} on {summary.first_day} to {summary.last_day}: "
               f"{summary.events} events, {summary.data_points} data points ({summary.distinct_data_points} distinct), "
               f"{len(summary.final_loss)} members in {summary.seconds:.1f} s")


@cli.command()
@click.option("--day", type=click.DateTime(formats=["%Y-%m-%d"]), help="Day to score (YYYY-MM-DD).")
@click.option("--from", "first_day", type=click.DateTime(formats=["%Y-%m-%d"]), help="First day to score.")
@click.option("--to", "last_day", type=click.DateTime(formats=["%Y-%m-%d"]), help="Last day to score, included.")
@click.option("--limit", default=40, show_default=True,
              help="Rows of the anomaly table to print, strongest first (0: none, a negative number: all).")
@pass_config
def detect(config: Config, day: datetime | None, first_day: datetime | None, last_day: datetime | None, limit: int) -> None:
    """Score days with the active model and write their anomalies to output.index.

    Without options, scores the last complete day.
    """
    from loglatent.es import connect
    from loglatent.jobs import detect as run_detect, last_complete_day

    if day is not None and (first_day is not None or last_day is not None):
        raise InputError("use either --day or --from/--to, not both")
    if day is not None:
        first = last = day.date().isoformat()
    elif first_day is not None or last_day is not None:
        if first_day is None or last_day is None:
            raise InputError("--from and --to go together; for one day use --day")
        first, last = first_day.date().isoformat(), last_day.date().isoformat()
        if first > last:
            raise InputError(f"--from {first} is after --to {last}")
    else:
        first = last = last_complete_day(config)
    if last > last_complete_day(config):
        click.echo(f"Note: {last} is not over yet in {config.source.timezone}; its verdict may change once it is.")
    client = connect(config.elasticsearch)
    summary = run_detect(client, config, first, last)
    _echo_detect(config, summary, limit)


@cli.command()
@click.option("--once", is_flag=True,
              help="Run ingest, train when due, and detect the last complete day once, then exit.")
@pass_config
def run(config: Config, once: bool) -> None:
    """Run the worker: its jobs on the schedule section's cron expressions, until SIGTERM or SIGINT.

    With --once, run ingest, train-if-due and detect one time and exit, for cron or a Kubernetes
    CronJob.
    """
    from loglatent.es import connect

    client = connect(config.elasticsearch)
    if not once:
        from loglatent.worker import Worker

        Worker(client, config).serve()
        return

    import os
    import socket

    from loglatent.jobs import run_once
    from loglatent.lease import HeldLease, Lease, ensure_state_index

    schedule = config.schedule
    ensure_state_index(client, schedule.state_index)
    holder = f"{socket.gethostname()}:{os.getpid()}:once"
    with HeldLease(Lease(client, schedule.state_index, "worker", holder, schedule.lease_seconds)):
        summary = run_once(client, config)
    click.echo(f"Ingest read {summary.ingest.documents} documents; "
               + (f"trained model {summary.trained.version}; " if summary.trained else "model is current; ")
               + f"scored {summary.day}"
               + (f"; trained model {summary.retrained.version} early, for the new events" if summary.retrained else ""))
    if summary.detect is not None:
        _echo_detect(config, summary.detect, 50)


@cli.command()
@pass_config
def status(config: Config) -> None:
    """Print the last run of each job, the checkpoints, the lease holder and the active model."""
    from loglatent.digest import LAST_DIGEST
    from loglatent.es import connect
    from loglatent.jobs import active_version
    from loglatent.lease import Lease
    from loglatent.schedule import JOBS
    from loglatent.state import StateStore
    from loglatent.worker import ACTIVE_MODEL, INGEST_POSITION, LAST_DETECTED

    client = connect(config.elasticsearch)
    store = StateStore(client, config.schedule.state_index)
    click.echo(f"State index: {config.schedule.state_index}")
    for job in JOBS:
        run = store.last_run(job)
        if run is None:
            click.echo(f"  {job:7} never run by the worker (commands run by hand are not recorded here)")
        else:
            details = ", ".join(f"{name} {_plain(value)}" for name, value in run["details"].items() if value is not None)
            click.echo(f"  {job:7} {run['outcome']:7} started {run['started']}, finished {run['finished']} "
                       f"by {run.get('holder') or '?'}: {details or 'no details'}")
    for name in (INGEST_POSITION, LAST_DETECTED, LAST_DIGEST, ACTIVE_MODEL):
        click.echo(f"  {name}: {store.checkpoint(name) or 'none'}")
    lease = Lease(client, config.schedule.state_index, "worker", "status", config.schedule.lease_seconds).read()
    if lease is None:
        click.echo("  lease: free")
    else:
        expiry = datetime.fromtimestamp(lease.expires_at, timezone.utc).isoformat()
        state = "expired" if lease.expires_at < time.time() else "held"
        click.echo(f"  lease: {state} by {lease.holder} until {expiry}")
    click.echo(f"  model on disk: {active_version(config) or 'none'} in {config.data_dir / 'models'}")


@cli.command()
@click.option("--day", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Day to report (YYYY-MM-DD). Default: the detected days not yet sent, as the worker does.")
@click.option("--dry-run", is_flag=True, help="Render the digest without sending it or recording anything.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="With --dry-run: write the HTML digest, pictures embedded, to this file (and the text to FILE.txt).")
@pass_config
def digest(config: Config, day: datetime | None, dry_run: bool, out: Path | None) -> None:
    """Render the email digest and send it, or with --dry-run render it to a file.

    A day whose digest went out already is never sent again.
    """
    from loglatent.digest import LAST_DIGEST, gather, render, send_digest
    from loglatent.es import connect
    from loglatent.jobs import last_complete_day
    from loglatent.state import DigestPlan, StateStore, digest_plan
    from loglatent.worker import LAST_DETECTED

    if out is not None and not dry_run:
        raise InputError("--out writes a rendered digest and needs --dry-run; without it the digest is sent")
    if out is not None and not out.parent.is_dir():
        raise InputError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not exist; create it first")
    client = connect(config.elasticsearch)
    today = last_complete_day(config)
    state = StateStore(client, config.schedule.state_index)
    if day is not None:
        chosen = day.date().isoformat()
        if not state.detected(chosen):
            raise InputError(f"{chosen} has not been detected yet, so its digest would report nothing; run "
                             f"'loglatent --config FILE detect --day {chosen}' first")
        # A day asked for by name is a report on request, not a scheduled digest that came late.
        plan: DigestPlan | None = DigestPlan([chosen], late=False)
    else:
        last_detected = state.checkpoint(LAST_DETECTED)
        if last_detected is None:
            raise InputError("no day has been detected yet; run detect first, or pass --day")
        plan = digest_plan(state.checkpoint(LAST_DIGEST), last_detected, today,
                           max_days=max(7, config.detection.backfill_days))
        if plan is None:
            click.echo(f"The digest is up to date: the last detected day, {last_detected}, was sent. "
                       + ("No file was written. " if out is not None else "") + "Pass --day to render another day.")
            return
    assert plan is not None
    if dry_run:
        total, by_method, sources = gather(client, config, plan.days)
        rendered = render(config, plan, total, by_method, sources, inline_pictures=True)
        click.echo(f"Subject: {rendered.subject}")
        if out is None:
            click.echo(rendered.text, nl=False)
        else:
            out.write_text(rendered.html, encoding="utf-8")
            out.with_suffix(".txt").write_text(rendered.text, encoding="utf-8")
            click.echo(f"Wrote {out} and {out.with_suffix('.txt')}: {total} anomalies, {len(sources)} listed")
        return
    import socket

    outcome = send_digest(client, config, state, plan, holder=f"{socket.gethostname()}:cli")
    if outcome.status == "already_sent":
        records = [state.digest_record(d) or {} for d in plan.days]
        click.echo("The digest of " + ", ".join(
            f"{d} went out at {r.get('sent_at', '?')} ({r.get('message_id') or r.get('status', '?')})"
            for d, r in zip(plan.days, records)) + "; not sending it again")
    elif outcome.status == "skipped":
        click.echo(f"No anomalies on {', '.join(outcome.days)}; nothing sent (digest.send_when_empty is false)")
    else:
        click.echo(f"Sent the digest of {', '.join(outcome.days)}{' (late)' if outcome.late else ''} to "
                   f"{', '.join(config.digest.to)}: {outcome.anomalies} anomalies, message {outcome.message_id}")


@cli.group()
def models() -> None:
    """List the saved model versions, or make an earlier one active again."""


@models.command("list")
@pass_config
def models_list(config: Config) -> None:
    """List the saved model versions, newest first, and mark the active one."""
    from loglatent.jobs import active_version, model_versions, models_dir
    from loglatent.model import load_metadata

    versions = model_versions(config)
    if not versions:
        click.echo(f"No saved models in {models_dir(config)}; run 'loglatent --config FILE train' first")
        return
    active = active_version(config)
    click.echo(f"{'':2}{'version':24} {'trained at (UTC)':20} {'window':24} {'events':>6} {'members':>7} {'epochs':>6}")
    for version in reversed(versions):
        metadata = load_metadata(models_dir(config) / version)
        trained = str(metadata.get("trained_at", "?"))[:19].replace("T", " ")
        window = f"{metadata.get('train_first_day', '?')} to {metadata.get('train_last_day', '?')}"
        settings = metadata.get("model", {})
        click.echo(f"{'* ' if version == active else '  '}{version:24} {trained:20} {window:24} "
                   f"{len(metadata.get('vocabulary', [])):>6} {len(metadata.get('seeds', [])):>7} "
                   f"{settings.get('epochs', '?'):>6}")
    click.echo("* active: detect scores with it")


@models.command("activate")
@click.argument("version")
@pass_config
def models_activate(config: Config, version: str) -> None:
    """Make VERSION the model that detect uses, for example to roll back a training."""
    from loglatent.jobs import activate, active_version

    previous = active_version(config)
    activate(config, version)
    _record_active_model(config, version)
    click.echo(f"Model {version} is active (was {previous or 'none'}). Detect uses it from its next run; "
               "the next scheduled training replaces it.")


@cli.group()
def kibana() -> None:
    """Install the loglatent dashboard, saved search and data views in Kibana."""


@kibana.command("import")
@click.option("--url", help="Kibana base URL, such as http://127.0.0.1:5601. Default: digest.kibana_url.")
@click.option("--space", help="Kibana space to import into. Default: the default space.")
@click.option("--file", "bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="NDJSON bundle of saved objects. Default: kibana/loglatent.ndjson of loglatent.")
@pass_config
def kibana_import(config: Config, url: str | None, space: str | None, bundle: Path | None) -> None:
    """Import the saved objects, overwriting earlier copies, with the data views pointed at output.index.

    Credentials come from LOGLATENT_KIBANA_API_KEY, or LOGLATENT_KIBANA_USERNAME and
    LOGLATENT_KIBANA_PASSWORD.
    """
    from loglatent.errors import KibanaError
    from loglatent.kibana import BUNDLE, for_indices, import_objects, read_bundle

    url = url or config.digest.kibana_url
    if not url:
        raise InputError("no Kibana URL: pass --url, or set digest.kibana_url in the configuration")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--url {url!r} must start with http:// or https://, such as http://127.0.0.1:5601")
    objects = for_indices(read_bundle(bundle or BUNDLE), config.output.index, config.output.scores)
    result = import_objects(url, objects, space)
    click.echo(f"Kibana {result.version}: imported {result.imported} of {len(objects)} objects"
               + (f" into space {space}" if space else ""))
    for failure in result.failed:
        click.echo(f"  failed: {failure}", err=True)
    if result.failed:
        raise KibanaError(f"{len(result.failed)} of {len(objects)} objects failed to import; see the list above")


@cli.command()
@click.option("--methods", default="cvae,pca,burst", show_default=True,
              help="Comma-separated methods to compare: cvae, pca, burst.")
@click.option("--events", type=click.IntRange(1, 10_000), default=120, show_default=True, help="Events in the corpus.")
@click.option("--devices", type=click.IntRange(1, 10_000), default=24, show_default=True,
              help="Devices the events are spread over.")
@click.option("--days", type=click.IntRange(84, 3_650), default=456, show_default=True, help="Days in the corpus.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first corpus.")
@click.option("--runs", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Corpora to average over, drawn with seeds SEED, SEED+1, ...")
@click.option("--members", type=click.IntRange(1, 100),
              help="CVAE ensemble size. Default: model.ensemble_size of --config, else 10.")
@click.option("--epochs", type=click.IntRange(1, 10_000), help="CVAE epochs. Default: model.epochs of --config, else 50.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the table as JSON to this file: an object per method with precision, recall, f1 and more.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Draw PNG plots of chosen events' daily scores, with detected anomalies marked, into this folder.")
@click.option("--plot-events", "plot_event_numbers", help="Comma-separated event numbers to plot. Default: one event of each behaviour class.")
def evaluate(
    methods: str, events: int, devices: int, days: int, seed: int, runs: int, members: int | None,
    epochs: int | None, json_path: Path | None, plot_dir: Path | None, plot_event_numbers: str | None,
) -> None:
    """Compare the detectors on generated, labelled logs shaped like the paper's data.

    Needs no Elasticsearch. The model and detection sections of --config apply when it is given.
    Prints precision, recall, F1 and the share of bursts covered per method, per behaviour class
    and per anomaly kind, averaged over the corpora.
    """
    import json

    from loglatent.config import Config
    from loglatent.evaluate import METHODS, CorpusSize, format_table, plot_events, run_seed, summarise

    chosen = [name.strip() for name in methods.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in METHODS]
    if unknown or not chosen:
        raise InputError(f"--methods {methods!r}: unknown method {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(METHODS)}")
    plotted = _parse_event_numbers(plot_event_numbers, events) if plot_event_numbers else None
    if plotted is not None and plot_dir is None:
        raise InputError("--plot-events needs --plot DIR, the folder to draw the plots into")
    _check_writable(json_path, plot_dir)
    config_path = click.get_current_context().obj
    config = load_config(config_path) if config_path is not None else Config()
    overrides = {key: value for key, value in (("ensemble_size", members), ("epochs", epochs)) if value is not None}
    model = config.model.model_copy(update=overrides)
    cvae_note = f" ({model.ensemble_size} members x {model.epochs} epochs, at least {model.min_steps} steps)" \
        if "cvae" in chosen else ""

    results = []
    for run_seed_value in range(seed, seed + runs):
        click.echo(f"Corpus {run_seed_value}: {events} events x {days} days; running {', '.join(chosen)}"
                   f"{cvae_note}", err=True)
        result = run_seed(run_seed_value, CorpusSize(events, devices, days), chosen, model, config.detection)
        results.append(result)
        if plot_dir is not None:
            for path in plot_events(result, plot_dir, plotted):
                click.echo(f"Wrote {path}", err=True)
        # The corpus and scores of one seed take about 0.3 GB at the default size; keep only the verdicts.
        result.corpus.counts = result.corpus.counts[:, :0]

    summary = summarise(results, chosen)
    click.echo(format_table(summary, [result.seed for result in results]))
    if json_path is not None:
        document = {
            "corpus": {"events": events, "devices": devices, "days": days, "seeds": [r.seed for r in results]},
            "model": model.model_dump(),
            "detection": dict(config.detection.model_dump(), methods=chosen),
            "methods": summary,
        }
        json_path.write_text(json.dumps(document, indent=1))
        click.echo(f"Wrote {json_path}", err=True)


def _check_writable(json_path: Path | None, plot_dir: Path | None) -> None:
    """Fail before a long evaluation when its output cannot be written."""
    if json_path is not None and not json_path.resolve().parent.is_dir():
        raise InputError(f"--json {str(json_path)!r}: folder {str(json_path.resolve().parent)!r} not found; create it first")
    if plot_dir is not None:
        try:
            plot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--plot {str(plot_dir)!r}: cannot create the folder: {exc.strerror}") from None


def _parse_event_numbers(text: str, events: int) -> list[int]:
    numbers = []
    for part in text.split(","):
        try:
            number = int(part)
        except ValueError:
            raise InputError(f"--plot-events {text!r}: {part!r} is not an event number; "
                             "give numbers such as 0,3,7") from None
        if not 0 <= number < events:
            raise InputError(f"--plot-events {text!r}: event {number} is outside 0 to {events - 1}")
        numbers.append(number)
    return numbers


def _echo_detect(config: Config, summary: Any, limit: int) -> None:
    write = summary.write
    click.echo(f"Scored {len(summary.days_scored)} day(s) from {summary.first_day} to {summary.last_day} with model "
               f"{summary.model_version}; {len(summary.documents)} anomalies "
               f"({', '.join(f'{k}: {v}' for k, v in sorted(summary.anomalies.items())) or 'none'})")
    if summary.last_day_with_data and summary.last_day > summary.last_day_with_data:
        click.echo(f"Note: no messages were ingested after {summary.last_day_with_data}; later days were scored as "
                   "silent. Run ingest first if logs did arrive.")
    if summary.days_without_history:
        click.echo(f"No verdict for {len(summary.days_without_history)} day(s) with less than "
                   f"{config.detection.min_cluster_days} days of history before them")
    click.echo(f"Wrote {write.written} documents to {config.output.index}, deleted {write.deleted} stale ones")
    if write.failed:
        _echo_counter("Failed to write", write.failed)
    scores = summary.scores_write
    if scores.written or scores.failed:
        click.echo(f"Wrote {scores.written} score documents (one per event and day) to {config.output.scores}")
    if scores.failed:
        _echo_counter("Failed to write scores", scores.failed)
    rows = sorted((doc["_source"] for doc in summary.documents), key=_strength, reverse=True)
    limit = len(rows) if limit < 0 else limit
    if limit and rows:
        click.echo()
        click.echo("Strongest anomalies first (most votes, then the largest change of the day's count):")
        click.echo(f"{'day':<10}  {'host':<12}  {'method':<6}  {'count':>6}  {'typical':>7}  {'votes':>5}  template")
        for source in rows[:limit]:
            votes = "new" if source["reason"] == "new_event" else f"{source['votes']}/{source['ensemble_size']}"
            click.echo(f"{source['day']:<10}  {source['host'][:12]:<12}  {source['method']:<6}  {source['count']:>6}  "
                       f"{source['typical_count']:>7.0f}  {votes:>5}  {source['template'][:90]}")
        if len(rows) > limit:
            click.echo(f"... and {len(rows) - limit} more in {config.output.index} (Kibana, or --limit -1 here)")
    if write.failed or scores.failed:
        raise LoglatentError(f"{sum(write.failed.values())} anomaly and {sum(scores.failed.values())} score documents "
                             "were not written; see the reasons above")


def _plain(value: Any) -> str:
    """Return a value from the state index as text: lists joined by commas, days spanned when many."""
    if isinstance(value, list):
        if len(value) > 3:
            return f"{value[0]} to {value[-1]} ({len(value)})"
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _record_active_model(config: Config, version: str) -> None:
    """Store the active model's version in the state index, where 'status' and other workers read it."""
    from elasticsearch import ApiError, TransportError

    from loglatent.errors import ElasticsearchUnavailable
    from loglatent.es import connect
    from loglatent.state import StateStore
    from loglatent.worker import ACTIVE_MODEL

    try:
        StateStore(connect(config.elasticsearch), config.schedule.state_index).set_checkpoint(ACTIVE_MODEL, version)
    except (ElasticsearchUnavailable, ApiError, TransportError) as exc:
        log.warning("Model %s is active on disk, but the state index was not updated (%s); "
                    "'loglatent status' shows the old version until the next training", version, exc)


def _strength(source: dict[str, Any]) -> tuple[float, float]:
    change = abs(math.log1p(source["count"]) - math.log1p(source["typical_count"]))
    return source["confidence"], change


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _parse_bound(text: str, zone: ZoneInfo, option: str, end_of_day: bool) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is not None:
        if end_of_day:
            day += timedelta(days=1)
        return datetime.combine(day, clock_time(0), tzinfo=zone)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{option} {text!r}: expected a day such as 2024-03-31 or a time such as "
                         "2024-03-31T12:00:00+02:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"--timezone {name!r}: unknown timezone; expected an IANA name such as 'UTC' or "
                         "'Europe/Berlin'") from None


def _echo_counter(title: str, counter: Any) -> None:
    if not counter:
        return
    details = ", ".join(f"{reason}: {count}" for reason, count in sorted(counter.items()))
    click.echo(f"{title}: {sum(counter.values())} ({details})")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; print ``LoglatentError`` as one line and exit with its code."""
    try:
        cli.main(args=argv, prog_name="loglatent", standalone_mode=False)
    except LoglatentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; the last commit is kept and the next run resumes from it.", err=True)
        sys.exit(130)
