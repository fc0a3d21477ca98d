"""Connection to Elasticsearch: client construction and the start-up version check."""

from __future__ import annotations

import logging

from elasticsearch import ApiError, AuthenticationException, Elasticsearch, TransportError

from loglatent.config import ElasticsearchConfig, secret_value
from loglatent.errors import ElasticsearchUnavailable

log = logging.getLogger(__name__)

SUPPORTED_MAJOR_VERSIONS = (8, 9)


def connect(settings: ElasticsearchConfig, check_version: bool = True) -> Elasticsearch:
    """Create a client for ``settings`` and, when ``check_version`` is true, check the server version.

    The Python client is the 8.x line, which talks to 8.x servers natively and to 9.x servers
    through their REST compatibility with 8.x.
    """
    options: dict[str, object] = {}
    if settings.ca_certs is not None:
        options["ca_certs"] = str(settings.ca_certs)
    if settings.api_key is not None:
        options["api_key"] = secret_value(settings.api_key)
    elif settings.username is not None:
        options["basic_auth"] = (settings.username, secret_value(settings.password))
    client = Elasticsearch(
        settings.hosts,
        verify_certs=settings.verify_certs,
        request_timeout=settings.request_timeout,
        retry_on_timeout=True,
        max_retries=3,
        **options,  # type: ignore[arg-type]
    )
    if check_version:
        version = server_version(client, settings.hosts)
        log.debug("Connected to Elasticsearch %s at %s", version, ", ".join(settings.hosts))
    return client


def server_version(client: Elasticsearch, hosts: list[str]) -> str:
    """Return the version of the node behind ``client``, or raise if it is unreachable or unsupported.

    The version is read from the local node's info rather than from ``GET /``, which minimal
    distributions and some proxies do not serve.
    """
    where = ", ".join(hosts)
    try:
        response = client.nodes.info(node_id="_local", metric="_none", filter_path="nodes.*.version")
    except AuthenticationException:
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {where} rejected the credentials; check elasticsearch.api_key or "
            "elasticsearch.username and the password variable in the configuration"
        ) from None
    except ApiError as exc:
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {where} returned {exc.meta.status} to a node info request: {_short(exc)}"
        ) from None
    except TransportError as exc:
        raise ElasticsearchUnavailable(
            f"cannot reach Elasticsearch at {where}: {exc.message}; check elasticsearch.hosts and that the "
            "node is running (for a local node: scripts/elasticsearch.sh start)"
        ) from None

    nodes = response.body.get("nodes", {})
    versions = [node.get("version", "") for node in nodes.values()]
    if not versions or not versions[0]:
        raise ElasticsearchUnavailable(f"Elasticsearch at {where} did not report its version")
    version = versions[0]
    check_supported(version, where)
    return version


def check_supported(version: str, where: str) -> None:
    """Raise unless ``version`` is a server version loglatent is built and tested for."""
    try:
        major = int(version.split(".", 1)[0])
    except ValueError:
        raise ElasticsearchUnavailable(f"Elasticsearch at {where} reported an unreadable version {version!r}") from None
    if major not in SUPPORTED_MAJOR_VERSIONS:
        supported = " or ".join(f"{m}.x" for m in SUPPORTED_MAJOR_VERSIONS)
        raise ElasticsearchUnavailable(
            f"Elasticsearch {version} at {where} is not supported; loglatent needs {supported}"
        )


def _short(exc: ApiError, limit: int = 300) -> str:
    text = str(exc.message if not exc.body else exc.body)
    return text if len(text) <= limit else text[:limit] + "..."
