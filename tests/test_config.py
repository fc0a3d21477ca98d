from pathlib import Path

import pytest

from loglatent.config import load_config
from loglatent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_ecs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "source:\n  index: syslog-*\n"), environ={})
    assert config.source.timestamp_field == "@timestamp"
    assert config.source.host_field == "host.name"
    assert config.source.message_field == "message"
    assert config.source.timezone == "UTC"
    assert config.output.index == "loglatent-anomalies"
    assert config.data_dir == tmp_path / "data"


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "source:\n  timezon: UTC\n"), environ={})
    message = str(error.value)
    assert "source.timezon" in message
    assert "did you mean 'timezone'" in message
    assert "timestamp_field" in message  # the allowed keys are listed


def test_misplaced_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"elasticsearch\.timezone: unknown key"):
        load_config(write(tmp_path, "elasticsearch:\n  timezone: UTC\n"), environ={})


def test_top_level_key_points_to_its_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"timezone: unknown key \(it belongs under one of 'source', 'schedule'\)"):
        load_config(write(tmp_path, "timezone: UTC\n"), environ={})


def test_bad_type_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "ingest:\n  page_size: lots\n"), environ={})
    assert "ingest.page_size" in str(error.value)
    assert "'lots'" in str(error.value)


def test_bad_timezone_suggests_close_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "source:\n  timezone: Europe/Berln\n"), environ={})
    assert "source.timezone" in str(error.value)
    assert "Europe/Berlin" in str(error.value)
    assert "Value error" not in str(error.value)
    assert str(error.value).count("Europe/Berln") == 1


def test_environment_variables_are_expanded(tmp_path: Path) -> None:
    text = "elasticsearch:\n  username: ops\n  password: ${ES_PASSWORD}\n  hosts: ['https://${ES_HOST}:9200']\n"
    config = load_config(write(tmp_path, text), environ={"ES_PASSWORD": "s3cret", "ES_HOST": "es.example.net"})
    assert config.elasticsearch.password is not None
    assert config.elasticsearch.password.get_secret_value() == "s3cret"
    assert config.elasticsearch.hosts == ["https://es.example.net:9200"]
    assert "s3cret" not in repr(config)


def test_escaped_dollar_is_kept_literally(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "source:\n  index: 'logs-$${literal}'\n"), environ={})
    assert config.source.index == "logs-${literal}"


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"elasticsearch\.api_key: environment variable ES_API_KEY is not set"):
        load_config(write(tmp_path, "elasticsearch:\n  api_key: ${ES_API_KEY}\n"), environ={})


def test_secret_is_not_echoed_in_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "elasticsearch:\n  password: [hunter2]\n  username: ops\n"), environ={})
    assert "hunter2" not in str(error.value)


def test_api_key_and_password_exclude_each_other(tmp_path: Path) -> None:
    text = "elasticsearch:\n  api_key: abc\n  username: ops\n  password: pw\n"
    with pytest.raises(ConfigError, match="either api_key or username and password"):
        load_config(write(tmp_path, text), environ={})


def test_host_must_be_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="elasticsearch.hosts"):
        load_config(write(tmp_path, "elasticsearch:\n  hosts: [localhost:9200]\n"), environ={})


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.example.yaml"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "source: [unclosed\n"), environ={})


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    config = load_config(example, environ={"LOGLATENT_ES_PASSWORD": "x"})
    assert config.source.index


def test_digest_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "digest:\n  to: [noc.example.net]\n  kibana_url: kibana:5601\n"
                                    "  smtp:\n    security: ssl\n    password: hunter2\n"), environ={})
    message = str(error.value)
    assert "digest.to: expected an email address such as 'noc@example.net'" in message
    assert "got 'noc.example.net'" in message
    assert "digest.kibana_url: expected a URL" in message
    assert "digest.smtp.security" in message
    assert "'starttls'" in message
    assert "digest.smtp.password: unknown key (the mail server's credentials come from the environment" in message
    assert "hunter2" not in message


def test_digest_templates_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "digest:\n  templates_dir: mail\n  kibana_url: http://kibana:5601/\n"),
                         environ={})
    assert config.digest.templates_dir == tmp_path / "mail"
    assert config.digest.kibana_url == "http://kibana:5601"


def test_duplicate_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "schedule:\n  state_index: a\nsource:\n  index: x\nschedule:\n  lease_seconds: 30\n"),
                    environ={})
    assert "the key 'schedule' appears twice" in str(error.value)


def test_shape_errors_show_the_expected_form(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "schedule:\n  ingest: '*/5 * * * *'\ndigest:\n  to: noc@example.net\n"
                                    "  sender: not an address\n"), environ={})
    message = str(error.value)
    assert "schedule.ingest: expected a section (a mapping with keys cron, misfire_grace_seconds) such as" in message
    assert "digest.to: expected a list such as ['noc@example.net']" in message
    assert "digest.sender: expected an email address" in message


def test_display_names_and_zone_abbreviations(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "digest:\n  to: ['NOC <noc@example.net>']\n"), environ={})
    assert config.digest.to == ["NOC <noc@example.net>"]
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "source:\n  timezone: CEST\n"), environ={})
    assert "an abbreviation such as CEST names one season's offset" in str(error.value)


def test_batch_beyond_the_scaling_rule_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "model:\n  batch_size: 4096\n"), environ={})
    assert "batch_size 4096 is more than" in str(error.value)
    assert "Lower batch_size to at most 2048 or raise learning_rate_batch to at least 512" in str(error.value)
    raised = load_config(write(tmp_path, "model:\n  batch_size: 4096\n  learning_rate_batch: 512\n"), environ={})
    assert raised.model.batch_size == 4096


def test_batch_limit_names_the_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "model:\n  learning_rate_batch: 100\n"), environ={})
    assert "batch_size 1024 (the default) is more than 8 times learning_rate_batch 100" in str(error.value)
