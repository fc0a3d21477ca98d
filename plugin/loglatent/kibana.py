"""Links into Kibana: Discover filtered to one event's day, and the loglatent dashboard.

The ids are fixed so that links from the digest keep working after the saved objects in
``kibana/`` are imported again.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from loglatent.errors import KibanaError

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
    # 'index' is the app state that Discover reads in 8.11 and still accepts after 8.15 added 'dataSource'.
    app_state = f"(index:{rison_string(DATA_VIEW_ID)},"
    app_state += f"query:(language:kuery,query:{rison_string(kuery)}))"
    return (f"{base}/app/discover#/?_g={quote(_global_state(day, day, zone), safe=_RISON_SAFE)}"
            f"&_a={quote(app_state, safe=_RISON_SAFE)}")


def dashboard_url(base: str, first_day: str, last_day: str, zone: ZoneInfo) -> str:
    """Return a link to the loglatent dashboard over the local days ``first_day`` to ``last_day``."""
    return f"{base}/app/dashboards#/view/{DASHBOARD_ID}?_g={quote(_global_state(first_day, last_day, zone), safe=_RISON_SAFE)}"


def _kuery_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# Saved objects


MINIMUM_VERSION = (8, 11, 0)
SCORES_VIEW_ID = "loglatent-scores"
SEARCH_ID = "loglatent-anomaly-table"
BUNDLE = Path(__file__).resolve().parents[2] / "kibana" / "loglatent.ndjson"
_TYPE_VERSIONS = {"index-pattern": "8.0.0", "search": "8.0.0", "lens": "8.9.0", "dashboard": "8.9.0"}
_COUNT = {"label": "Anomalies", "dataType": "number", "operationType": "count", "isBucketed": False,
          "scale": "ratio", "sourceField": "___records___", "customLabel": True}


def _days(column_label: str = "Day") -> dict[str, Any]:
    return {"label": column_label, "dataType": "date", "operationType": "date_histogram", "sourceField": "@timestamp",
            "isBucketed": True, "scale": "interval", "customLabel": True,
            "params": {"interval": "1d", "includeEmptyRows": True, "dropPartials": False}}


def _top(field: str, label: str, size: int, order_column: str) -> dict[str, Any]:
    return {"label": label, "dataType": "string", "operationType": "terms", "sourceField": field, "isBucketed": True,
            "scale": "ordinal", "customLabel": True,
            "params": {"size": size, "orderBy": {"type": "column", "columnId": order_column}, "orderDirection": "desc",
                       "otherBucket": True, "missingBucket": False}}


def _lens(object_id: str, title: str, description: str, view: str, layer: str, columns: dict[str, dict[str, Any]],
          visualization_type: str, visualization: dict[str, Any], query: str = "",
          extra_references: list[dict[str, str]] | None = None) -> dict[str, Any]:
    references = [{"type": "index-pattern", "id": view, "name": f"indexpattern-datasource-layer-{layer}"}]
    return {
        "id": object_id,
        "type": "lens",
        "attributes": {
            "title": title,
            "description": description,
            "visualizationType": visualization_type,
            "state": {
                "datasourceStates": {"formBased": {"layers": {layer: {
                    "columns": columns, "columnOrder": list(columns), "incompleteColumns": {}}}}},
                "visualization": visualization,
                "query": {"query": query, "language": "kuery"},
                "filters": [],
            },
        },
        "references": references + (extra_references or []),
    }


def _xy_layer(layer: str, series: str, x: str, y: list[str], split: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"layerId": layer, "layerType": "data", "seriesType": series, "xAccessor": x,
                             "accessors": y}
    if split is not None:
        entry["splitAccessor"] = split
    return entry


def saved_objects() -> list[dict[str, Any]]:
    """Build the saved objects of the bundle: two data views, a saved search, four Lens panels, a dashboard."""
    anomalies_view: dict[str, Any] = {
        "id": DATA_VIEW_ID, "type": "index-pattern",
        "attributes": {"title": "loglatent-anomalies", "name": "loglatent anomalies", "timeFieldName": "@timestamp"},
        "references": [],
    }
    scores_view: dict[str, Any] = {
        "id": SCORES_VIEW_ID, "type": "index-pattern",
        "attributes": {"title": "loglatent-anomalies-scores", "name": "loglatent scores per event and day",
                       "timeFieldName": "@timestamp"},
        "references": [],
    }
    search: dict[str, Any] = {
        "id": SEARCH_ID, "type": "search",
        "attributes": {
            "title": "loglatent anomalies",
            "description": "Every anomalous event-day, newest first.",
            "columns": ["host", "template", "method", "reason", "count", "typical_count", "votes", "ensemble_size",
                        "example", "model_version"],
            "sort": [["@timestamp", "desc"]],
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({
                "query": {"query": "", "language": "kuery"}, "filter": [],
                "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index"})},
        },
        "references": [{"type": "index-pattern", "id": DATA_VIEW_ID,
                        "name": "kibanaSavedObjectMeta.searchSourceJSON.index"}],
    }
    over_time = _lens(
        "loglatent-anomalies-over-time", "Anomalies per day by method",
        "Anomalous event-days per day, stacked by detection method.", DATA_VIEW_ID, "over-time",
        {"day": _days(), "method": _top("method", "Method", 5, "count"), "count": _COUNT},
        "lnsXY",
        {"legend": {"isVisible": True, "position": "right"}, "preferredSeriesType": "bar_stacked",
         "valueLabels": "hide", "layers": [_xy_layer("over-time", "bar_stacked", "day", ["count"], "method")]},
    )
    top_hosts = _lens(
        "loglatent-top-hosts", "Hosts with the most anomalies", "", DATA_VIEW_ID, "hosts",
        {"host": _top("host", "Host", 10, "count"), "count": _COUNT},
        "lnsXY",
        {"legend": {"isVisible": False, "position": "right"}, "preferredSeriesType": "bar_horizontal",
         "valueLabels": "show", "layers": [_xy_layer("hosts", "bar_horizontal", "host", ["count"])]},
    )
    top_templates = _lens(
        "loglatent-top-templates", "Templates with the most anomalies", "", DATA_VIEW_ID, "templates",
        {"template": _top("template", "Template", 15, "count"), "count": _COUNT},
        "lnsDatatable",
        {"layerId": "templates", "layerType": "data", "columns": [{"columnId": "template"}, {"columnId": "count"}]},
    )
    scores = _lens(
        "loglatent-event-scores", "KL per day of the events with the highest peaks",
        "Mean KL divergence of the ensemble per event and day. Markers: days the vote flagged.",
        SCORES_VIEW_ID, "scores",
        {"day": _days(), "event": _top("event", "Event", 10, "peak"),
         "score": {"label": "KL", "dataType": "number", "operationType": "average", "sourceField": "kl",
                   "isBucketed": False, "scale": "ratio", "customLabel": True},
         "peak": {"label": "Highest KL", "dataType": "number", "operationType": "max", "sourceField": "kl",
                  "isBucketed": False, "scale": "ratio", "customLabel": True}},
        "lnsXY",
        {"legend": {"isVisible": True, "position": "right"}, "preferredSeriesType": "line",
         "layers": [
             _xy_layer("scores", "line", "day", ["score"], "event"),
             {"layerId": "flagged", "layerType": "annotations", "ignoreGlobalFilters": False, "annotations": [{
                 "type": "query", "id": "flagged-days", "label": "Flagged by the vote", "key": {"type": "point_in_time"},
                 "color": "#E7664C", "timeField": "@timestamp", "icon": "alert",
                 "filter": {"type": "kibana_query", "query": "anomalous:true", "language": "kuery"},
                 "extraFields": ["event", "kl", "votes"]}]},
         ]},
        query="method:cvae",
        extra_references=[{"type": "index-pattern", "id": SCORES_VIEW_ID, "name": "xy-visualization-layer-flagged"}],
    )
    panels = [
        (over_time, {"x": 0, "y": 0, "w": 32, "h": 12}),
        (top_hosts, {"x": 32, "y": 0, "w": 16, "h": 12}),
        (scores, {"x": 0, "y": 12, "w": 32, "h": 15}),
        (top_templates, {"x": 32, "y": 12, "w": 16, "h": 15}),
        (search, {"x": 0, "y": 27, "w": 48, "h": 18}),
    ]
    panels_json = []
    references = []
    for number, (saved, grid) in enumerate(panels, start=1):
        index = str(number)
        panels_json.append({"version": "8.11.0", "type": saved["type"], "panelIndex": index,
                            "gridData": {**grid, "i": index}, "embeddableConfig": {},
                            "panelRefName": f"panel_{index}"})
        references.append({"type": saved["type"], "id": saved["id"], "name": f"{index}:panel_{index}"})
    dashboard: dict[str, Any] = {
        "id": DASHBOARD_ID, "type": "dashboard",
        "attributes": {
            "title": "loglatent overview",
            "description": "Anomalies found by loglatent: per day and method, by host and template, each event's KL.",
            "panelsJSON": json.dumps(panels_json),
            "optionsJSON": json.dumps({"useMargins": True, "syncColors": True, "hidePanelTitles": False}),
            "timeRestore": True, "timeFrom": "now-30d/d", "timeTo": "now",
            "refreshInterval": {"pause": True, "value": 60000},
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(
                {"query": {"query": "", "language": "kuery"}, "filter": []})},
        },
        "references": references,
    }
    objects: list[dict[str, Any]] = [anomalies_view, scores_view, search, over_time, top_hosts, top_templates, scores,
                                     dashboard]
    # The attributes follow the schema of these versions; Kibana migrates them forward on import.
    for item in objects:
        item["coreMigrationVersion"] = "8.8.0"
        item["typeMigrationVersion"] = _TYPE_VERSIONS[item["type"]]
    return objects


def bundle_text(objects: list[dict[str, Any]]) -> str:
    """Return ``objects`` as NDJSON: one object per line, keys sorted, so the bundle diffs cleanly."""
    return "".join(json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n" for item in objects)


def read_bundle(path: Path = BUNDLE) -> list[dict[str, Any]]:
    """Read the saved objects of the NDJSON bundle at ``path``."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def for_indices(objects: list[dict[str, Any]], anomaly_index: str, scores_index: str) -> list[dict[str, Any]]:
    """Return ``objects`` with the data views pointed at the configured anomaly and score indices."""
    titles = {DATA_VIEW_ID: anomaly_index, SCORES_VIEW_ID: scores_index}
    adjusted = []
    for item in objects:
        if item["type"] == "index-pattern" and item["id"] in titles:
            item = {**item, "attributes": {**item["attributes"], "title": titles[item["id"]]}}
        adjusted.append(item)
    return adjusted



# Import through the saved objects API


@dataclass
class ImportResult:
    """Outcome of one import: objects imported, and each failed object with its reason."""

    version: str
    imported: int
    failed: list[str] = field(default_factory=list)


def import_objects(url: str, objects: list[dict[str, Any]], space: str | None = None,
                   timeout: float = 30.0) -> ImportResult:
    """Import ``objects`` into the Kibana at ``url``, overwriting objects with the same ids.

    The Kibana version is read first; an older version than ``MINIMUM_VERSION`` raises
    KibanaError before anything is written. Credentials come from ``LOGLATENT_KIBANA_API_KEY``,
    or ``LOGLATENT_KIBANA_USERNAME`` and ``LOGLATENT_KIBANA_PASSWORD``.
    """
    base = url.rstrip("/")
    headers = _auth_headers()
    status = _request("GET", f"{base}/api/status", headers, timeout=timeout)
    version = str(status.get("version", {}).get("number", ""))
    if _version_tuple(version) < MINIMUM_VERSION:
        minimum = ".".join(map(str, MINIMUM_VERSION))
        raise KibanaError(f"Kibana at {base} runs version {version or 'unknown'}; the loglatent objects need {minimum} "
                          "or later. Upgrade Kibana; kibana/README.md lists the objects to build by hand")
    boundary = f"loglatent-{uuid.uuid4().hex}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"loglatent.ndjson\"\r\n"
            f"Content-Type: application/ndjson\r\n\r\n{bundle_text(objects)}\r\n--{boundary}--\r\n").encode("utf-8")
    prefix = f"/s/{quote(space, safe='')}" if space else ""
    answer = _request("POST", f"{base}{prefix}/api/saved_objects/_import?overwrite=true",
                      {**headers, "kbn-xsrf": "loglatent", "Content-Type": f"multipart/form-data; boundary={boundary}"},
                      body, timeout)
    failed = [f"{error.get('type', '?')} {error.get('id', '?')} ({error.get('title') or 'untitled'}): "
              f"{_error_text(error.get('error', {}))}" for error in answer.get("errors", [])]
    return ImportResult(version, int(answer.get("successCount", 0)), failed)


def _auth_headers() -> dict[str, str]:
    api_key = os.environ.get("LOGLATENT_KIBANA_API_KEY")
    username = os.environ.get("LOGLATENT_KIBANA_USERNAME")
    password = os.environ.get("LOGLATENT_KIBANA_PASSWORD")
    if api_key:
        return {"Authorization": f"ApiKey {api_key}"}
    if bool(username) != bool(password):
        raise KibanaError("set both LOGLATENT_KIBANA_USERNAME and LOGLATENT_KIBANA_PASSWORD, or neither")
    if username and password:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def _request(method: str, url: str, headers: dict[str, str], body: bytes | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.loads(response.read().decode("utf-8")))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        hint = " (check LOGLATENT_KIBANA_API_KEY or the user name and password)" if exc.code in (401, 403) else ""
        raise KibanaError(f"{method} {url} failed with HTTP {exc.code}{hint}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KibanaError(f"cannot reach Kibana at {url}: {reason}; check --url and that Kibana is running") from None
    except json.JSONDecodeError:
        raise KibanaError(f"{method} {url} did not return JSON; is --url the Kibana base URL?") from None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("-")[0].split(".")[:3]:
        if not part.isdigit():
            return (0,)
        parts.append(int(part))
    return tuple(parts)


def _error_text(error: dict[str, Any]) -> str:
    kind = error.get("type", "error")
    if kind == "missing_references":
        missing = ", ".join(f"{ref.get('type')} {ref.get('id')}" for ref in error.get("references", []))
        return f"missing references: {missing}"
    return str(error.get("message") or kind)


if __name__ == "__main__":
    # Regenerate the bundle: python -m loglatent.kibana > kibana/loglatent.ndjson
    import sys

    sys.stdout.write(bundle_text(saved_objects()))
