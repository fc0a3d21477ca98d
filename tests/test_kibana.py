"""The Kibana saved objects in kibana/ and the import command.

Kibana itself cannot run on the test machine, because no package registry reachable there
serves it. These tests stop at its boundary. They check the bundle against the index mappings and
against itself, and send the import to a local HTTP server that records each request and returns
responses shaped like those of Kibana's saved objects API.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loglatent.kibana import (
    BUNDLE,
    DASHBOARD_ID,
    DATA_VIEW_ID,
    SCORES_VIEW_ID,
    bundle_text,
    for_indices,
    read_bundle,
    saved_objects,
)
from loglatent.sink import ANOMALY_MAPPING, SCORES_MAPPING

MAPPINGS = {DATA_VIEW_ID: ANOMALY_MAPPING, SCORES_VIEW_ID: SCORES_MAPPING}


def test_bundle_is_generated_from_code() -> None:
    assert BUNDLE.read_text(encoding="utf-8") == bundle_text(saved_objects()), \
        "kibana/loglatent.ndjson is stale: python -m loglatent.kibana > kibana/loglatent.ndjson"


def fields_by_view(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Collect the fields each saved object reads, keyed by the data view it reads them from."""
    used: dict[str, set[str]] = {view: set() for view in MAPPINGS}
    for item in objects:
        attributes = item["attributes"]
        references = {ref["name"]: ref["id"] for ref in item["references"]}
        if item["type"] == "index-pattern":
            used[item["id"]].add(attributes["timeFieldName"])
        elif item["type"] == "search":
            view = references["kibanaSavedObjectMeta.searchSourceJSON.index"]
            used[view].update(attributes["columns"])
            used[view].update(column for column, _ in attributes["sort"])
        elif item["type"] == "lens":
            state = attributes["state"]
            for layer_id, layer in state["datasourceStates"]["formBased"]["layers"].items():
                view = references[f"indexpattern-datasource-layer-{layer_id}"]
                used[view].update(column["sourceField"] for column in layer["columns"].values()
                                  if column.get("sourceField") != "___records___")
                used[view].update(re.findall(r"([\w.@]+)\s*:", state["query"]["query"]))
            for layer in state["visualization"].get("layers", []):
                for annotation in layer.get("annotations", []):
                    view = references[f"xy-visualization-layer-{layer['layerId']}"]
                    used[view].add(annotation["timeField"])
                    used[view].update(annotation.get("extraFields", []))
                    used[view].update(re.findall(r"([\w.@]+)\s*:", annotation["filter"]["query"]))
    return used


def test_every_field_exists_in_mapping() -> None:
    used = fields_by_view(read_bundle())
    for view, fields in used.items():
        assert fields, f"no field found for {view}: the checker itself is broken"
        mapped = set(MAPPINGS[view]["properties"])
        assert fields - mapped == set(), f"{view} uses fields missing from its index mapping"
    assert {"kl", "anomalous", "event"} <= used[SCORES_VIEW_ID]
    assert {"host", "template", "method"} <= used[DATA_VIEW_ID]


def test_every_reference_resolves_in_bundle() -> None:
    objects = read_bundle()
    present = {(item["type"], item["id"]) for item in objects}
    assert len(present) == len(objects), "two objects share a type and id"
    for item in objects:
        for reference in item["references"]:
            assert (reference["type"], reference["id"]) in present, f"{item['id']} -> {reference}"
    dashboard = next(item for item in objects if item["id"] == DASHBOARD_ID)
    names = {ref["name"] for ref in dashboard["references"]}
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    assert len(panels) == 5
    for panel in panels:
        assert f"{panel['panelIndex']}:{panel['panelRefName']}" in names
    assert {ref["type"] for ref in dashboard["references"]} == {"lens", "search"}


def test_data_views_follow_configured_indices() -> None:
    objects = for_indices(read_bundle(), "noc-anomalies", "noc-scores")
    titles = {item["id"]: item["attributes"]["title"] for item in objects if item["type"] == "index-pattern"}
    assert titles == {DATA_VIEW_ID: "noc-anomalies", SCORES_VIEW_ID: "noc-scores"}


class RecordingKibana:
    """A local HTTP server that records requests and responds like Kibana's status and import APIs."""

    def __init__(self, version: str, import_answer: dict[str, Any]) -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                recorder.requests.append({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "body": self.rfile.read(length)})

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                self._record()
                self._answer({"name": "kibana", "version": {"number": version}})

            def do_POST(self) -> None:  # noqa: N802
                self._record()
                self._answer(import_answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def kibana_server(request: pytest.FixtureRequest) -> Iterator[RecordingKibana]:
    version, answer = request.param
    server = RecordingKibana(version, answer)
    server.thread.start()
    yield server
    server.server.shutdown()


FAILED_ANSWER = {"success": False, "successCount": 7, "errors": [
    {"id": "loglatent-event-scores", "type": "lens", "title": "KL per day",
     "error": {"type": "missing_references", "references": [{"type": "index-pattern", "id": "loglatent-scores"}]}}]}


@pytest.mark.parametrize("kibana_server", [("8.15.2", FAILED_ANSWER)], indirect=True)
def test_import_request_and_failures(kibana_server: RecordingKibana, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from loglatent.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("output:\n  index: noc-anomalies\n")
    monkeypatch.setenv("LOGLATENT_KIBANA_API_KEY", "a2V5")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "kibana", "import", "--url", kibana_server.url + "/", "--space", "ops"])
    assert exit_info.value.code == 7
    printed = capsys.readouterr()
    assert "Kibana 8.15.2: imported 7 of 8 objects into space ops" in printed.out
    assert "failed: lens loglatent-event-scores (KL per day): missing references: index-pattern loglatent-scores" \
        in printed.err

    status, upload = kibana_server.requests
    assert (status["method"], status["path"]) == ("GET", "/api/status")
    assert (upload["method"], upload["path"]) == ("POST", "/s/ops/api/saved_objects/_import?overwrite=true")
    assert upload["headers"]["kbn-xsrf"]
    assert upload["headers"]["authorization"] == "ApiKey a2V5"
    form = message_from_bytes(
        f"Content-Type: {upload['headers']['content-type']}\r\n\r\n".encode() + upload["body"], policy=policy.HTTP)
    (part,) = form.iter_parts()
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_filename() == "loglatent.ndjson"
    sent = [json.loads(line) for line in part.get_content().splitlines() if line.strip()]
    assert len(sent) == len(read_bundle())
    titles = {item["id"]: item["attributes"]["title"] for item in sent if item["type"] == "index-pattern"}
    assert titles == {DATA_VIEW_ID: "noc-anomalies", SCORES_VIEW_ID: "noc-anomalies-scores"}


@pytest.mark.parametrize("kibana_server", [("7.17.9", {"success": True, "successCount": 8})], indirect=True)
def test_import_rejects_old_kibana(kibana_server: RecordingKibana, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from loglatent.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(f"digest:\n  kibana_url: {kibana_server.url}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "kibana", "import"])
    assert exit_info.value.code == 7
    assert "runs version 7.17.9; the loglatent objects need 8.11.0 or later" in capsys.readouterr().err
    assert [request["method"] for request in kibana_server.requests] == ["GET"]


def test_import_without_kibana_names_url(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from loglatent.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "kibana", "import", "--url", "http://127.0.0.1:9"])
    assert exit_info.value.code == 7
    assert "cannot reach Kibana at http://127.0.0.1:9/api/status" in capsys.readouterr().err
