from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from loglatent.config import ScheduleConfig, load_config
from loglatent.errors import ConfigError
from loglatent.schedule import JOBS, fire_times, triggers

BERLIN = ZoneInfo("Europe/Berlin")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def local_days(start: str, days: int) -> list[date]:
    first = date.fromisoformat(start)
    return [first + timedelta(days=offset) for offset in range(days)]


@pytest.mark.parametrize("switch", ["2024-03-31", "2024-10-27"])
@pytest.mark.parametrize("expression", ["30 2 * * *", "0 3 * * *", "59 1 * * *", "15 0 * * *"])
def test_daily_job_once_per_local_day(switch: str, expression: str) -> None:
    schedule = ScheduleConfig(timezone="Europe/Berlin", detect={"cron": expression})
    middle = date.fromisoformat(switch)
    start = datetime(middle.year, middle.month, middle.day - 4, tzinfo=BERLIN)
    end = start + timedelta(days=9)

    times = fire_times(triggers(schedule)["detect"], start, end)
    days = [moment.astimezone(BERLIN).date() for moment in times]

    assert days == local_days((middle - timedelta(days=4)).isoformat(), 9)
    assert times == sorted(times)


def test_skipped_local_time_fires_once_an_hour_late() -> None:
    schedule = ScheduleConfig(timezone="Europe/Berlin", detect={"cron": "30 2 * * *"})
    start = datetime(2024, 3, 31, 0, 0, tzinfo=BERLIN)
    times = fire_times(triggers(schedule)["detect"], start, start + timedelta(hours=12))
    assert [moment.astimezone(timezone.utc).isoformat() for moment in times] == ["2024-03-31T01:30:00+00:00"]


def test_frequent_job_never_repeats_wall_time() -> None:
    schedule = ScheduleConfig(timezone="Europe/Berlin", ingest={"cron": "*/10 * * * *"})
    start = datetime(2024, 10, 26, 22, 0, tzinfo=timezone.utc)
    times = fire_times(triggers(schedule)["ingest"], start, start + timedelta(hours=6))
    wall_times = [moment.astimezone(BERLIN).replace(tzinfo=None) for moment in times]

    assert len(wall_times) == len(set(wall_times))
    assert wall_times == sorted(wall_times)
    # The repeated hour 02:00-03:00 runs once, so six hours of UTC hold five hours of runs.
    assert len(times) == 5 * 6


def test_default_schedule_has_every_job() -> None:
    schedule = ScheduleConfig()
    assert set(triggers(schedule)) == set(JOBS)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert len(fire_times(triggers(schedule)["ingest"], start, start + timedelta(hours=1))) == 6
    assert len(fire_times(triggers(schedule)["train"], start, start + timedelta(days=14))) == 2


def test_invalid_cron_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "schedule:\n  detect:\n    cron: '61 0 * * *'\n"), environ={})
    message = str(error.value)
    assert "schedule.detect.cron" in message
    assert "'61 0 * * *'" in message
    assert "five fields" in message


def test_unknown_timezone_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "schedule:\n  timezone: Europe/Berlinn\n"), environ={})
    message = str(error.value)
    assert "schedule.timezone" in message
    assert "did you mean 'Europe/Berlin'" in message


def test_unknown_job_key_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "schedule:\n  ingest:\n    cron: '*/5 * * * *'\n    every: 5m\n"), environ={})
    assert "schedule.ingest.every: unknown key" in str(error.value)


def test_misplaced_grace_time_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "schedule:\n  misfire_grace_seconds: 60\n"), environ={})
    message = str(error.value)
    assert "schedule.misfire_grace_seconds: unknown key" in message
    assert ("it belongs under one of 'schedule.ingest', 'schedule.detect', 'schedule.train', 'schedule.digest'"
            in message)
