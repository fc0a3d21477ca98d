"""Test fixtures: one real Elasticsearch node per test session, started by scripts/elasticsearch.sh.

Set LOGLATENT_TEST_ES_URL to use a node that is already running instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from loglatent.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "elasticsearch.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    existing = os.environ.get("LOGLATENT_TEST_ES_URL")
    if existing:
        yield existing
        return

    port = _free_port()
    cache = Path(os.environ.get("LOGLATENT_CACHE_DIR", "/var/cache/loglatent" if os.geteuid() == 0 else
                                Path.home() / ".cache" / "loglatent"))
    run_dir = cache / "run" / f"test-{port}"
    env = {**os.environ, "ES_PORT": str(port), "ES_RUN_DIR": str(run_dir), "ES_HEAP": "512m"}
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.fail(f"scripts/elasticsearch.sh start failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def es(es_url: str) -> Elasticsearch:
    return Elasticsearch(es_url, request_timeout=60)


@pytest.fixture
def index_name(es: Elasticsearch) -> Iterator[str]:
    name = f"test-logs-{uuid.uuid4().hex[:10]}"
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture
def make_config(tmp_path: Path, es_url: str):  # type: ignore[no-untyped-def]
    """Write a configuration file for ``index`` and return the loaded Config (and its path)."""

    def make(index: str, timezone: str = "UTC", data_dir: str = "data", extra: str = "", **ingest: int) -> Config:
        ingest_lines = "".join(f"\n  {key}: {value}" for key, value in ingest.items())
        text = (
            f"elasticsearch:\n  hosts: [{es_url}]\n"
            f"source:\n  index: {index}\n  timezone: {timezone}\n"
            f"data_dir: {data_dir}\n"
            f"ingest:\n  settle_seconds: 0{ingest_lines}\n"
            f"{extra}"
        )
        path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(text)
        config = load_config(path)
        make.last_path = path  # type: ignore[attr-defined]
        return config

    return make


class MailServer:
    """A real SMTP server (aiosmtpd) on a free local port that keeps what it receives.

    ``refuse_next`` makes the next DATA commands fail with a temporary error (451), so tests can
    watch the sender retry.
    """

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse_next = 0
        self.port = _free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        if self.refuse_next > 0:
            self.refuse_next -= 1
            return "451 4.3.0 Try again later"
        self.messages.append(bytes(envelope.original_content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 Message accepted"

    def parsed(self) -> list:  # type: ignore[type-arg]
        from email import message_from_bytes, policy

        return [message_from_bytes(raw, policy=policy.default) for raw in self.messages]


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    server = MailServer()
    server.controller.start()
    try:
        yield server
    finally:
        server.controller.stop()
