"""Accounts and pools: who a batch's requests are sent through, and how a request reaches each.

An `Account` is one key at one API: OpenAI (or any OpenAI-compatible server: base URL, organization,
project; `Authorization: Bearer`), or Azure OpenAI (`azure_endpoint`; the `api-key` header), either through
its deployments API (`api_version` set: `{endpoint}/openai/deployments/{deployment}/{path}?api-version=V`) or
its v1 API (`{endpoint}/openai/v1/{path}`, the deployment named in `model`). A line's `model` names its
deployment; `deployments` maps deployment names to the models they serve (for prices and token counts), and a
line naming a model that exactly one deployment serves goes to that deployment.

A `Pool` is the accounts one batch is sent through, built once from Settings (`pool_from_settings`): the one
account of the flags and environment by default; Azure's when `--azure-endpoint`/`AZURE_OPENAI_ENDPOINT` is
set; the `[[account]]` tables of `--accounts FILE` otherwise. Keys are never in the file: each account names
the environment variable that holds its key (`api_key_env`). A batch keeps its pool's `spec` (names, URLs,
key variable names and fingerprints, deployments, given limits: no secret), so a worker on another machine
builds the same pool from its own environment (`Pool.from_spec`).

Accounts-file format (TOML; unknown keys are an error):

    [[account]]
    name = "east"
    api_key_env = "AZURE_EAST_KEY"
    azure_endpoint = "https://east.openai.azure.com"
    api_version = "2024-10-21"
    deployments = { "gpt-4o-mini" = "gpt-4o-mini" }
    rpm = 6000

    [[account]]
    name = "openai"
    api_key_env = "OPENAI_API_KEY"
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.settings import DEFAULT_BASE_URL, Secret, Settings, check_base_url

#: What an `[[account]]` table may hold.
ACCOUNT_FIELDS = frozenset(
    {
        "name",
        "api_key_env",
        "base_url",
        "organization",
        "project",
        "azure_endpoint",
        "api_version",
        "deployments",
        "rpm",
        "tpm",
    }
)
#: The variable Azure's SDK reads the key from.
AZURE_KEY_ENV = "AZURE_OPENAI_API_KEY"
#: The fingerprint of an account whose key is not set.
NO_KEY = "nokey"


@dataclass(frozen=True)
class Account:
    """One key at one API. Compared and hashed by what it is, never by its key's value."""

    name: str
    api_key_env: str
    key: Secret | None = field(default=None, compare=False, repr=False)
    #: OpenAI-compatible root ending in /v1; for Azure, `{endpoint}/openai` (names the account in limit keys)
    base_url: str = DEFAULT_BASE_URL
    organization: str | None = None
    project: str | None = None
    azure_endpoint: str | None = None
    api_version: str | None = None
    #: deployment name -> the model it serves
    deployments: tuple[tuple[str, str], ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    #: the fingerprint the batch was submitted with (a worker's key must match it); None: not checked
    expected_fingerprint: str | None = field(default=None, compare=False)

    @property
    def azure(self) -> bool:
        return self.azure_endpoint is not None

    @property
    def kind(self) -> str:
        """`openai`, `azure` (deployments API) or `azure-v1`."""
        if not self.azure:
            return "openai"
        return "azure" if self.api_version else "azure-v1"

    def fingerprint(self) -> str:
        return self.key.fingerprint() if self.key is not None else NO_KEY

    def headers(self, user_agent: str) -> dict[str, str]:
        """The headers every call through this account carries: its key the way its API wants it."""
        if self.key is None:
            raise ConfigError(f"account {self.name!r}: no API key: set {self.api_key_env}")
        headers = {"User-Agent": user_agent}
        if self.azure:
            headers["api-key"] = self.key.reveal()
        else:
            headers["Authorization"] = f"Bearer {self.key.reveal()}"
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers

    def deployment_for(self, model: str) -> str:
        """The deployment a line naming `model` goes to: a deployment of that name, else the one deployment
        serving that model, else the name itself (Azure answers DeploymentNotFound if there is none)."""
        names = dict(self.deployments)
        if model in names:
            return model
        serving = [name for name, served in self.deployments if served == model]
        return serving[0] if len(serving) == 1 else model

    def model_of(self, name: str) -> str:
        """The model a deployment (or model) name is priced and counted as."""
        return dict(self.deployments).get(name, name)

    def url(self, path: str, route: str, deployment: str) -> str:
        """Where a request to an endpoint (its `path` after /v1, its Azure `route`) goes through this account.

        `route` is the endpoint's: `deployment` (served under a deployment), `resource` (served by the
        resource, the deployment in `model`) or `none` (Azure does not serve it: ConfigError).
        """
        if not self.azure:
            return self.base_url + path
        if route == "none":
            raise ConfigError(f"account {self.name!r}: Azure OpenAI does not serve {path.lstrip('/')}")
        if self.api_version is None:
            return f"{self.azure_endpoint}/openai/v1{path}"
        query = f"?api-version={self.api_version}"
        if route == "resource":
            return f"{self.azure_endpoint}/openai{path}{query}"
        return f"{self.azure_endpoint}/openai/deployments/{deployment}{path}{query}"

    def names_model_in_body(self, route: str) -> bool:
        """Whether the deployment must be named in the body's `model` (the v1 API, resource routes)."""
        return self.azure and (self.api_version is None or route == "resource")

    def spec(self) -> dict[str, Any]:
        """This account without its key: what a batch keeps so other machines build the same pool."""
        return {
            "name": self.name,
            "api_key_env": self.api_key_env,
            "key_fingerprint": self.fingerprint(),
            "base_url": self.base_url,
            "organization": self.organization,
            "project": self.project,
            "azure_endpoint": self.azure_endpoint,
            "api_version": self.api_version,
            "deployments": dict(self.deployments),
            "rpm": self.rpm,
            "tpm": self.tpm,
        }


@dataclass(frozen=True)
class Pool:
    """The accounts one batch is sent through, in the order they are tried."""

    accounts: tuple[Account, ...]

    def __post_init__(self) -> None:
        if not self.accounts:
            raise ConfigError("an account pool needs at least one account")
        names = [a.name for a in self.accounts]
        if len(set(names)) != len(names):
            raise ConfigError(f"account names must be unique: {', '.join(names)}")

    @property
    def single(self) -> bool:
        return len(self.accounts) == 1

    @property
    def default(self) -> bool:
        """The one account of today's flags (not Azure, no file): a batch stores no spec for it."""
        return self.single and self.accounts[0].name == DEFAULT_NAME

    def missing_keys(self) -> list[Account]:
        return [a for a in self.accounts if a.key is None]

    def require_keys(self) -> None:
        """ConfigError unless at least one account has its key (those without are benched where they run)."""
        if len(self.missing_keys()) == len(self.accounts):
            names = ", ".join(sorted({a.api_key_env for a in self.accounts}))
            raise ConfigError(f"no API key: set {names} (or name another variable with --api-key-env)")

    def aliases(self) -> dict[str, str]:
        """Deployment name -> model, over every account: for `PriceTable.with_aliases`."""
        return {name: model for a in self.accounts for name, model in a.deployments if name != model}

    def spec(self) -> list[dict[str, Any]]:
        return [a.spec() for a in self.accounts]

    @classmethod
    def from_spec(cls, spec: Sequence[Mapping[str, Any]], secrets: Mapping[str, Secret]) -> Pool:
        """The pool a batch was submitted with, each key read from this process's environment."""
        accounts = []
        for item in spec:
            env = str(item["api_key_env"])
            accounts.append(
                Account(
                    name=str(item["name"]),
                    api_key_env=env,
                    key=secrets.get(env),
                    base_url=str(item["base_url"]),
                    organization=item.get("organization"),
                    project=item.get("project"),
                    azure_endpoint=item.get("azure_endpoint"),
                    api_version=item.get("api_version"),
                    deployments=tuple((item.get("deployments") or {}).items()),
                    rpm=item.get("rpm"),
                    tpm=item.get("tpm"),
                    expected_fingerprint=item.get("key_fingerprint"),
                )
            )
        return cls(tuple(accounts))


def batch_columns(pool: Pool) -> dict[str, Any]:
    """What a batch stores of the pool it is sent through: its first account's base URL, organization and
    key fingerprint (as before pools), and the pool's spec unless it is the default account."""
    first = pool.accounts[0]
    return {
        "base_url": first.base_url,
        "organization": first.organization,
        "key_fingerprint": first.fingerprint(),
        "accounts": None if pool.default else pool.spec(),
    }


def refuse_unserved(pool: Pool, route: str, endpoint: str) -> None:
    """ConfigError when an account of the pool cannot serve the endpoint (Azure: moderations)."""
    if route == "none":
        azure = [a.name for a in pool.accounts if a.azure]
        if azure:
            raise ConfigError(f"Azure OpenAI does not serve {endpoint} (accounts: {', '.join(azure)})")


#: The name of the account today's flags and environment describe.
DEFAULT_NAME = "default"


def pool_from_settings(settings: Settings) -> Pool:
    """The pool the settings describe: the accounts file, else Azure, else the one OpenAI account."""
    if settings.accounts_file is not None:
        return Pool(tuple(read_accounts_file(settings.accounts_file, settings.secrets)))
    if settings.azure_endpoint is not None:
        env = settings.api_key_env if settings.api_key_env != "OPENAI_API_KEY" else AZURE_KEY_ENV
        return Pool((azure_account("azure", env, settings.secrets.get(env), settings),))
    return Pool(
        (
            Account(
                DEFAULT_NAME,
                settings.api_key_env,
                settings.api_key,
                settings.base_url,
                settings.organization,
                settings.project,
            ),
        )
    )


def azure_account(name: str, env: str, key: Secret | None, settings: Settings) -> Account:
    endpoint = settings.azure_endpoint
    assert endpoint is not None
    return Account(
        name,
        env,
        key,
        base_url=f"{endpoint}/openai",
        azure_endpoint=endpoint,
        api_version=settings.api_version,
        deployments=parse_deployments(settings.deployments),
    )


def parse_deployments(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`NAME=MODEL` items (from --deployment) as pairs; ConfigError for one without `=`."""
    pairs = []
    for item in items:
        name, sep, model = item.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise ConfigError(f"--deployment {item!r}: expected NAME=MODEL")
        pairs.append((name.strip(), model.strip()))
    return tuple(pairs)


def read_accounts_file(path: Path, secrets: Mapping[str, Secret]) -> list[Account]:
    """The `[[account]]` tables of a TOML file, each key read from the variable it names."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read accounts file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"account"})
    tables = data.get("account")
    if unknown:
        raise ConfigError(f"{path}: unknown key(s): {', '.join(unknown)} (expected [[account]] tables)")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: expected at least one [[account]] table")
    return [_account(table, f"{path}: account {i + 1}", secrets) for i, table in enumerate(tables)]


def _account(table: Mapping[str, Any], where: str, secrets: Mapping[str, Secret]) -> Account:
    unknown = sorted(set(table) - ACCOUNT_FIELDS)
    if unknown:
        hint = (
            " (keys are never in the file: name their variable with api_key_env)"
            if "api_key" in unknown
            else ""
        )
        raise ConfigError(f"{where}: unknown key(s): {', '.join(unknown)}{hint}")
    name, env = _text(table, "name", where), _text(table, "api_key_env", where)
    assert name is not None and env is not None
    endpoint = table.get("azure_endpoint")
    base_url = table.get("base_url")
    if endpoint is not None and base_url is not None:
        raise ConfigError(f"{where}: give base_url or azure_endpoint, not both")
    deployments = table.get("deployments", {})
    if not isinstance(deployments, Mapping) or not all(isinstance(v, str) for v in deployments.values()):
        raise ConfigError(f"{where}: deployments: expected a table of deployment name = model")
    azure = check_base_url(str(endpoint)) if endpoint is not None else None
    return Account(
        name=name,
        api_key_env=env,
        key=secrets.get(env),
        base_url=f"{azure}/openai" if azure else check_base_url(str(base_url or DEFAULT_BASE_URL)),
        organization=_text(table, "organization", where, required=False),
        project=_text(table, "project", where, required=False),
        azure_endpoint=azure,
        api_version=_text(table, "api_version", where, required=False),
        deployments=tuple(deployments.items()),
        rpm=_limit(table, "rpm", where),
        tpm=_limit(table, "tpm", where),
    )


def _text(table: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
    value = table.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {name}: expected a non-empty string")
    return value.strip()


def _limit(table: Mapping[str, Any], name: str, where: str) -> int | None:
    value = table.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {name}: expected a positive integer, got {value!r}")
    return value
