"""Exceptions that stop a command, each with the process exit code the CLI uses."""

from __future__ import annotations


class LoglatentError(Exception):
    """Base class for errors shown to the operator as one message, without a traceback."""

    exit_code = 1


class ConfigError(LoglatentError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2


class ElasticsearchUnavailable(LoglatentError):
    """The Elasticsearch node cannot be reached, rejects the credentials or runs an unsupported version."""

    exit_code = 3


class InputError(LoglatentError):
    """A command-line argument or an input file is invalid."""

    exit_code = 4


class StateError(LoglatentError):
    """The state under ``data_dir`` is unreadable or belongs to another configuration."""

    exit_code = 5


class DigestError(LoglatentError):
    """The digest could not be rendered or sent."""

    exit_code = 6


class KibanaError(LoglatentError):
    """Kibana cannot be reached, is too old, or rejected the import."""

    exit_code = 7
