"""A labelled syslog corpus with the behaviours of network logs and injected anomalies.

Each host runs the same kinds of event. An hourly cron job and a five-minute NTP check are
periodic, sshd logins arrive as a Poisson process during working hours, a kernel message comes a
few times a week, and a disk alarm stays silent. The injected anomalies are the cases a detector for daily
rhythms must find: a burst in the quiet event, the hourly job stopping for half a day, the
silent event waking up, and a flood. In the flood the NTP check logs 30 lines at each of its
usual minutes for six hours, so the minutes with a message stay the same and only the counts
change.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

KINDS = {
    "cron": "CRON[{pid}]: (root) CMD (run-parts /etc/cron.hourly)",
    "ntp": "ntpd[{pid}]: synchronized to 10.0.{a}.{b}, stratum 2",
    "sshd": "sshd[{pid}]: Accepted publickey for deploy from 192.0.2.{b} port {port} ssh2",
    "link": "kernel: eth1: link down, carrier lost after {a} ms",
    "disk": "smartd[{pid}]: Device: /dev/sda [SAT], SMART Failure: FAILURE PREDICTION THRESHOLD EXCEEDED",
}


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly: the host, the kind of event, the ISO day and what was done."""

    host: str
    kind: str
    day: str
    description: str


@dataclass
class Corpus:
    """Documents in ECS shape and the anomalies injected into them."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    first_day: str = ""
    last_day: str = ""


def kind_of(message: str) -> str:
    """Return the kind of a generated message or template (the text before its first '[' or ':')."""
    head = message.split("[", 1)[0].split(":", 1)[0]
    for kind, pattern in KINDS.items():
        if pattern.split("[", 1)[0].split(":", 1)[0] == head:
            return kind
    raise ValueError(f"not a generated message: {message!r}")


def generate(seed: int = 0, days: int = 60, hosts: int = 3, start: date = date(2024, 1, 1)) -> Corpus:
    """Generate ``days`` days of logs for ``hosts`` hosts, with four anomalies in the last third."""
    rng = random.Random(seed)
    host_names = [f"edge{number:02d}" for number in range(1, hosts + 1)]
    corpus = Corpus(first_day=start.isoformat(), last_day=(start + timedelta(days=days - 1)).isoformat())
    burst_day, stop_day, wake_day = days * 2 // 3, days * 2 // 3 + 4, days * 2 // 3 + 8
    flood_day = days * 2 // 3 + 12
    corpus.anomalies = [
        Anomaly(host_names[0], "link", _day(start, burst_day), "300 messages in 30 minutes"),
        Anomaly(host_names[1 % hosts], "cron", _day(start, stop_day), "no runs from 12:00 to 24:00"),
        Anomaly(host_names[2 % hosts], "disk", _day(start, wake_day), "40 alarms after a silent history"),
        Anomaly(host_names[0], "ntp", _day(start, flood_day), "30 lines per check from 06:00 to 12:00"),
    ]
    for day_number in range(days):
        day = start + timedelta(days=day_number)
        for host in host_names:
            events = _day_events(rng, host, day, day_number, host_names, burst_day, stop_day, wake_day, flood_day)
            for moment, kind in events:
                corpus.documents.append(_document(rng, moment, host, kind))
    return corpus


def _day_events(
    rng: random.Random,
    host: str,
    day: date,
    day_number: int,
    hosts: list[str],
    burst_day: int,
    stop_day: int,
    wake_day: int,
    flood_day: int,
) -> Iterator[tuple[datetime, str]]:
    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    for hour in range(24):
        if not (host == hosts[1 % len(hosts)] and day_number == stop_day and hour >= 12):
            yield midnight + timedelta(hours=hour, minutes=1, seconds=rng.randrange(0, 3)), "cron"
    flood = host == hosts[0] and day_number == flood_day
    for minute in range(0, 1440, 5):
        repeats = 30 if flood and 360 <= minute < 720 else 1
        for _ in range(repeats):
            yield midnight + timedelta(minutes=minute, seconds=rng.randrange(0, 20)), "ntp"
    weekday = day.weekday() < 5
    for _ in range(_poisson(rng, 25 if weekday else 3)):
        yield midnight + timedelta(seconds=rng.randrange(8 * 3600, 18 * 3600)), "sshd"
    if rng.random() < 0.4:
        yield midnight + timedelta(seconds=rng.randrange(0, 86400)), "link"
    if host == hosts[0] and day_number == burst_day:
        for _ in range(300):
            yield midnight + timedelta(hours=14, seconds=rng.randrange(0, 1800)), "link"
    if host == hosts[2 % len(hosts)] and day_number == wake_day:
        for _ in range(40):
            yield midnight + timedelta(hours=3, seconds=rng.randrange(0, 7200)), "disk"


def _document(rng: random.Random, moment: datetime, host: str, kind: str) -> dict[str, Any]:
    message = KINDS[kind].format(
        pid=rng.randrange(300, 65000), a=rng.randrange(0, 255), b=rng.randrange(1, 255), port=rng.randrange(1024, 65535)
    )
    return {"@timestamp": moment.isoformat(), "host": {"name": host}, "message": message}


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: fine for the small means used here.
    limit, product, count = pow(2.718281828459045, -mean), rng.random(), 0
    while product > limit:
        product *= rng.random()
        count += 1
    return count


def _day(start: date, day_number: int) -> str:
    return (start + timedelta(days=day_number)).isoformat()
