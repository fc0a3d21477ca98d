"""The worker's schedule: cron triggers built from the ``schedule`` section.

Each job fires at local wall-clock times in ``schedule.timezone``, and each wall-clock time fires
at most once. APScheduler 3.11.3's ``CronTrigger`` with a zone fires a daily 02:30 job twice on
the day an hour repeats, and skips 2024-04-01 00:15 in Europe/Berlin after the spring change, so
``WallClockTrigger`` computes the wall-clock times itself. A job that runs every few minutes
pauses through a repeated hour. A time in a skipped hour fires once, an hour late on the clock.

The triggers are computed, not waited for, so tests can step a controlled clock through such days.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from loglatent.config import ScheduleConfig

JOBS = ("ingest", "detect", "train", "digest")


class WallClockTrigger(BaseTrigger):
    """A cron trigger that steps through local wall-clock times and fires each at most once.

    The cron expression runs over naive wall-clock times (held in UTC, which has no
    daylight-saving time), and each wall-clock time becomes a moment in ``zone``. A time that
    occurs twice maps to its first occurrence. A time that does not exist maps to the moment with
    the offset from before the change, which is an hour later on the clock.
    """

    def __init__(self, expression: str, zone: tzinfo) -> None:
        self.cron = CronTrigger.from_crontab(expression, timezone=timezone.utc)
        self.zone = zone

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        wall = self.cron.get_next_fire_time(None, self._wall_clock(now))
        while wall is not None:
            moment = wall.replace(tzinfo=self.zone)  # fold=0: the first of a repeated time
            if moment >= now and (previous_fire_time is None or moment > previous_fire_time):
                return moment
            wall = self.cron.get_next_fire_time(wall, wall)
        return None

    def _wall_clock(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone).replace(tzinfo=timezone.utc)

    def __str__(self) -> str:
        return f"wall-clock {self.cron} in {self.zone}"


def triggers(schedule: ScheduleConfig) -> dict[str, WallClockTrigger]:
    """Return one trigger per job, reading its cron expression in ``schedule.timezone``."""
    return {job: WallClockTrigger(getattr(schedule, job).cron, schedule.zone) for job in JOBS}


def fire_times(trigger: Any, start: datetime, end: datetime) -> list[datetime]:
    """Return every time ``trigger`` fires after ``start`` and up to ``end`` (timezone-aware datetimes)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must carry a timezone")
    times: list[datetime] = []
    previous: datetime | None = None
    now = start
    while True:
        moment = trigger.get_next_fire_time(previous, now)
        if moment is None or moment > end:
            return times
        if moment > start:
            times.append(moment)
        previous = moment
        now = moment
