"""Load and validate the YAML configuration file once, at start, into frozen objects.

Every problem is reported in one shape: the file, the key path, what is allowed and what was
found. ``${VAR}`` in any string value is replaced from the environment, so secrets stay out of
the file; ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from loglatent.errors import ConfigError

# The square-root rule scales Adam's beta1 to 1 - 0.1 x (batch ratio), which must stay positive
# and not too small; 8 times learning_rate_batch leaves beta1 at 0.2.
MAX_BATCH_RATIO = 8

_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ElasticsearchConfig(_Section):
    """Connection to the Elasticsearch cluster that stores the syslog and receives the anomalies."""

    hosts: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:9200"], min_length=1)
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    request_timeout: float = Field(default=30.0, gt=0)

    @field_validator("hosts")
    @classmethod
    def _hosts_are_urls(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not re.match(r"^https?://[^/\s]+", host):
                raise ValueError(
                    f"expected a URL such as 'http://127.0.0.1:9200' or 'https://es.example.net:9200', got {host!r}"
                )
        return hosts

    @model_validator(mode="after")
    def _one_credential_kind(self) -> ElasticsearchConfig:
        if self.api_key is not None and (self.username is not None or self.password is not None):
            raise ValueError("set either api_key or username and password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be set together")
        return self


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if re.fullmatch(r"[A-Z]{3,5}", name):
            # CEST, PDT and the like name an offset in one season, not a place with its rules.
            hint = " (an abbreviation such as CEST names one season's offset, not a zone)"
        raise ValueError(
            f"unknown timezone {name!r}{hint}; expected an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    return name


class _ZonedSection(_Section):
    """A section with an IANA ``timezone`` and the ``zone`` it names."""

    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        return _check_timezone(name)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class SourceConfig(_ZonedSection):
    """Source of the syslog documents: index pattern, timestamp, host and message fields, timezone."""

    index: str = "logs-*"
    timestamp_field: str = "@timestamp"
    host_field: str = "host.name"
    message_field: str = "message"
    query: dict[str, Any] | None = None


class OutputConfig(_Section):
    """Destination indices: the anomaly documents, and every event's score per day."""

    index: str = "loglatent-anomalies"
    # One document per event, day and method with the day's score (the KL value for cvae) and
    # the verdict, for the dashboard's score chart. Default: the anomaly index's name plus
    # '-scores'. Set write_scores to false to skip them.
    scores_index: str | None = None
    write_scores: bool = True

    @property
    def scores(self) -> str:
        """Return the name of the score index."""
        return self.scores_index or f"{self.index}-scores"


class HostsConfig(_Section):
    """Rules that fold host names from different sources into one device."""

    strip_domain: bool = True


class TemplatesConfig(_Section):
    """Settings of the Drain template miner."""

    similarity_threshold: float = Field(default=0.4, gt=0, le=1)
    depth: int = Field(default=4, ge=3, le=10)
    max_children: int = Field(default=100, ge=2)
    max_message_chars: int = Field(default=4096, ge=64)


class IngestConfig(_Section):
    """Paging, commit interval and late-arrival margin of the ingest."""

    page_size: int = Field(default=5000, ge=1, le=10000)
    commit_every: int = Field(default=50000, ge=1)
    settle_seconds: int = Field(default=120, ge=0)
    point_in_time_keep_alive: str = "2m"

    @field_validator("point_in_time_keep_alive")
    @classmethod
    def _time_unit(cls, value: str) -> str:
        if not re.fullmatch(r"\d+(ms|s|m|h)", value):
            raise ValueError(f"expected a duration such as '30s', '2m' or '1h', got {value!r}")
        return value


class ModelConfig(_Section):
    """The Conditional VAE ensemble: its sizes, its training and where it runs."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Matrix products in bfloat16 where the hardware has it (AMX or AVX-512 BF16, CUDA), or float32.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # Fuse the element-wise steps of training with torch.compile (needs a C++ compiler on the CPU).
    compile: bool = True
    ensemble_size: int = Field(default=10, ge=1, le=100)
    epochs: int = Field(default=50, ge=1, le=10_000)
    min_steps: int = Field(default=1000, ge=1)
    # Event-days per training step. A row stands for every identical day of its event, so a step
    # contains fewer rows than this where days repeat (see loglatent.stacked).
    batch_size: int = Field(default=1024, ge=1)
    # Adam's step size for steps of `learning_rate_batch` event-days. Larger or smaller steps
    # scale it, and Adam's betas, by the square-root rule, so that the batch size sets the speed
    # of training and, approximately, not its course.
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    learning_rate_batch: int = Field(default=256, ge=1)
    encoder_units: list[int] = Field(default_factory=lambda: [512, 256, 128, 64], min_length=1)
    latent_dim: int = Field(default=10, ge=1, le=1024)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    likelihood: Literal["poisson", "bernoulli"] = "poisson"
    seed: int = Field(default=0, ge=0)
    train_days: int = Field(default=365, ge=7)
    retrain_days: int = Field(default=7, ge=1)
    # Retrain early, after a detect run, when more than this share of the events seen so far is
    # missing from the active model's vocabulary.
    retrain_unseen_share: float = Field(default=0.2, gt=0, le=1)
    keep_versions: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _batch_within_scaling_rule(self) -> ModelConfig:
        if self.batch_size > MAX_BATCH_RATIO * self.learning_rate_batch:
            default = "" if "batch_size" in self.model_fields_set else " (the default)"
            raise ValueError(
                f"batch_size {self.batch_size}{default} is more than {MAX_BATCH_RATIO} times learning_rate_batch "
                f"{self.learning_rate_batch} ({MAX_BATCH_RATIO * self.learning_rate_batch} event-days), the largest "
                f"batch that Adam's settings are scaled for. Lower batch_size to at most "
                f"{MAX_BATCH_RATIO * self.learning_rate_batch} or raise learning_rate_batch to at least "
                f"{-(-self.batch_size // MAX_BATCH_RATIO)}")
        return self

    @field_validator("encoder_units")
    @classmethod
    def _positive_units(cls, units: list[int]) -> list[int]:
        if any(unit < 1 for unit in units):
            raise ValueError(f"expected positive layer sizes such as [512, 256, 128, 64], got {units}")
        return units


Method = Literal["cvae", "pca", "burst"]


class DetectionConfig(_Section):
    """Per-event DBSCAN on KL values and the ensemble vote."""

    min_cluster_days: int = Field(default=7, ge=2)
    history_days: int = Field(default=365, ge=7)
    eps: float | None = Field(default=None, gt=0)
    score_offset: float = Field(default=2.0, gt=0)
    spread_factor: float = Field(default=1.5, gt=0)
    min_eps: float = Field(default=0.03, gt=0)
    methods: list[Method] = Field(default_factory=lambda: list[Method](["cvae"]), min_length=1)
    pca_coverage: float = Field(default=0.9, gt=0, le=1)
    backfill_days: int = Field(default=7, ge=1)

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError(f"each method may appear once, got {methods}")
        return methods

    @model_validator(mode="after")
    def _history_holds_a_cluster(self) -> DetectionConfig:
        if self.history_days < self.min_cluster_days:
            raise ValueError(
                f"history_days ({self.history_days}) must be at least min_cluster_days ({self.min_cluster_days})"
            )
        return self


class JobSchedule(_Section):
    """When one job of the worker runs: a five-field cron expression in ``schedule.timezone``."""

    cron: str
    # A run the scheduler could not start on time (the process was suspended, or the clock
    # jumped) still starts within this many seconds. After that it is skipped until the next
    # time. Runs missed while no worker ran are covered by the catch-up at start instead.
    misfire_grace_seconds: int = Field(default=600, ge=1)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, expression: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(expression, timezone="UTC")
        except ValueError as exc:
            raise ValueError(
                f"invalid cron expression {expression!r} ({exc}). A cron expression has five fields "
                "(minute hour day-of-month month day-of-week), such as '*/10 * * * *' or '30 0 * * *'"
            ) from None
        return expression


class ScheduleConfig(_ZonedSection):
    """The worker's jobs, the timezone their cron expressions are read in, and where state lives."""

    # Index of the worker's checkpoints, job runs and lease; one per configuration.
    state_index: str = "loglatent-state"
    # A worker that stops renewing its lease loses it after this many seconds.
    lease_seconds: int = Field(default=60, ge=5)
    ingest: JobSchedule = Field(default_factory=lambda: JobSchedule(cron="*/10 * * * *"))
    detect: JobSchedule = Field(default_factory=lambda: JobSchedule(cron="30 0 * * *"))
    train: JobSchedule = Field(default_factory=lambda: JobSchedule(cron="0 3 * * 0"))
    digest: JobSchedule = Field(default_factory=lambda: JobSchedule(cron="0 7 * * *"))


class SmtpConfig(_Section):
    """The mail server that delivers the digest. The user name and password come from the environment."""

    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    # none: plain SMTP (a local relay); starttls: upgrade after connecting (port 587);
    # tls: TLS from the first byte (port 465).
    security: Literal["none", "starttls", "tls"] = "none"
    # CA certificates (PEM) that sign the server's certificate, for a relay with a private CA.
    # Default: the system's trusted CAs.
    ca_certs: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    # A failed send is tried again this many times, after retry_seconds, then twice that, and so on.
    retries: int = Field(default=3, ge=0, le=20)
    retry_seconds: float = Field(default=5.0, ge=0)


def _check_address(text: str) -> str:
    from email.utils import parseaddr

    _, address = parseaddr(text)
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
        raise ValueError(f"expected an email address such as 'noc@example.net' or 'NOC <noc@example.net>', "
                         f"got {text!r}")
    return text


class DigestConfig(_Section):
    """The daily email digest: recipients, sender, links and the mail server."""

    # Without recipients the worker sends no digest; 'loglatent digest --dry-run' still renders one.
    to: list[str] = Field(default_factory=list)
    sender: str = "loglatent@localhost"
    subject_prefix: str = "[loglatent]"
    # Base URL of Kibana, such as 'https://kibana.example.net:5601', for links from the digest.
    kibana_url: str | None = None
    # Send a short note on a day without anomalies (true), or nothing (false).
    send_when_empty: bool = True
    # The digest lists at most this many anomalies, strongest first, and counts the rest.
    max_anomalies: int = Field(default=50, ge=1, le=1000)
    # Folder of digest.html.j2 and digest.txt.j2. Default: the templates/ folder of loglatent.
    templates_dir: Path | None = None
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)

    @field_validator("to")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            _check_address(address)
        return addresses

    @field_validator("sender")
    @classmethod
    def _sender(cls, address: str) -> str:
        return _check_address(address)

    @field_validator("kibana_url")
    @classmethod
    def _kibana_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"expected a URL such as 'https://kibana.example.net:5601', got {url!r}")
        return None if url is None else url.rstrip("/")


class Config(_Section):
    """The whole validated configuration. Runtime state never lives here."""

    elasticsearch: ElasticsearchConfig = Field(default_factory=ElasticsearchConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    hosts: HostsConfig = Field(default_factory=HostsConfig)
    templates: TemplatesConfig = Field(default_factory=TemplatesConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    digest: DigestConfig = Field(default_factory=DigestConfig)
    data_dir: Path = Path("data")


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML file at ``path``.

    Relative ``data_dir`` and ``ca_certs`` paths are resolved against the file's folder, so the
    worker behaves the same whatever its working directory is.

    Raises
    ------
    ConfigError
        With the file, the key path, the allowed values and the value found.
    """
    path = Path(path)
    environ = dict(os.environ) if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; copy config.example.yaml and pass it with --config"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from None

    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")

    expanded = _expand_environment(raw, environ, path, key_path="")
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None
    config = _resolve_paths(config, path.resolve().parent)
    ca_certs = config.elasticsearch.ca_certs
    if ca_certs is not None and not ca_certs.is_file():
        raise ConfigError(f"{path}: elasticsearch.ca_certs: file not found: {str(ca_certs)!r}")
    smtp_ca = config.digest.smtp.ca_certs
    if smtp_ca is not None and not smtp_ca.is_file():
        raise ConfigError(f"{path}: digest.smtp.ca_certs: file not found: {str(smtp_ca)!r}")
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping; merge the two", key_node.start_mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


def _expand_environment(value: Any, environ: dict[str, str], path: Path, key_path: str) -> Any:
    if isinstance(value, dict):
        return {
            key: _expand_environment(item, environ, path, f"{key_path}.{key}" if key_path else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_expand_environment(item, environ, path, f"{key_path}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        if name not in environ:
            raise ConfigError(
                f"{path}: {key_path}: environment variable {name} is not set; export it before starting loglatent"
            )
        return environ[name]

    return _ENV_REFERENCE.sub(substitute, value)


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration:"]
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        key = ".".join(location) or "(top level)"
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(location[:-1])
            close = difflib.get_close_matches(location[-1], allowed, n=1)
            homes = [home for home in _sections_with_key(location[-1]) if home != ".".join(location[:-1])]
            # A key spelled exactly as in another section is more likely misplaced than misspelled.
            if location[:2] == ["digest", "smtp"] and location[-1] in {"user", "username", "password"}:
                hint = (" (the mail server's credentials come from the environment variables "
                        "LOGLATENT_SMTP_USERNAME and LOGLATENT_SMTP_PASSWORD)")
            elif len(homes) == 1:
                hint = f" (it belongs under {homes[0]!r})"
            elif homes:
                hint = f" (it belongs under one of {', '.join(repr(home) for home in homes)})"
            elif close:
                hint = f" (did you mean {close[0]!r}?)"
            else:
                hint = ""
            lines.append(f"  {key}: unknown key{hint}; allowed here: {', '.join(allowed)}")
            continue
        received = error.get("input")
        received_text = "(secret)" if _is_secret(location) else repr(received)
        if error["type"] == "value_error":
            # Our validators put the value and the allowed values in the message already.
            lines.append(f"  {key}: {error['msg'].removeprefix('Value error, ')}")
        elif error["type"] == "model_type":
            keys = ", ".join(_allowed_keys(location))
            example = " such as\n      cron: '*/5 * * * *'" if location[:1] == ["schedule"] and len(location) == 2 else ""
            lines.append(f"  {key}: expected a section (a mapping with keys {keys}){example}; got {received_text}")
        elif error["type"] == "list_type":
            lines.append(f"  {key}: expected a list such as [{received_text}]; got {received_text}")
        elif isinstance(received, dict):
            lines.append(f"  {key}: {error['msg']}")
        else:
            lines.append(f"  {key}: {error['msg']}; got {received_text}")
    return "\n".join(lines)


def _allowed_keys(location: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in location:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


def _sections_with_key(key: str, model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Return the dotted path of every section, at any depth, that has ``key``."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        path = f"{prefix}{name}"
        if key in annotation.model_fields:
            found.append(path)
        found.extend(_sections_with_key(key, annotation, f"{path}."))
    return found


def _is_secret(location: list[str]) -> bool:
    return bool(location) and location[-1] in {"password", "api_key"}


def _resolve_paths(config: Config, base: Path) -> Config:
    data_dir = config.data_dir if config.data_dir.is_absolute() else base / config.data_dir
    update: dict[str, Any] = {"data_dir": data_dir}
    digest_update: dict[str, Any] = {}
    templates_dir = config.digest.templates_dir
    if templates_dir is not None and not templates_dir.is_absolute():
        digest_update["templates_dir"] = base / templates_dir
    smtp_ca = config.digest.smtp.ca_certs
    if smtp_ca is not None and not smtp_ca.is_absolute():
        digest_update["smtp"] = config.digest.smtp.model_copy(update={"ca_certs": base / smtp_ca})
    if digest_update:
        update["digest"] = config.digest.model_copy(update=digest_update)
    ca_certs = config.elasticsearch.ca_certs
    if ca_certs is not None and not ca_certs.is_absolute():
        update["elasticsearch"] = config.elasticsearch.model_copy(update={"ca_certs": base / ca_certs})
    return config.model_copy(update=update)


def secret_value(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()

