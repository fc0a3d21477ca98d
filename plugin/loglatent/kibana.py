"""Links into Kibana: Discover filtered to one event's day, and the loglatent dashboard.

The ids are fixed so that links from the digest keep working after the saved objects in
``kibana/`` are imported again.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo

DATA_VIEW_ID = "loglatent-anomalies"
DASHBOARD_ID = "loglatent-overview"

# Characters that Rison uses and that may stay unescaped in the fragment of a Kibana URL.
_RISON_SAFE = "():,'!*-_.~"


def rison_string(text: str) -> str:
    """Quote ``text`` as a Rison string: in single quotes, with ``!`` and ``'`` escaped by ``!``."""
    return "'" + text.replace("!", "!!").replace("'", "!'") + "'"


def time_range(first_day: str, last_day: str, zone: ZoneInfo) -> tuple[str, str]:
    """Return the ISO 8601 start and end of the local days ``first_day`` to ``last_day``."""
    start = datetime.combine(date.fromisoformat(first_day), time(0), tzinfo=zone)
    end = datetime.combine(date.fromisoformat(last_day) + timedelta(days=1), time(0), tzinfo=zone)
    return start.isoformat(), end.isoformat()


def _global_state(first_day: str, last_day: str, zone: ZoneInfo) -> str:
    start, end = time_range(first_day, last_day, zone)
    return f"(time:(from:{rison_string(start)},to:{rison_string(end)}))"


def discover_url(base: str, host: str, template_id: int, day: str, zone: ZoneInfo) -> str:
    """Return a Discover link to the anomaly documents of one event on one day."""
    kuery = f'host:"{_kuery_escape(host)}" and template_id:{int(template_id)}'
    app_state = f"(dataSource:(dataViewId:{rison_string(DATA_VIEW_ID)},type:dataView),"
    app_state += f"query:(language:kuery,query:{rison_string(kuery)}))"
    return (f"{base}/app/discover#/?_g={quote(_global_state(day, day, zone), safe=_RISON_SAFE)}"
            f"&_a={quote(app_state, safe=_RISON_SAFE)}")


def dashboard_url(base: str, first_day: str, last_day: str, zone: ZoneInfo) -> str:
    """Return a link to the loglatent dashboard over the local days ``first_day`` to ``last_day``."""
    return f"{base}/app/dashboards#/view/{DASHBOARD_ID}?_g={quote(_global_state(first_day, last_day, zone), safe=_RISON_SAFE)}"


def _kuery_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
