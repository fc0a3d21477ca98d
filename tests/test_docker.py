"""The Docker deployment, checked up to the boundary of a Docker engine, which the test machine lacks.

The compose file, the image's inputs and the worker configuration inside the stack are checked
against each other and against the product. ``docker compose config`` runs when the Compose
plugin is installed; nothing here builds an image or starts a container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from loglatent.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCKER / "compose.yml").read_text()))


def test_services_and_dependencies_exist() -> None:
    services = compose()["services"]
    assert set(services) == {"elasticsearch", "kibana", "mailpit", "setup", "worker"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    assert services["worker"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert services["setup"]["restart"] == "no"


def test_image_inputs_exist() -> None:
    for name in ("setup", "worker"):
        build = compose()["services"][name]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert os.access(DOCKER / "setup.sh", os.X_OK)


def test_stack_configuration_is_valid() -> None:
    services = compose()["services"]
    environment = {key: str(value) for key, value in services["worker"]["environment"].items()}
    config = load_config(DOCKER / "config.yaml", environ=environment)
    assert config.elasticsearch.hosts == ["http://elasticsearch:9200"]
    assert config.digest.smtp.host in services
    assert config.digest.to
    assert str(config.data_dir) == "/data"
    assert "/data" in " ".join(services["worker"]["volumes"])


def test_setup_script_uses_real_commands() -> None:
    from loglatent.cli import cli

    commands = re.findall(r'^loglatent --config "\$CONFIG" ([a-z-]+)(?: ([a-z-]+))?', (DOCKER / "setup.sh").read_text(),
                          re.MULTILINE)
    assert [command for command, _ in commands] == ["load", "ingest", "train", "detect", "kibana", "digest"]
    for command, subcommand in commands:
        assert command in cli.commands
        if command == "kibana":
            assert subcommand == "import"


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the Docker Compose plugin is not installed; docs/deploy.md records the last check")
def test_docker_compose_config_accepts_file() -> None:
    checked = subprocess.run(["docker", "compose", "-f", str(DOCKER / "compose.yml"), "config", "--quiet"],
                             capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr
