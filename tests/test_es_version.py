import pytest

from loglatent.es import check_supported, connect, server_version
from loglatent.config import ElasticsearchConfig
from loglatent.errors import ElasticsearchUnavailable


@pytest.mark.parametrize("version", ["8.0.0", "8.19.21", "9.2.1"])
def test_supported_versions_pass(version: str) -> None:
    check_supported(version, "http://es:9200")


@pytest.mark.parametrize("version", ["7.17.25", "10.0.0", "garbage"])
def test_unsupported_versions_stop_with_message(version: str) -> None:
    with pytest.raises(ElasticsearchUnavailable, match=version):
        check_supported(version, "http://es:9200")


def test_real_node_version_is_read(es_url: str) -> None:
    client = connect(ElasticsearchConfig(hosts=[es_url]), check_version=False)
    version = server_version(client, [es_url])
    assert int(version.split(".")[0]) in (8, 9)


def test_unreachable_node_names_host_and_fix() -> None:
    settings = ElasticsearchConfig(hosts=["http://127.0.0.1:9"], request_timeout=2)
    with pytest.raises(ElasticsearchUnavailable) as error:
        connect(settings)
    assert "http://127.0.0.1:9" in str(error.value)
    assert "elasticsearch.hosts" in str(error.value)
