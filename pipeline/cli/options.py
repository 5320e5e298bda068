"""Options shared by several commands, and the one place flags become a Settings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pipeline.cli.failures import database_errors
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.store.db import Database, open_database

F = TypeVar("F", bound=Callable[..., Any])

#: Flag name -> Settings field, for every flag below.
_FIELDS = {
    "data_dir": "data_dir",
    "database_url": "database_url",
    "base_url": "base_url",
    "api_key_env": "api_key_env",
    "organization": "organization",
    "project": "project",
    "max_in_flight": "max_in_flight",
    "timeout": "timeout",
    "max_attempts": "max_attempts",
    "chunk_size": "chunk_size",
    "rpm": "rpm",
    "tpm": "tpm",
    "limits_file": "limits_file",
    "broker_url": "broker_url",
    "redis_url": "redis_url",
    "part_size": "part_size",
    "part_bytes": "part_bytes",
    "prices": "prices_file",
    "metrics_port": "metrics_port",
    "metrics_host": "metrics_host",
    "audio_roots": "audio_roots",
    "accounts": "accounts_file",
    "azure_endpoint": "azure_endpoint",
    "api_version": "api_version",
    "deployment": "deployments",
}


class FiniteFloat(click.FloatRange):
    """A number in a range that is a number: NaN and infinity are refused (every option taking seconds,
    dollars or a share uses it)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


#: Seconds, strictly positive.
SECONDS = FiniteFloat(min=0, min_open=True)


def store_options(fn: F) -> F:
    """Where the data lives: every command takes these."""
    fn = click.option(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy URL [env PIPELINE_DATABASE_URL; default: pipeline.db (SQLite) in the data dir]",
    )(fn)
    fn = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help="Local state: SQLite database, filesystem broker, refreshed prices [env PIPELINE_DATA_DIR; "
        "default: a .pipeline/ here or in a parent, else the user data directory]",
    )(fn)
    return fn


def broker_options(fn: F) -> F:
    """Where chunk messages go: submit, worker and the batch controls take these."""
    fn = click.option(
        "--redis-url",
        metavar="URL",
        help="Redis for the shared rate limit [env PIPELINE_REDIS_URL; default: the broker if it is Redis]",
    )(fn)
    return click.option(
        "--broker-url",
        metavar="URL",
        help="Celery broker, e.g. redis://host:6379/0 [env PIPELINE_BROKER_URL; default: files in the data "
        "dir]",
    )(fn)


def account_options(fn: F) -> F:
    """Which API and account: the commands that send, and `estimate` (limits are learned per account)."""
    for decorator in reversed(
        [
            click.option(
                "--base-url", metavar="URL", help="OpenAI-compatible API root [env OPENAI_BASE_URL]"
            ),
            click.option(
                "--api-key-env",
                metavar="NAME",
                help="Environment variable holding the API key [OPENAI_API_KEY]",
            ),
            click.option(
                "--organization", metavar="ORG", help="Sent as OpenAI-Organization [env OPENAI_ORG_ID]"
            ),
            click.option(
                "--project", metavar="PROJECT", help="Sent as OpenAI-Project [env OPENAI_PROJECT_ID]"
            ),
            click.option(
                "--accounts",
                type=click.Path(dir_okay=False),
                help="TOML of [[account]] tables to send the batch through (a pool: keys, projects, base "
                "URLs, Azure deployments) [env PIPELINE_ACCOUNTS_FILE]",
            ),
            click.option(
                "--azure-endpoint",
                metavar="URL",
                help="Azure OpenAI resource, e.g. https://NAME.openai.azure.com; the key from "
                "AZURE_OPENAI_API_KEY [env AZURE_OPENAI_ENDPOINT]",
            ),
            click.option(
                "--api-version",
                metavar="VERSION",
                help="Azure's api-version: the deployments API (without it, Azure's v1 API) "
                "[env OPENAI_API_VERSION]",
            ),
            click.option(
                "--deployment",
                metavar="NAME=MODEL",
                multiple=True,
                help="An Azure deployment and the model it serves (prices, token counts); repeatable",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def limit_options(fn: F) -> F:
    """The rate limits to keep to: the commands that send, and `estimate` (time at these limits)."""
    for decorator in reversed(
        [
            click.option(
                "--rpm", type=int, help="Requests per minute for every model [env PIPELINE_RPM; learned]"
            ),
            click.option(
                "--tpm", type=int, help="Tokens per minute for every model [env PIPELINE_TPM; learned]"
            ),
            click.option(
                "--limits-file",
                type=click.Path(dir_okay=False),
                help="JSON or TOML of per-model rpm/tpm limits [env PIPELINE_LIMITS_FILE]",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def engine_options(fn: F) -> F:
    """How requests are sent: only the commands that send take these."""
    for decorator in reversed(
        [
            click.option(
                "--max-in-flight",
                type=int,
                help="Concurrent requests per process [env PIPELINE_MAX_IN_FLIGHT; 512]",
            ),
            click.option(
                "--timeout", type=SECONDS, help="Seconds to wait for one answer [env PIPELINE_TIMEOUT; 600]"
            ),
            click.option(
                "--max-attempts", type=int, help="Attempts per request [env PIPELINE_MAX_ATTEMPTS; 10]"
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def api_options(fn: F) -> F:
    """How to call the API: the commands that send requests take these (account, engine, limits)."""
    return account_options(engine_options(limit_options(fn)))


def prices_option(fn: F) -> F:
    """Which prices cost is computed with: the commands that send or report money take it."""
    return click.option(
        "--prices",
        type=click.Path(dir_okay=False),
        help="JSON or TOML prices over the table in force (shipped, or refreshed by `pipeline prices "
        "update`) [env PIPELINE_PRICES_FILE]",
    )(fn)


def metrics_option(fn: F) -> F:
    """Serve Prometheus metrics while sending: `run` and `worker` take it."""
    fn = click.option(
        "--metrics-host",
        metavar="ADDRESS",
        help="Address to serve metrics on, 0.0.0.0 for all [env PIPELINE_METRICS_HOST; 127.0.0.1]",
    )(fn)
    return click.option(
        "--metrics-port",
        type=int,
        help="Serve Prometheus metrics on this port at /metrics [env PIPELINE_METRICS_PORT]",
    )(fn)


def max_cost_option(fn: F) -> F:
    """The spend cap of a batch: run, submit and resume take it."""
    return click.option(
        "--max-cost",
        "max_cost",
        type=FiniteFloat(min=0, min_open=True),
        metavar="USD",
        help="Pause the batch before its cost (spent + reserved for requests in flight) would exceed USD",
    )(fn)


def settings_from(params: dict[str, Any]) -> Settings:
    """Settings from the environment and the flags given (a flag left out is None and changes nothing)."""
    # A repeatable flag given no times is an empty tuple: not given, so the environment's value stands.
    return Settings.load({_FIELDS[k]: v for k, v in params.items() if k in _FIELDS and v != ()})


def database(settings: Settings, *, create: bool = True) -> Database:
    """The database, migrated; one ConnectError when it cannot be reached, created or written. Commands
    that only read or control existing batches pass `create=False`: they never create a database."""
    with database_errors(settings.db_url):
        return open_database(settings.db_url, create=create)


def pop_settings(params: dict[str, Any]) -> Settings:
    """Remove the settings flags from `params` and build the Settings."""
    picked = {k: params.pop(k) for k in list(params) if k in _FIELDS}
    try:
        return settings_from(picked)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
