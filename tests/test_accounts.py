"""Accounts and pools (pipeline/accounts.py), the account choice (send/routing.py) and adaptive concurrency
(send/adaptive.py), without a server."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from pipeline.accounts import Pool, batch_columns, pool_from_settings
from pipeline.endpoints import by_name
from pipeline.errors import ConfigError
from pipeline.ratelimit.local import LocalLimiter
from pipeline.ratelimit.rules import Limits
from pipeline.send.adaptive import BACKOFF, next_limit
from pipeline.send.routing import NoAccount, Routes
from pipeline.settings import Settings

POOL_TOML = """
[[account]]
name = "east"
api_key_env = "EAST_KEY"
azure_endpoint = "https://east.openai.azure.com/"
api_version = "2024-10-21"
deployments = { "mini-east" = "gpt-4o-mini" }
rpm = 3000

[[account]]
name = "v1"
api_key_env = "WEST_KEY"
azure_endpoint = "https://west.openai.azure.com"
deployments = { "mini-west" = "gpt-4o-mini" }

[[account]]
name = "openai"
api_key_env = "OPENAI_KEY_2"
organization = "org-2"
project = "proj-2"
"""


def _settings(tmp_path: Path, text: str = POOL_TOML, **env: str) -> Settings:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return Settings.load({"accounts_file": str(path)}, {"EAST_KEY": "k-east", "WEST_KEY": "k-west", **env})


def test_an_accounts_file_makes_a_pool_with_each_key_from_its_variable(tmp_path: Path) -> None:
    pool = pool_from_settings(_settings(tmp_path))
    east, v1, openai = pool.accounts
    assert [a.kind for a in pool.accounts] == ["azure", "azure-v1", "openai"]
    assert east.azure_endpoint == "https://east.openai.azure.com" and east.rpm == 3000
    assert east.key is not None and east.key.reveal() == "k-east"
    assert openai.key is None  # OPENAI_KEY_2 unset: that account is benched where it runs
    pool.require_keys()  # others have theirs
    chat, responses = by_name("chat"), by_name("responses")
    assert east.url(chat.path, chat.azure, "mini-east") == (
        "https://east.openai.azure.com/openai/deployments/mini-east/chat/completions?api-version=2024-10-21"
    )
    assert east.url(responses.path, responses.azure, "mini-east") == (
        "https://east.openai.azure.com/openai/responses?api-version=2024-10-21"
    )
    assert (
        v1.url(chat.path, chat.azure, "mini-west")
        == "https://west.openai.azure.com/openai/v1/chat/completions"
    )
    assert openai.url(chat.path, chat.azure, "gpt-4o-mini") == "https://api.openai.com/v1/chat/completions"
    assert east.headers("ua")["api-key"] == "k-east" and "Authorization" not in east.headers("ua")
    # a line's model names its deployment, or the one deployment serving that model
    assert east.deployment_for("gpt-4o-mini") == "mini-east" and east.deployment_for("other") == "other"
    assert east.model_of("mini-east") == "gpt-4o-mini"
    assert pool.aliases() == {"mini-east": "gpt-4o-mini", "mini-west": "gpt-4o-mini"}


def test_a_batch_keeps_its_pool_without_any_key_and_another_machine_rebuilds_it(tmp_path: Path) -> None:
    pool = pool_from_settings(_settings(tmp_path))
    columns = batch_columns(pool)
    text = repr(columns) + repr(pool)
    assert "k-east" not in text and "k-west" not in text
    assert columns["accounts"][0]["key_fingerprint"] == pool.accounts[0].fingerprint()
    rebuilt = Pool.from_spec(columns["accounts"], Settings.load({}, {"EAST_KEY": "k-east"}).secrets)
    assert rebuilt.accounts == pool.accounts  # compared by what they are, never by their keys
    assert rebuilt.accounts[1].key is None  # WEST_KEY is not set on this machine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[account]]\nname = "a"\napi_key_env = "K"\napi_key = "sk-x"\n', "keys are never in the file"),
        ('[[account]]\nname = "a"\napi_key_env = "K"\nrpm = 0\n', "rpm: expected a positive integer"),
        ('[[account]]\nname = "a"\n', "api_key_env: expected a non-empty string"),
        ('other = 1\n[[account]]\nname = "a"\napi_key_env = "K"\n', "unknown key(s): other"),
        (
            '[[account]]\nname = "a"\napi_key_env = "K"\n[[account]]\nname = "a"\napi_key_env = "L"\n',
            "unique",
        ),
        ("[[account]\n", "not valid TOML"),
    ],
)
def test_a_bad_accounts_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pool_from_settings(_settings(tmp_path, text))


def test_azure_from_the_sdk_s_environment_names(tmp_path: Path) -> None:
    env = {
        "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
        "AZURE_OPENAI_API_KEY": "az-secret",
        "OPENAI_API_VERSION": "2024-10-21",
    }
    settings = Settings.load({"deployments": ("fast=gpt-4o-mini",)}, env)
    (account,) = pool_from_settings(settings).accounts
    assert account.kind == "azure" and account.deployments == (("fast", "gpt-4o-mini"),)
    assert account.key is not None and account.key.reveal() == "az-secret"
    assert "az-secret" not in repr(settings) and "az-secret" not in repr(account)
    with pytest.raises(ConfigError, match="NAME=MODEL"):
        pool_from_settings(Settings.load({"deployments": ("fast",)}, env))


def test_the_adaptive_rule_grows_while_nothing_queues_and_backs_off_when_latency_or_errors_say_so() -> None:
    assert next_limit(10, 0.1, 0.1, False, 512) > 10  # as fast as the fastest: grow
    assert next_limit(10, 0.1, 0.1, True, 512) == pytest.approx(10 * BACKOFF)  # 429/503: cut
    assert next_limit(10, 0.3, 0.1, False, 512) < 10  # three times slower: a queue, shrink
    assert next_limit(600, 0.1, 0.1, False, 512) == 512  # never past --max-in-flight
    assert next_limit(1, 1.0, 0.1, True, 512) == 1  # never below one

    # Against a server whose latency is base x max(1, in_flight / capacity), the limit settles past the
    # knee (throughput is already the server's most there) and well below twice it.
    capacity, limit = 40, 4.0
    for _ in range(20_000):
        latency = 0.1 * max(1.0, limit / capacity)
        limit = next_limit(limit, latency, 0.1, False, 512)
    assert capacity <= limit < 2 * capacity


def _route(tmp_path: Path, text: str, **env: str) -> tuple[Routes, LocalLimiter]:
    limiter = LocalLimiter()
    settings = _settings(tmp_path, text, **env)
    routes = Routes(settings, limiter, set().add)
    routes.add("b", batch_columns(pool_from_settings(settings))["accounts"])
    return routes, limiter


TWO_KEYS = """
[[account]]
name = "a"
api_key_env = "A_KEY"
base_url = "http://127.0.0.1:9/v1"
rpm = 600

[[account]]
name = "b"
api_key_env = "B_KEY"
base_url = "http://127.0.0.1:9/v1"
rpm = 1200
"""


def test_a_pool_grants_from_every_account_with_budget_and_none_from_a_benched_one(tmp_path: Path) -> None:
    routes, limiter = _route(tmp_path, TWO_KEYS, A_KEY="ka", B_KEY="kb")
    route = routes.by_batch["b"]
    targets = route.targets(by_name("chat"), "m")
    assert [t.key.key_fingerprint for t in targets] == [
        a.fingerprint() for a in route.pool.accounts
    ]  # one limit key per account
    assert limiter._state(targets[1].key).given == Limits(1200, None)

    async def take(n: int) -> list[str]:
        chosen = []
        for _ in range(n):
            target = await route.acquire(targets, 1, "b", 1.0)
            route.lanes[target.index].gate.leave(None, False)
            chosen.append(route.lanes[target.index].account.name)
        return chosen

    # Buckets start empty and fill at each account's rate: over 1.5 s, about 600/60 x 1.5 and 1200/60 x 1.5.
    async def for_a_while() -> list[str]:
        chosen: list[str] = []
        deadline = asyncio.get_running_loop().time() + 1.5
        while asyncio.get_running_loop().time() < deadline:
            chosen += await take(1)
        return chosen

    chosen = asyncio.run(for_a_while())
    share_b = chosen.count("b") / len(chosen)
    assert 0.5 < share_b < 0.85  # b has twice a's budget
    assert route.bench(1, "HTTP 401") is True  # a is left
    assert set(asyncio.run(take(3))) == {"a"}
    assert route.bench(0, "HTTP 429 insufficient_quota") is False
    with pytest.raises(NoAccount, match="a: HTTP 429 insufficient_quota; b: HTTP 401"):
        asyncio.run(take(1))


def test_an_account_whose_key_is_not_set_here_is_benched_here_only(tmp_path: Path) -> None:
    routes, _ = _route(tmp_path, TWO_KEYS, A_KEY="ka")
    route = routes.by_batch["b"]
    assert route.lanes[1].down == "B_KEY is not set on this machine"
    assert route.benched == [None, None] and not route.usable(1)
    # a key other than the one the batch was submitted with is not used either
    spec = batch_columns(pool_from_settings(_settings(tmp_path, TWO_KEYS, A_KEY="ka", B_KEY="kb")))[
        "accounts"
    ]
    other = Routes(_settings(tmp_path, TWO_KEYS, A_KEY="ka", B_KEY="another"), LocalLimiter(), set().add)
    assert other.add("c", spec).lanes[1].down == "B_KEY holds another key than the batch was submitted with"
    assert math.isfinite(route.lanes[0].gate.limit)


def test_estimate_times_a_file_at_the_pool_s_summed_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orjson

    from tests.conftest import invoke
    from tests.helpers import chat_file

    monkeypatch.setenv("A_KEY", "ka")
    monkeypatch.setenv("B_KEY", "kb")
    (tmp_path / "pool.toml").write_text(TWO_KEYS)
    jobs = chat_file(tmp_path / "jobs.jsonl", 900)
    result = invoke("estimate", str(jobs), "--accounts", str(tmp_path / "pool.toml"), "--json")
    assert result.exit_code == 0, result.stderr
    (model,) = orjson.loads(result.stdout)["models"]
    assert model["rpm"] == 1800 and model["seconds"] == 30.0  # 600 + 1,200 RPM
