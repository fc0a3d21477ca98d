from datetime import datetime, timezone
from pathlib import Path

import pytest

from loglatent.logfiles import ParseOptions, ParseStats, parse_file


def parse(tmp_path: Path, text: str | bytes, name: str = "app.log", **options: object):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    stats = ParseStats()
    records = list(parse_file(path, ParseOptions(**options), stats))  # type: ignore[arg-type]
    return records, stats


def test_rfc3164_with_and_without_priority(tmp_path: Path) -> None:
    records, stats = parse(
        tmp_path,
        "Jun  9 06:06:20 combo syslogd 1.4.1: restart.\n"
        "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8\n",
        year=2005,
    )
    assert stats.skipped_total == 0
    assert records[0].timestamp == datetime(2005, 6, 9, 6, 6, 20, tzinfo=timezone.utc)
    assert records[0].host == "combo"
    assert records[0].message == "syslogd 1.4.1: restart."
    assert records[1].host == "mymachine"
    assert records[1].message.startswith("su: 'su root' failed")


def test_rfc3164_without_hostname_uses_host_option(tmp_path: Path) -> None:
    records, stats = parse(tmp_path, "Jun  9 06:06:20 sshd[12]: hello\n", year=2005, host="edge1")
    assert records[0].host == "edge1"
    assert records[0].message == "sshd[12]: hello"
    records, stats = parse(tmp_path, "Jun  9 06:06:20 sshd[12]: hello\n", year=2005)
    assert records == []
    assert stats.skipped["missing host"] == 1


def test_rfc3164_timezone_applies_to_local_times(tmp_path: Path) -> None:
    records, _ = parse(tmp_path, "Jul  1 12:00:00 h app: x\n", year=2024, timezone="Europe/Berlin")
    assert records[0].timestamp.astimezone(timezone.utc) == datetime(2024, 7, 1, 10, 0, tzinfo=timezone.utc)


def test_year_rolls_over_when_month_goes_back(tmp_path: Path) -> None:
    records, _ = parse(
        tmp_path,
        "Dec 31 23:59:58 h app: a\nJan  1 00:00:01 h app: b\nFeb  1 00:00:01 h app: c\nJan 31 23:00:00 h app: d\n",
        year=2005,
    )
    assert [r.timestamp.year for r in records] == [2005, 2006, 2006, 2006]


def test_year_inferred_so_no_line_is_in_future(tmp_path: Path) -> None:
    reference = datetime(2026, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
    records, _ = parse(tmp_path, "Dec 31 23:59:58 h app: late\n", reference_time=reference)
    assert records[0].timestamp == datetime(2025, 12, 31, 23, 59, 58, tzinfo=timezone.utc)


def test_year_inference_counts_rollovers_back_from_last_line(tmp_path: Path) -> None:
    reference = datetime(2006, 3, 1, tzinfo=timezone.utc)
    records, _ = parse(
        tmp_path, "Jun  9 06:06:20 h a: x\nDec 31 10:00:00 h a: y\nFeb 28 04:48:54 h a: z\n", reference_time=reference
    )
    assert [r.timestamp.year for r in records] == [2005, 2005, 2006]


def test_rfc5424_with_structured_data(tmp_path: Path) -> None:
    line = (
        '<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
        '[exampleSDID@32473 iut="3" eventSource="App\\]lication" eventID="1011"] \ufeffAn application event\n'
    )
    records, stats = parse(tmp_path, line)
    assert stats.skipped_total == 0
    assert records[0].host == "mymachine.example.com"
    assert records[0].message == "evntslog: An application event"
    assert records[0].timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=timezone.utc)


def test_rfc5424_nil_structured_data_and_procid(tmp_path: Path) -> None:
    records, _ = parse(tmp_path, "<34>1 2024-03-31T01:30:00+01:00 r1 sshd 4711 - - Accepted key\n")
    assert records[0].message == "sshd[4711]: Accepted key"
    assert records[0].timestamp.astimezone(timezone.utc) == datetime(2024, 3, 31, 0, 30, tzinfo=timezone.utc)


def test_json_lines_nested_and_dotted_host(tmp_path: Path) -> None:
    records, stats = parse(
        tmp_path,
        '{"@timestamp": "2024-01-02T03:04:05Z", "host": {"name": "a"}, "message": "one"}\n'
        '{"@timestamp": "2024-01-02T03:04:06.5+00:00", "host.name": "b", "message": "two"}\n'
        '{"@timestamp": 1704164647000, "host": "c", "message": "three"}\n'
        '{"@timestamp": "2024-01-02T03:04:05Z", "host": {"name": "a"}}\n'
        '{"host": {"name": "a"}, "message": "no time"}\n'
        "{not json\n",
    )
    assert [r.host for r in records] == ["a", "b", "c"]
    assert records[2].timestamp == datetime(2024, 1, 2, 3, 4, 7, tzinfo=timezone.utc)
    assert stats.skipped == {"missing message": 1, "missing timestamp": 1, "invalid JSON": 1}


def test_iosxr_lines_take_host_from_file_name(tmp_path: Path) -> None:
    text = (
        "\nFri Sep  1 19:50:04.981 UTC\nSyslog logging: enabled (0 messages dropped, 0 flushes, 0 overruns)\n"
        "    Console logging: level warnings, 174 messages logged\n"
        "RP/0/RP0/CPU0:Sep  1 16:08:42.033 : bgp[1015]: %ROUTING-BGP-5-ADJCHANGE : neighbor 172.31.13.30 Down \n"
        "LC/0/1/CPU0:Sep 19 16:52:12.382 : ifmgr[120]: %PKT_INFRA-LINK-3-UPDOWN : Interface Hu0/1/0/35, Down \n"
    )
    records, stats = parse(tmp_path, text, name="leaf4.portflap.log", year=2017)
    assert [r.host for r in records] == ["leaf4", "leaf4"]
    assert records[0].timestamp == datetime(2017, 9, 1, 16, 8, 42, 33000, tzinfo=timezone.utc)
    assert records[0].message.startswith("bgp[1015]: %ROUTING-BGP-5-ADJCHANGE")
    assert stats.skipped == {"empty line": 1, "show logging header": 3}


def test_invalid_utf8_is_replaced_and_kept(tmp_path: Path) -> None:
    records, stats = parse(tmp_path, b"Jun  9 06:06:20 h rpc.statd[1]: gethostbyname error for \xff\xfe%8x\n", year=2005)
    assert len(records) == 1
    assert "\ufffd" in records[0].message
    assert stats.notes["invalid UTF-8 bytes replaced"] == 1


def test_priority_above_191_is_invalid(tmp_path: Path) -> None:
    records, stats = parse(tmp_path, "<999>Jun  9 06:06:20 h app: x\n<999>1 2024-01-01T00:00:00Z h app - - - x\n", year=2005)
    assert records == []
    assert stats.skipped == {"invalid priority": 2}


def test_unknown_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    records, stats = parse(tmp_path, "garbage\nJun  9 06:06:20 h app: ok\nFoo 12 12:00:00 h app: bad month\n", year=2005)
    assert len(records) == 1
    assert stats.lines == 3
    assert stats.skipped == {"unrecognised format": 1, "invalid timestamp": 1}


@pytest.mark.parametrize("sample", ["samples/loghub-linux/Linux.log"])
def test_bundled_linux_log_parses_completely(sample: str) -> None:
    path = Path(__file__).resolve().parent.parent / sample
    stats = ParseStats()
    records = list(parse_file(path, ParseOptions(year=2005), stats))
    assert stats.lines == 25567
    assert len(records) == 25567
    assert records[0].timestamp.date().isoformat() == "2005-06-09"
    assert records[-1].timestamp.date().isoformat() == "2006-02-28"
