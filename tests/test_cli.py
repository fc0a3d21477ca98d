import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def loglatent(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "loglatent", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def loaded_and_skipped(output: str) -> tuple[int, int]:
    loaded = int(re.search(r"Loaded (\d+) of (\d+) lines", output).group(1))  # type: ignore[union-attr]
    skipped = re.search(r"Skipped: (\d+)", output)
    return loaded, int(skipped.group(1)) if skipped else 0


def exported_total(config: Path, out: Path) -> tuple[int, np.lib.npyio.NpzFile]:
    loglatent(config, "export-histograms", "--out", str(out))
    data = np.load(out)
    assert data["counts"].shape[1] == 1440
    assert len(data["host"]) == len(data["template"]) == len(data["template_id"]) == len(data["day"]) == len(data["counts"])
    return int(data["counts"].sum()), data


def test_linux_log_load_ingest_export(make_config, index_name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_config(index_name)
    config = make_config.last_path
    load = loglatent(config, "load", str(SAMPLES / "loghub-linux" / "Linux.log"), "--index", index_name, "--year", "2005")
    loaded, skipped = loaded_and_skipped(load.stdout)
    assert loaded == 25567

    ingest = loglatent(config, "ingest")
    read = int(re.search(r"Read (\d+) documents", ingest.stdout).group(1))  # type: ignore[union-attr]
    ingest_skipped = re.search(r"Skipped: (\d+)", ingest.stdout)
    assert read == loaded

    total, data = exported_total(config, tmp_path / "linux.npz")
    assert total == loaded - (int(ingest_skipped.group(1)) if ingest_skipped else 0)
    assert set(data["host"]) == {"combo"}
    assert min(data["day"]) == "2005-06-09"
    assert max(data["day"]) == "2006-02-28"


def test_cisco_lab_load_ingest_export(make_config, index_name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_config(index_name)
    config = make_config.last_path
    files = sorted(str(path) for path in (SAMPLES / "cisco-iosxr-lab").glob("*/*.log"))
    load = loglatent(config, "load", *files, "--index", index_name, "--year", "2017")
    loaded, skipped = loaded_and_skipped(load.stdout)
    assert skipped > 0  # the show logging headers
    assert "show logging header" in load.stdout

    loglatent(config, "ingest")
    total, data = exported_total(config, tmp_path / "cisco.npz")
    assert total == loaded
    assert {"dr01", "leaf4", "spine1"} <= set(data["host"])
    assert {day[:7] for day in data["day"]} <= {"2017-08", "2017-09"}


def test_december_line_read_in_january(make_config, index_name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "messages"
    log.write_text("Dec 31 23:59:58 gw1 CRON[42]: (root) CMD (backup)\n")
    make_config(index_name)
    config = make_config.last_path
    loglatent(config, "load", str(log), "--index", index_name, "--reference-time", "2026-01-01T00:00:05")
    loglatent(config, "ingest")
    _, data = exported_total(config, tmp_path / "dec.npz")
    assert list(data["day"]) == ["2025-12-31"]
    assert data["counts"][0][1439] == 1


def test_bad_config_stops_with_message(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("source:\n  timezone: Mars/Olympus\n")
    result = loglatent(config, "ingest", check=False)
    assert result.returncode == 2
    assert "source.timezone" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_node_stops_with_message(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("elasticsearch:\n  hosts: ['http://127.0.0.1:9']\n  request_timeout: 2\n")
    result = loglatent(config, "ingest", check=False)
    assert result.returncode == 3
    assert "cannot reach Elasticsearch at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_index_is_named(make_config, index_name: str) -> None:  # type: ignore[no-untyped-def]
    make_config(index_name)
    result = loglatent(make_config.last_path, "ingest", check=False)
    assert result.returncode == 3
    assert f"source index '{index_name}' not found" in result.stderr


def test_changed_timezone_is_refused(make_config, index_name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "messages"
    log.write_text("Jan  2 03:04:05 gw1 CRON[42]: (root) CMD (backup)\n")
    make_config(index_name, data_dir=str(tmp_path / "shared"))
    loglatent(make_config.last_path, "load", str(log), "--index", index_name, "--year", "2024")
    loglatent(make_config.last_path, "ingest")
    make_config(index_name, timezone="Asia/Tokyo", data_dir=str(tmp_path / "shared"))
    result = loglatent(make_config.last_path, "ingest", check=False)
    assert result.returncode == 5
    assert "timezone" in result.stderr
    assert "Asia/Tokyo" in result.stderr


def test_subcommand_help_needs_no_config() -> None:
    result = subprocess.run([sys.executable, "-m", "loglatent", "ingest", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--from" in result.stdout


def test_config_after_command_name(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("data_dir: empty\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("source:\n  timezone: Mars/Olympus\n")
    command = [sys.executable, "-m", "loglatent", "export-histograms", "--out", str(tmp_path / "x.npz")]
    after = subprocess.run([*command, "--config", str(good)], capture_output=True, text=True)
    assert after.returncode == 4, after.stderr
    assert "run ingest first" in after.stderr
    # The one after the command's name wins over the one before it.
    both = subprocess.run([command[0], "-m", "loglatent", "--config", str(good), *command[3:], "--config", str(bad)],
                          capture_output=True, text=True)
    assert both.returncode == 2, both.stderr
    assert "source.timezone" in both.stderr


def test_load_without_index_rejects_pattern(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("source:\n  index: 'logs-*'\n")
    log = tmp_path / "messages"
    log.write_text("Jan  2 03:04:05 gw1 app: x\n")
    result = loglatent(config, "load", str(log), check=False)
    assert result.returncode == 4
    assert "pass --index NAME" in result.stderr


def test_export_without_histograms_says_run_ingest(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("data_dir: empty\n")
    result = loglatent(config, "export-histograms", "--out", str(tmp_path / "x.npz"), check=False)
    assert result.returncode == 4
    assert "run ingest first" in result.stderr
    assert not (tmp_path / "empty" / "histograms.sqlite").exists()


def test_pattern_matching_nothing_is_reported(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_config("no-such-logs-*")
    result = loglatent(make_config.last_path, "ingest")
    assert "matches no index, alias or data stream" in result.stdout
