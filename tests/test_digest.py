"""The email digest, rendered from templates/ and sent through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch, helpers

from loglatent.config import Config
from loglatent.digest import LAST_DIGEST, send_digest
from loglatent.errors import DigestError
from loglatent.sink import anomaly_id, install_template
from loglatent.state import DigestPlan, StateStore

SCRIPT = "<script>alert(1)</script>"


def anomaly(day: str, host: str, template_id: int, template: str, count: int = 120, method: str = "cvae",
            votes: int | None = 7) -> dict[str, Any]:
    hourly = [0] * 24
    hourly[3] = count
    return {
        "@timestamp": f"{day}T00:00:00+00:00", "day": day, "timezone": "UTC", "host": host,
        "template_id": template_id, "template": template, "event": f"{host}/{template_id}",
        "example": template.replace("<*>", "42"), "method": method, "reason": "behaviour",
        "kl": 3.5, "typical_kl": 1.0, "score": 3.5, "typical_score": 1.0, "votes": votes, "ensemble_size": 10,
        "confidence": (votes or 10) / 10, "count": count, "typical_count": 12.0, "hourly_counts": hourly,
        "typical_hourly": [0.5] * 24, "model_version": "20240101T000000000000Z", "run_id": "r",
        "detected_at": "2024-05-03T00:30:00+00:00",
    }


@pytest.fixture
def output_index(es: Elasticsearch) -> Iterator[str]:
    name = f"test-anomalies-{uuid.uuid4().hex[:10]}"
    install_template(es, name)
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)
    es.options(ignore_status=404).indices.delete_index_template(name=f"loglatent-anomalies-{name}")


@pytest.fixture
def state_index(es: Elasticsearch) -> Iterator[str]:
    name = f"test-state-{uuid.uuid4().hex[:10]}"
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def write(es: Elasticsearch, index: str, documents: list[dict[str, Any]]) -> None:
    actions = [{"_index": index, "_id": anomaly_id(d["method"], d["day"], d["host"], d["template_id"]), "_source": d}
               for d in documents]
    helpers.bulk(es, actions, refresh="wait_for")


def digest_config(make_config, index_name: str, output: str, state: str, mail_server, extra: str = "") -> Config:  # type: ignore[no-untyped-def]
    return make_config(index_name, extra=(
        f"output:\n  index: {output}\nschedule:\n  state_index: {state}\n"
        f"digest:\n  to: [noc@example.net, oncall@example.net]\n  sender: loglatent@example.net\n"
        f"  kibana_url: http://kibana.example.net:5601\n{extra}"
        f"  smtp:\n    host: 127.0.0.1\n    port: {mail_server.port}\n    retries: 2\n    retry_seconds: 0\n"))


def parts(message: EmailMessage) -> tuple[str, str, list[EmailMessage]]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    images = [part for part in message.walk() if part.get_content_type() == "image/png"]
    return text.get_content(), html.get_content(), images  # type: ignore[union-attr]


def test_digest_arrives_escaped_encoded_and_with_pictures(es, index_name, output_index, state_index, make_config,  # type: ignore[no-untyped-def]
                                                          mail_server) -> None:
    day = "2024-05-02"
    write(es, output_index, [
        anomaly(day, "hôte-b", 3, f"user <*> sent {SCRIPT}"),
        anomaly(day, "core-1", 5, "Interface <*> changed state to down", count=40, votes=6),
        anomaly(day, "core-1", 9, "BGP neighbor <*> Down", count=3, method="burst", votes=1),
        anomaly("2024-05-01", "core-1", 5, "not in this digest"),
    ])
    config = digest_config(make_config, index_name, output_index, state_index, mail_server)
    state = StateStore(es, state_index)

    outcome = send_digest(es, config, state, DigestPlan([day], late=False), holder="test")
    assert outcome.status == "sent"
    assert outcome.anomalies == 3
    assert len(mail_server.messages) == 1
    assert mail_server.envelopes[0] == ("loglatent@example.net", ["noc@example.net", "oncall@example.net"])

    raw = mail_server.messages[0]
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78  # far under the SMTP limit of 998
    assert re.search(rb"^Subject: .*=\?utf-8\?", raw, re.MULTILINE | re.IGNORECASE), "subject is not RFC 2047 encoded"
    message = mail_server.parsed()[0]
    assert message.get_content_type() == "multipart/alternative"
    assert "hôte-b" in str(message["Subject"])
    assert "3 anomalies on 2024-05-02" in str(message["Subject"])

    text, html, images = parts(message)
    assert SCRIPT in text
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "not in this digest" not in text
    assert "burst 1, cvae 2." in text
    assert "7 of 10 models agree" in text
    assert "7 of 10 models agree" in html

    # Each listed anomaly has its picture, attached and referenced by Content-ID.
    assert len(images) == 3
    for image in images:
        assert image.get_content().startswith(b"\x89PNG")
        cid = str(image["Content-ID"]).strip("<>")
        assert f'src="cid:{cid}"' in html

    # Kibana links: Discover for the event and day, and the dashboard.
    assert "http://kibana.example.net:5601/app/discover#/" in html
    assert "http://kibana.example.net:5601/app/dashboards#/view/loglatent-overview" in text

    record = state.digest_record(day)
    assert record is not None
    assert record["status"] == "sent"
    assert record["message_id"] == str(message["Message-ID"])
    assert state.checkpoint(LAST_DIGEST) == day

    # The same day again: nothing more is delivered.
    again = send_digest(es, config, state, DigestPlan([day], late=False), holder="test")
    assert again.status == "already_sent"
    assert len(mail_server.messages) == 1


def test_failed_send_is_retried_then_reported(es, index_name, output_index, state_index, make_config, mail_server,  # type: ignore[no-untyped-def]
                                              caplog) -> None:
    day = "2024-05-02"
    write(es, output_index, [anomaly(day, "edge-2", 1, "link <*> flapping")])
    config = digest_config(make_config, index_name, output_index, state_index, mail_server)
    state = StateStore(es, state_index)

    mail_server.refuse_next = 2  # two temporary failures, then the third attempt goes through
    with caplog.at_level(logging.WARNING, logger="loglatent.digest"):
        outcome = send_digest(es, config, state, DigestPlan([day], late=False), holder="test")
    assert outcome.status == "sent"
    assert len(mail_server.messages) == 1
    assert sum("trying again" in record.getMessage() for record in caplog.records) == 2

    # Every attempt fails: an error naming the server, and the day is free for the next digest.
    next_day = "2024-05-03"
    mail_server.refuse_next = 3
    with pytest.raises(DigestError, match=rf"127.0.0.1:{mail_server.port} after 3 attempts"):
        send_digest(es, config, state, DigestPlan([next_day], late=False), holder="test")
    assert state.digest_record(next_day) is None
    assert state.checkpoint(LAST_DIGEST) == day
    late = send_digest(es, config, state, DigestPlan([next_day], late=True), holder="test")
    assert late.status == "sent"
    assert len(mail_server.messages) == 2
    assert "(late)" in str(mail_server.parsed()[1]["Subject"])


def test_empty_day_sends_a_note_or_nothing(es, index_name, output_index, state_index, make_config, mail_server) -> None:  # type: ignore[no-untyped-def]
    config = digest_config(make_config, index_name, output_index, state_index, mail_server)
    state = StateStore(es, state_index)
    assert send_digest(es, config, state, DigestPlan(["2024-05-02"], late=False), holder="test").status == "sent"
    message = mail_server.parsed()[0]
    assert "No anomalies on 2024-05-02" in str(message["Subject"])
    assert "No anomalies." in parts(message)[0]

    quiet = digest_config(make_config, index_name, output_index, state_index, mail_server,
                          extra="  send_when_empty: false\n")
    outcome = send_digest(es, quiet, state, DigestPlan(["2024-05-03"], late=False), holder="test")
    assert outcome.status == "skipped"
    assert len(mail_server.messages) == 1
    assert state.checkpoint(LAST_DIGEST) == "2024-05-03"


def test_digest_command_dry_run_and_send(es, index_name, output_index, state_index, make_config, mail_server,  # type: ignore[no-untyped-def]
                                         tmp_path: Path, capsys) -> None:
    from loglatent.cli import main

    day = "2024-05-02"
    write(es, output_index, [anomaly(day, "hôte-b", 3, f"user <*> sent {SCRIPT}")])
    digest_config(make_config, index_name, output_index, state_index, mail_server)
    config_file = str(make_config.last_path)

    out = tmp_path / "digest.html"
    # A day without verdicts yet would go out empty and block its real digest: rejected.
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config_file, "digest", "--day", day])
    assert exit_info.value.code == 4
    assert f"{day} has not been detected yet" in capsys.readouterr().err
    assert mail_server.messages == []
    StateStore(es, state_index).mark_detected([day], "20240101T000000000000Z")

    main(["--config", config_file, "digest", "--day", day, "--dry-run", "--out", str(out)])
    html = out.read_text(encoding="utf-8")
    assert "data:image/png;base64," in html
    assert "cid:" not in html
    assert "&lt;script&gt;" in html
    assert SCRIPT in out.with_suffix(".txt").read_text(encoding="utf-8")
    assert mail_server.messages == []

    main(["--config", config_file, "digest", "--day", day])
    main(["--config", config_file, "digest", "--day", day])
    printed = capsys.readouterr().out
    assert "Sent the digest of 2024-05-02" in printed
    assert "not sending it again" in printed
    assert len(mail_server.messages) == 1

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config_file, "digest", "--day", day, "--out", str(out)])
    assert exit_info.value.code == 4
    assert "needs --dry-run" in capsys.readouterr().err


def test_missing_credentials_half_set(es, index_name, output_index, state_index, make_config, mail_server,  # type: ignore[no-untyped-def]
                                      monkeypatch) -> None:
    from loglatent.errors import ConfigError

    monkeypatch.setenv("LOGLATENT_SMTP_USERNAME", "digest")
    monkeypatch.delenv("LOGLATENT_SMTP_PASSWORD", raising=False)
    config = digest_config(make_config, index_name, output_index, state_index, mail_server)
    with pytest.raises(ConfigError, match="LOGLATENT_SMTP_PASSWORD"):
        send_digest(es, config, StateStore(es, state_index), DigestPlan(["2024-05-02"], late=False), holder="test")
    assert StateStore(es, state_index).digest_record("2024-05-02") is None


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl command."""
    import subprocess

    cert, key = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_login(es, index_name, output_index, state_index, make_config, tmp_path, certificate,  # type: ignore[no-untyped-def]
                       monkeypatch, security) -> None:
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from conftest import MailServer, _free_port

    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    receiver = MailServer()
    port = _free_port()
    options: dict[str, Any] = {"authenticator": authenticate, "auth_required": True}
    if security == "starttls":
        options.update(tls_context=server_context, require_starttls=True)
    else:
        # aiosmtpd treats only its own STARTTLS as TLS, so AUTH over implicit TLS needs this switch.
        options.update(ssl_context=server_context, auth_require_tls=False)
    controller = Controller(receiver, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        receiver.port = port
        config = digest_config(make_config, index_name, output_index, state_index, receiver)
        config = config.model_copy(update={"digest": config.digest.model_copy(update={
            "smtp": config.digest.smtp.model_copy(update={"security": security, "ca_certs": cert})})})
        monkeypatch.setenv("LOGLATENT_SMTP_USERNAME", "digest")
        monkeypatch.setenv("LOGLATENT_SMTP_PASSWORD", "s3cret")
        outcome = send_digest(es, config, StateStore(es, state_index), DigestPlan(["2024-05-02"], late=False),
                              holder="test")
    finally:
        controller.stop()
    assert outcome.status == "sent"
    assert len(receiver.messages) == 1
    assert logins == [(b"digest", b"s3cret")]


def test_untrusted_certificate_is_rejected(es, index_name, output_index, state_index, make_config,  # type: ignore[no-untyped-def]
                                           certificate) -> None:
    import ssl

    from aiosmtpd.controller import Controller

    from conftest import MailServer, _free_port

    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    receiver = MailServer()
    port = _free_port()
    controller = Controller(receiver, hostname="127.0.0.1", port=port, ssl_context=server_context)
    controller.start()
    try:
        receiver.port = port
        config = digest_config(make_config, index_name, output_index, state_index, receiver)
        config = config.model_copy(update={"digest": config.digest.model_copy(update={
            "smtp": config.digest.smtp.model_copy(update={"security": "tls", "retries": 0})})})
        with pytest.raises(DigestError, match="CERTIFICATE_VERIFY_FAILED"):
            send_digest(es, config, StateStore(es, state_index), DigestPlan(["2024-05-02"], late=False), holder="t")
    finally:
        controller.stop()
    assert receiver.messages == []
