"""The email digest: the anomalies of one or more days, rendered from templates/ and sent by SMTP.

A digest is gathered from the anomaly index, rendered twice (``digest.txt.j2`` as text and
``digest.html.j2`` as HTML, autoescaped), and sent as one multipart/alternative message with a
small PNG picture per listed anomaly, attached by Content-ID. Each day is claimed in the state
index before the message goes out, so no day is ever sent twice: not by a second worker, not by
a rerun, not by ``loglatent digest`` run by hand. A failed send is retried with backoff; when
every attempt fails, the claim is released and the next digest covers the day, marked late.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import smtplib
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

from loglatent.config import Config
from loglatent.errors import ConfigError, DigestError
from loglatent.kibana import dashboard_url, discover_url
from loglatent.state import DigestPlan, StateStore

log = logging.getLogger(__name__)

LAST_DIGEST = "last_digest_day"
USERNAME_VARIABLE = "LOGLATENT_SMTP_USERNAME"
PASSWORD_VARIABLE = "LOGLATENT_SMTP_PASSWORD"
DEFAULT_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@dataclass
class Anomaly:
    """One listed anomaly, as the templates see it."""

    day: str
    host: str
    template_id: int
    template: str
    example: str
    method: str
    reason: str
    count: int
    typical_count: float
    votes: int | None
    members: int
    confidence: float
    model_version: str
    hourly: list[int]
    typical_hourly: list[float]
    picture: str = ""
    discover_url: str | None = None


@dataclass
class Digest:
    """A rendered digest: what it covers, its subject, both bodies and the pictures by Content-ID."""

    days: list[str]
    late: bool
    total: int
    by_method: dict[str, int]
    subject: str
    text: str
    html: str
    pictures: dict[str, bytes] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.total == 0


@dataclass
class DigestOutcome:
    """Outcome of one digest run: the days it covered, and whether and how it was sent."""

    days: list[str]
    late: bool
    anomalies: int
    status: str  # sent, skipped (empty and send_when_empty is false), already_sent
    message_id: str | None = None


# Gathering


def gather(client: Elasticsearch, config: Config, days: list[str]) -> tuple[int, Counter[str], list[dict[str, Any]]]:
    """Return the number of anomalies on ``days``, their count by method, and the strongest of them."""
    query = {"bool": {"filter": [{"terms": {"day": days}}]}}
    try:
        found = client.search(
            index=config.output.index, query=query, size=config.digest.max_anomalies, track_total_hits=True,
            sort=[{"confidence": "desc"}, {"count": "desc"}, {"day": "asc"}, {"host": "asc"}, {"template_id": "asc"}],
            aggregations={"methods": {"terms": {"field": "method", "size": 10}}},
        )
    except NotFoundError:
        log.warning("The anomaly index %s does not exist; the digest reports no anomalies. Run detect first.",
                    config.output.index)
        return 0, Counter(), []
    by_method = Counter({bucket["key"]: int(bucket["doc_count"]) for bucket in found["aggregations"]["methods"]["buckets"]})
    return int(found["hits"]["total"]["value"]), by_method, [hit["_source"] for hit in found["hits"]["hits"]]


# Rendering


def render(config: Config, plan: DigestPlan, total: int, by_method: Counter[str], sources: list[dict[str, Any]],
           now: datetime | None = None, inline_pictures: bool = False) -> Digest:
    """Render the digest of ``plan.days``. With ``inline_pictures`` the HTML embeds its pictures as data URLs."""
    import jinja2

    zone = config.source.zone
    kibana = config.digest.kibana_url
    anomalies = [_anomaly(source) for source in sources]
    pictures: dict[str, bytes] = {}
    for number, anomaly in enumerate(anomalies, start=1):
        cid = f"hourly-{number}@loglatent"
        pictures[cid] = hourly_picture(anomaly.hourly, anomaly.typical_hourly)
        anomaly.picture = (f"data:image/png;base64,{base64.b64encode(pictures[cid]).decode()}" if inline_pictures
                           else f"cid:{cid}")
        if kibana:
            anomaly.discover_url = discover_url(kibana, anomaly.host, anomaly.template_id, anomaly.day, zone)

    hosts: dict[str, dict[tuple[int, str], list[Anomaly]]] = {}
    for anomaly in anomalies:
        hosts.setdefault(anomaly.host, {}).setdefault((anomaly.template_id, anomaly.template), []).append(anomaly)
    context = {
        "days": plan.days,
        "first_day": plan.days[0],
        "last_day": plan.days[-1],
        "late": plan.late,
        "timezone": config.source.timezone,
        "total": total,
        "listed": len(anomalies),
        "by_method": dict(sorted(by_method.items())),
        "hosts": [
            {"host": host, "templates": [{"template_id": key[0], "template": key[1], "anomalies": items}
                                         for key, items in templates.items()]}
            for host, templates in hosts.items()
        ],
        "dashboard_url": dashboard_url(kibana, plan.days[0], plan.days[-1], zone) if kibana else None,
        "generated_at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "late_note": "",
    }
    if plan.late:
        context["late_note"] = (f"This digest is late: it covers {len(plan.days)} days"
                                if len(plan.days) > 1 else "This digest is late")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir(config))),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    try:
        text = environment.get_template("digest.txt.j2").render(context)
        html = environment.get_template("digest.html.j2").render(context)
    except jinja2.TemplateError as exc:
        raise DigestError(f"cannot render the digest templates in {templates_dir(config)}: {exc}") from None
    return Digest(plan.days, plan.late, total, dict(by_method), subject(config, plan, total, anomalies), text, html,
                  pictures)


def templates_dir(config: Config) -> Path:
    folder = config.digest.templates_dir or DEFAULT_TEMPLATES
    if not (folder / "digest.html.j2").is_file() or not (folder / "digest.txt.j2").is_file():
        raise ConfigError(f"digest.templates_dir: {str(folder)!r} must hold digest.html.j2 and digest.txt.j2; "
                          "point it at the templates/ folder of loglatent")
    return folder


def subject(config: Config, plan: DigestPlan, total: int, anomalies: list[Anomaly]) -> str:
    """Return the subject: the count, the days, the hosts listed first, and whether the digest is late."""
    span = plan.days[0] if len(plan.days) == 1 else f"{plan.days[0]} to {plan.days[-1]}"
    if total == 0:
        text = f"No anomalies on {span}"
    else:
        hosts = list(dict.fromkeys(anomaly.host for anomaly in anomalies))
        shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more hosts" if len(hosts) > 3 else "")
        text = f"{total} {'anomaly' if total == 1 else 'anomalies'} on {span}: {shown}"
    late = " (late)" if plan.late else ""
    return f"{config.digest.subject_prefix} {text}{late}".strip()


def hourly_picture(hourly: list[int], typical: list[float]) -> bytes:
    """Return a small PNG of the day's hourly counts (bars) against the typical day (a line)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(3.6, 1.0), dpi=100)
    axes.set_ylim(0, max(max(hourly), max(typical), 1) * 1.35)  # headroom for the legend
    try:
        hours = range(24)
        axes.bar(hours, hourly, width=0.8, color="#d9534f", label="this day")
        axes.step([h - 0.5 for h in range(25)], list(typical) + [typical[-1]], where="post", color="#1f4e79",
                  linewidth=1.2, label="typical day")
        axes.legend(fontsize=6, frameon=False, loc="upper left", ncols=2)
        axes.set_xlim(-0.5, 23.5)
        axes.set_xticks([0, 6, 12, 18, 23])
        axes.tick_params(labelsize=6, length=2)
        axes.spines[["top", "right"]].set_visible(False)
        figure.tight_layout(pad=0.2)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        pyplot.close(figure)


def _anomaly(source: dict[str, Any]) -> Anomaly:
    return Anomaly(
        day=source["day"],
        host=source["host"],
        template_id=int(source["template_id"]),
        template=source["template"],
        example=source.get("example") or "",
        method=source["method"],
        reason=source["reason"],
        count=int(source["count"]),
        typical_count=float(source.get("typical_count") or 0.0),
        votes=source.get("votes"),
        members=int(source.get("ensemble_size") or 1),
        confidence=float(source.get("confidence") or 0.0),
        model_version=source.get("model_version") or "",
        hourly=[int(value) for value in source.get("hourly_counts") or [0] * 24],
        typical_hourly=[float(value) for value in source.get("typical_hourly") or [0.0] * 24],
    )


# Sending


def build_message(config: Config, digest: Digest) -> EmailMessage:
    """Return the multipart/alternative message: text, then HTML with its pictures attached by Content-ID."""
    message = EmailMessage()
    message["Subject"] = digest.subject
    message["From"] = config.digest.sender
    message["To"] = ", ".join(config.digest.to)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain="loglatent")
    message["X-Loglatent-Days"] = ",".join(digest.days)
    # Quoted-printable keeps every line under the SMTP limit whatever the template writes.
    message.set_content(digest.text, charset="utf-8", cte="quoted-printable")
    message.add_alternative(digest.html, subtype="html", charset="utf-8", cte="quoted-printable")
    html_part = message.get_body(preferencelist=("html",))
    assert isinstance(html_part, EmailMessage)
    for cid, picture in digest.pictures.items():
        html_part.add_related(picture, maintype="image", subtype="png", cid=f"<{cid}>",
                              filename=f"{cid.split('@')[0]}.png", disposition="inline")
    return message


def send(config: Config, message: EmailMessage, sleep: Callable[[float], None] = time.sleep) -> None:
    """Send ``message`` to ``digest.to``, retrying with backoff; raise DigestError when every attempt fails."""
    smtp = config.digest.smtp
    attempts = smtp.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            _send_once(config, message)
            return
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise DigestError(f"the mail server {smtp.host}:{smtp.port} rejected the digest: {exc.smtp_code} "
                                  f"{_text(exc.smtp_error)}; check digest.to, digest.sender and the SMTP "
                                  "credentials") from None
            problem = f"{exc.smtp_code} {_text(exc.smtp_error)}"
        except smtplib.SMTPNotSupportedError as exc:
            raise DigestError(f"the mail server {smtp.host}:{smtp.port} does not support what the digest needs: {exc}; "
                              "check digest.smtp.security and whether the server expects a login") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DigestError(f"the mail server {smtp.host}:{smtp.port} rejected every recipient "
                              f"({', '.join(exc.recipients)}); check digest.to") from None
        except (smtplib.SMTPException, OSError) as exc:
            problem = str(exc) or type(exc).__name__
        if attempt == attempts:
            raise DigestError(f"cannot send the digest through {smtp.host}:{smtp.port} after {attempts} attempts: "
                              f"{problem}; check digest.smtp and that the mail server is reachable")
        delay = smtp.retry_seconds * 2 ** (attempt - 1)
        log.warning("Sending the digest through %s:%d failed (%s); trying again in %.0f s (attempt %d of %d)",
                    smtp.host, smtp.port, problem, delay, attempt, attempts)
        sleep(delay)


def _send_once(config: Config, message: EmailMessage) -> None:
    smtp = config.digest.smtp
    username, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if bool(username) != bool(password):
        raise ConfigError(f"set both {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, or neither, to log in to "
                          f"the mail server {smtp.host}:{smtp.port}")
    context = ssl.create_default_context(cafile=str(smtp.ca_certs) if smtp.ca_certs else None)
    connection: smtplib.SMTP
    if smtp.security == "tls":
        connection = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_seconds, context=context)
    else:
        connection = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
    with connection:
        if smtp.security == "starttls":
            connection.starttls(context=context)
        if username and password:
            connection.login(username, password)
        connection.send_message(message, from_addr=config.digest.sender, to_addrs=list(config.digest.to))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# One digest run


def send_digest(client: Elasticsearch, config: Config, state: StateStore, plan: DigestPlan, holder: str,
                sleep: Callable[[float], None] = time.sleep) -> DigestOutcome:
    """Send the digest of ``plan``'s days that no digest has claimed yet, and record it.

    A day without anomalies is sent as a short note, or recorded as skipped when
    ``digest.send_when_empty`` is false. The ``last_digest_day`` checkpoint moves to the last
    day covered.
    """
    if not config.digest.to:
        raise ConfigError("digest.to is empty; add at least one recipient, or use --dry-run to render the digest")
    days = state.claim_digest_days(plan.days, holder)
    if not days:
        log.info("The digest of %s was sent already; not sending it again", _span(plan.days))
        return DigestOutcome(plan.days, plan.late, 0, "already_sent")
    plan = DigestPlan(days, plan.late)
    try:
        total, by_method, sources = gather(client, config, days)
        if total == 0 and not config.digest.send_when_empty:
            state.finish_digest_days(days, True, {"status": "skipped", "anomalies": 0})
            _advance(state, days)
            log.info("No anomalies on %s; no digest sent (digest.send_when_empty is false)", _span(days))
            return DigestOutcome(days, plan.late, 0, "skipped")
        digest = render(config, plan, total, by_method, sources)
        message = build_message(config, digest)
        send(config, message, sleep)
    except BaseException:
        state.finish_digest_days(days, False, {})
        raise
    message_id = str(message["Message-ID"])
    state.finish_digest_days(days, True, {"message_id": message_id, "late": plan.late, "anomalies": total,
                                          "sent_at": datetime.now(timezone.utc).isoformat()})
    _advance(state, days)
    log.info("Sent the digest of %s%s to %s: %d anomalies, %d listed", _span(days),
             " (late)" if plan.late else "", ", ".join(config.digest.to), total, len(sources))
    return DigestOutcome(days, plan.late, total, "sent", message_id)


def _advance(state: StateStore, days: list[str]) -> None:
    current = state.checkpoint(LAST_DIGEST)
    if current is None or days[-1] > current:
        state.set_checkpoint(LAST_DIGEST, days[-1])


def _span(days: list[str]) -> str:
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
