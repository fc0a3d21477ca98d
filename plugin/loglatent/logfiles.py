"""Parse log files into (timestamp, host, message) records.

Each line is recognised on its own, so a file may mix formats:

- RFC 3164 syslog: ``[<PRI>]Mmm dd hh:mm:ss HOST TAG: text``. The line has no year and no zone.
- RFC 5424 syslog: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD [MSG]``.
- JSON lines in the ECS shape: ``@timestamp``, ``host.name`` (nested or dotted, or a plain
  ``host`` string) and ``message``.
- Cisco IOS-XR ``show logging`` lines: ``NODE:Mmm dd hh:mm:ss.mmm : process[pid]: text``. They
  carry no host, so the host comes from ``--host`` or from the file name up to its first dot.

Lines that cannot be used are counted under a reason and skipped. Invalid UTF-8 bytes are
replaced by U+FFFD and the line is kept (counted as a note, not as skipped).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

MONTHS = {name: number for number, name in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], start=1)}

# A line may be this far ahead of the reference time and still belong to the reference year,
# so a device clock that runs a little fast does not move its lines a year back.
FUTURE_TOLERANCE = timedelta(days=2)

# A month that goes backwards by at least this many months starts a new year (December, then
# January). A smaller step back is taken as lines written slightly out of order.
ROLLOVER_MIN_MONTHS = 6

_RFC3164 = re.compile(
    r"^(?:<(\d{1,3})>)?([A-Z][a-z]{2}) +(\d{1,2}) (?:(\d{4}) )?(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))? +(.*)$"
)
_IOSXR = re.compile(
    r"^([A-Za-z0-9]+(?:/[A-Za-z0-9]+)+):([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))? : (.*)$"
)
_RFC5424_HEAD = re.compile(r"^<(\d{1,3})>(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) ")
_SHOW_LOGGING_HEADER = re.compile(
    r"^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)? \S+"
    r"|Syslog logging: .*|\s+(?:Console|Monitor|Trap|Buffer) logging: .*|Log Buffer \(\d+ bytes\):)$"
)

FORMATS = ("auto", "rfc3164", "rfc5424", "jsonl", "iosxr")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One parsed log line. ``timestamp`` is timezone-aware."""

    timestamp: datetime
    host: str
    message: str
    line_number: int
    original: str


@dataclass
class ParseStats:
    """Counts of one or more files: lines read, records produced, lines skipped by reason."""

    lines: int = 0
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass(frozen=True)
class ParseOptions:
    """How to read lines that lack a year, a zone or a host.

    ``year`` is the year of the file's first dated line. Without it, the year is chosen so that
    the file's last line is the latest time not after ``reference_time`` (plus a tolerance),
    counting back one year for each December-to-January step in the file. ``timezone`` applies
    to timestamps written without an offset.
    """

    fmt: str = "auto"
    year: int | None = None
    host: str | None = None
    timezone: str = "UTC"
    reference_time: datetime | None = None


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_file(path: Path, options: ParseOptions, stats: ParseStats) -> Iterator[LogRecord]:
    """Yield the records of ``path`` in file order, counting every line in ``stats``."""
    zone = ZoneInfo(options.timezone)
    file_host = options.host or path.name.split(".", 1)[0]
    years = _YearTracker(options.year)
    if options.year is None:
        reference = options.reference_time or datetime.now(timezone.utc)
        years.start_from_last_line(_undated_positions(path, options.fmt), reference, zone)

    for line_number, line in _read_lines(path, stats):
        stats.lines += 1
        try:
            record = _parse_line(line, line_number, options, file_host, zone, years)
        except _Skip as skip:
            stats.skipped[skip.reason] += 1
            continue
        stats.records += 1
        yield record


def document_id(record: LogRecord, source_name: str) -> str:
    """Return a stable id for ``record``, so loading the same file twice overwrites, never duplicates."""
    key = f"{record.host}\0{source_name}\0{record.line_number}\0{record.original}"
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()


def _read_lines(path: Path, stats: ParseStats) -> Iterator[tuple[int, str]]:
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                stats.notes["invalid UTF-8 bytes replaced"] += 1
            yield line_number, line


def _parse_line(
    line: str, line_number: int, options: ParseOptions, file_host: str, zone: ZoneInfo, years: _YearTracker
) -> LogRecord:
    if not line.strip():
        raise _Skip("empty line")
    fmt = options.fmt if options.fmt != "auto" else _detect_format(line)
    if fmt == "jsonl":
        timestamp, host, message = _parse_json(line, zone)
    elif fmt == "rfc5424":
        timestamp, host, message = _parse_rfc5424(line)
    elif fmt == "iosxr":
        timestamp, message = _parse_iosxr(line, zone, years)
        host = file_host
    elif fmt == "rfc3164":
        timestamp, host, message = _parse_rfc3164(line, zone, years)
    elif fmt == "show-logging-header":
        raise _Skip("show logging header")
    else:
        raise _Skip("unrecognised format")

    if not host:
        host = options.host or ""
    if not host:
        raise _Skip("missing host")
    if message is None or not message.strip():
        raise _Skip("missing message")
    return LogRecord(timestamp, host, message, line_number, line)


def _detect_format(line: str) -> str:
    first = line[0]
    if first == "{":
        return "jsonl"
    if first == "<" and _RFC5424_HEAD.match(line):
        return "rfc5424"
    if _RFC3164.match(line):
        return "rfc3164"
    if _IOSXR.match(line):
        return "iosxr"
    if _SHOW_LOGGING_HEADER.match(line):
        return "show-logging-header"
    return "unknown"


def _parse_rfc3164(line: str, zone: ZoneInfo, years: _YearTracker) -> tuple[datetime, str, str]:
    match = _RFC3164.match(line)
    if match is None:
        raise _Skip("invalid RFC 3164 line")
    priority, month_name, day, year, hour, minute, second, fraction, rest = match.groups()
    _check_priority(priority)
    month = MONTHS.get(month_name)
    if month is None:
        raise _Skip("invalid timestamp")
    if year is None:
        year = years.year_for(month)
    timestamp = _local_time(int(year), month, int(day), int(hour), int(minute), int(second), fraction, zone)

    host, _, message = rest.partition(" ")
    if host.endswith(":") or "[" in host:
        # No HOSTNAME field: the first word is already the TAG.
        return timestamp, "", rest
    return timestamp, host, message


def _parse_iosxr(line: str, zone: ZoneInfo, years: _YearTracker) -> tuple[datetime, str]:
    match = _IOSXR.match(line)
    if match is None:
        raise _Skip("invalid IOS-XR line")
    _, month_name, day, hour, minute, second, fraction, message = match.groups()
    month = MONTHS.get(month_name)
    if month is None:
        raise _Skip("invalid timestamp")
    year = years.year_for(month)
    timestamp = _local_time(year, month, int(day), int(hour), int(minute), int(second), fraction, zone)
    return timestamp, message


def _parse_rfc5424(line: str) -> tuple[datetime, str, str]:
    match = _RFC5424_HEAD.match(line)
    if match is None:
        raise _Skip("invalid RFC 5424 line")
    priority, _, stamp, host, app, procid, _ = match.groups()
    _check_priority(priority)
    if stamp == "-":
        raise _Skip("missing timestamp")
    try:
        timestamp = datetime.fromisoformat(stamp)
    except ValueError:
        raise _Skip("invalid timestamp") from None
    if timestamp.tzinfo is None:
        raise _Skip("invalid timestamp")

    rest = line[match.end():]
    text = _skip_structured_data(rest)
    if text.startswith("\ufeff"):
        text = text[1:]
    if app != "-" and procid != "-":
        message = f"{app}[{procid}]: {text}"
    elif app != "-":
        message = f"{app}: {text}"
    else:
        message = text
    return timestamp, "" if host == "-" else host, message


def _check_priority(priority: str | None) -> None:
    # PRI is facility * 8 + severity, with facilities 0 to 23: at most 191.
    if priority is not None and int(priority) > 191:
        raise _Skip("invalid priority")


def _skip_structured_data(rest: str) -> str:
    """Return the MSG part after RFC 5424 STRUCTURED-DATA, honouring escaped characters."""
    if rest.startswith("-"):
        return rest[2:] if rest.startswith("- ") else rest[1:]
    position = 0
    while position < len(rest) and rest[position] == "[":
        position += 1
        in_quotes = False
        while position < len(rest):
            char = rest[position]
            if char == "\\":
                position += 2
                continue
            if char == '"':
                in_quotes = not in_quotes
            elif char == "]" and not in_quotes:
                break
            position += 1
        else:
            raise _Skip("invalid RFC 5424 structured data")
        position += 1
    if position == 0:
        raise _Skip("invalid RFC 5424 structured data")
    return rest[position + 1:] if rest[position:position + 1] == " " else rest[position:]


def _parse_json(line: str, zone: ZoneInfo) -> tuple[datetime, str, str | None]:
    try:
        document = json.loads(line)
    except ValueError:
        raise _Skip("invalid JSON") from None
    if not isinstance(document, dict):
        raise _Skip("invalid JSON")

    stamp = document.get("@timestamp")
    if stamp is None:
        raise _Skip("missing timestamp")
    timestamp = _json_timestamp(stamp, zone)

    host = document.get("host.name")
    if host is None:
        nested = document.get("host")
        host = nested.get("name") if isinstance(nested, dict) else nested
    message = document.get("message")
    if host is not None and not isinstance(host, str):
        raise _Skip("invalid host")
    if message is not None and not isinstance(message, str):
        raise _Skip("invalid message")
    return timestamp, host or "", message


def _json_timestamp(stamp: object, zone: ZoneInfo) -> datetime:
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        try:
            return datetime.fromtimestamp(stamp / 1000.0, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise _Skip("invalid timestamp") from None
    if not isinstance(stamp, str):
        raise _Skip("invalid timestamp")
    try:
        timestamp = datetime.fromisoformat(stamp)
    except ValueError:
        raise _Skip("invalid timestamp") from None
    return timestamp if timestamp.tzinfo is not None else timestamp.replace(tzinfo=zone)


def _local_time(
    year: int, month: int, day: int, hour: int, minute: int, second: int, fraction: str | None, zone: ZoneInfo
) -> datetime:
    microsecond = int((fraction or "0").ljust(6, "0")[:6])
    try:
        return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone)
    except ValueError:
        raise _Skip("invalid timestamp") from None


class _YearTracker:
    """The year of each undated line, moving to the next year when the month wraps around."""

    def __init__(self, first_year: int | None) -> None:
        self.year = first_year
        self.previous_month: int | None = None

    def start_from_last_line(
        self, positions: list[tuple[int, int, int, int, int]], reference: datetime, zone: ZoneInfo
    ) -> None:
        """Set the first line's year from the months of all undated lines and the reference time.

        ``positions`` contains (month, day, hour, minute, second) of each undated line in file order.
        """
        if not positions:
            self.year = reference.year
            return
        rollovers = 0
        previous = positions[0][0]
        for month, *_ in positions[1:]:
            if _is_rollover(previous, month):
                rollovers += 1
            previous = month
        last_year = _latest_year_not_after(positions[-1], reference, zone)
        self.year = last_year - rollovers

    def year_for(self, month: int) -> int:
        assert self.year is not None
        if self.previous_month is not None and _is_rollover(self.previous_month, month):
            self.year += 1
        self.previous_month = month
        return self.year


def _is_rollover(previous_month: int, month: int) -> bool:
    return previous_month - month >= ROLLOVER_MIN_MONTHS


def _latest_year_not_after(position: tuple[int, int, int, int, int], reference: datetime, zone: ZoneInfo) -> int:
    month, day, hour, minute, second = position
    limit = reference + FUTURE_TOLERANCE
    for year in range(reference.year + 1, reference.year - 8, -1):
        try:
            candidate = datetime(year, month, day, hour, minute, second, tzinfo=zone)
        except ValueError:
            continue  # 29 February in a year that has none
        if candidate <= limit:
            return year
    return reference.year


def _undated_positions(path: Path, fmt: str) -> list[tuple[int, int, int, int, int]]:
    """Return (month, day, hour, minute, second) of each line that carries no year, in file order."""
    positions: list[tuple[int, int, int, int, int]] = []
    with path.open("rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                continue
            if fmt in ("auto", "rfc3164"):
                match = _RFC3164.match(line)
                if match is not None and match.group(4) is None and match.group(2) in MONTHS:
                    _, month, day, _, hour, minute, second, _, _ = match.groups()
                    positions.append((MONTHS[month], int(day), int(hour), int(minute), int(second)))
                    continue
            if fmt in ("auto", "iosxr"):
                match = _IOSXR.match(line)
                if match is not None and match.group(2) in MONTHS:
                    _, month, day, hour, minute, second, _, _ = match.groups()
                    positions.append((MONTHS[month], int(day), int(hour), int(minute), int(second)))
    return positions
