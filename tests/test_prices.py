"""Prices that stay current: a current model of each endpoint priced, `pipeline prices update` from a
local HTTP server or the installed genai-prices, the refreshed table in force and dated in `status`,
aliases, and a spend cap refused at submit when a model has no price."""

from __future__ import annotations

import datetime
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

import pipeline
from pipeline.fakeapi import FakeServer
from pipeline.price_sources import from_document
from pipeline.prices import PriceTable, load_prices, shipped
from pipeline.settings import Settings
from pipeline.store.db import open_database
from tests.conftest import invoke
from tests.helpers import batch_of, chat_file, chat_line, status_of, write_jsonl

#: A current model of each endpoint: (model, prompt tokens, completion tokens, audio seconds) -> USD > 0,
#: except moderations, which are free (priced 0, never unpriced).
CURRENT = {
    "chat": "gpt-5.1",
    "chat (small)": "gpt-4o-mini",
    "completions": "gpt-3.5-turbo-instruct",
    "transcriptions (per minute)": "whisper-1",
    "transcriptions (tokens)": "gpt-4o-transcribe",
    "embeddings": "text-embedding-3-small",
    "embeddings (large)": "text-embedding-3-large",
    "responses": "o3",
}

#: genai-prices' data.json shape (a list of providers), cut to what the converter reads.
GENAI_DATA = [
    {
        "id": "anthropic",
        "models": [{"id": "claude-x", "match": {"equals": "claude-x"}, "prices": {"input_mtok": 9}}],
    },
    {
        "id": "openai",
        "models": [
            {
                "id": "gpt-new",
                "match": {
                    "or": [{"equals": "gpt-new"}, {"equals": "gpt-new-2026-11-01"}, {"starts_with": "x"}]
                },
                "prices": [
                    {"prices": {"input_mtok": 4, "output_mtok": 16}},
                    {
                        "constraint": {"start_date": "2026-06-01"},
                        "prices": {"input_mtok": 2, "output_mtok": 8},
                    },
                    {
                        "constraint": {"start_date": "2099-01-01"},
                        "prices": {"input_mtok": 1, "output_mtok": 1},
                    },
                    {
                        "constraint": {"start_time": "00:00:00", "end_time": "06:00:00"},
                        "prices": {"input_mtok": 0},
                    },
                ],
            },
            {
                "id": "gpt-long",
                "match": {"equals": "gpt-long"},
                "prices": {
                    "input_mtok": {"base": 3, "tiers": [{"start": 200000, "price": 6}]},
                    "cache_read_mtok": 0.3,
                },
            },
            {"id": "whisper-1", "match": {"equals": "whisper-1"}, "prices": {"audio_hours": 0.36}},
            {
                "id": "gpt-4o-transcribe",
                "match": {"equals": "gpt-4o-transcribe"},
                "prices": {"input_mtok": 2.5, "output_mtok": 10, "input_audio_mtok": 6},
            },
            {"id": "web-only", "match": {"equals": "web-only"}, "prices": {"web_searches_kcount": 10}},
        ],
    },
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on a free loopback port serving `tmp_path / "www"`: (its URL, that folder)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.mark.parametrize("table", ["shipped", "genai-prices"])
def test_a_current_model_of_each_endpoint_is_priced(table: str, tmp_path: Path) -> None:
    if table == "genai-prices":
        assert invoke("prices", "update").exit_code == 0
        prices = load_prices(Settings.load())
        assert prices.origin == "refreshed" and prices.source.startswith("genai-prices")
    else:
        prices = shipped()
    for endpoint, model in CURRENT.items():
        usd = prices.cost(model, "direct", 1000, 0, 500, 60.0)
        assert usd is not None and usd > 0, (endpoint, model)
        assert prices.cost(f"{model}-2026-01-01", "direct", 1000, 0, 500, 60.0) == usd  # a dated snapshot
    assert prices.cost("whisper-1", "direct", 0, 0, 0, 60.0) == pytest.approx(0.006)
    assert prices.cost("gpt-4o-mini", "batch-api", 10**6, 0, 0) == pytest.approx(0.075)  # half price
    assert shipped().cost("omni-moderation-latest", "direct", 1000, 0, 0) == 0.0  # free, not unpriced


def test_prices_update_from_a_local_server_is_in_force_and_dated_in_status(
    fake: FakeServer, served: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = served
    table = {"as_of": "2026-12-01", "source": "our team's prices", "models": {"gpt-4o-mini": {"input": 1000}}}
    (root / "prices.json").write_bytes(orjson.dumps(table))
    result = invoke("prices", "update", "--from", f"{url}/prices.json")
    assert result.exit_code == 0, result.stderr
    assert "1 model prices as of 2026-12-01 from our team's prices" in result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "data" / "prices.json"

    prices = load_prices(Settings.load())
    mini = prices.price("gpt-4o-mini")
    assert mini is not None and mini.input == 1000
    assert prices.price("gpt-4o") == shipped().price("gpt-4o")  # the shipped table stays under it
    run = invoke("run", str(chat_file(tmp_path / "jobs.jsonl", 3)), "--base-url", fake.url)
    report = status_of(batch_of(run.stdout))
    assert report["prices"] == {"as_of": "2026-12-01", "source": "our team's prices", "origin": "refreshed"}
    assert "[prices as of 2026-12-01, refreshed table]" in invoke("status").stdout
    shown = orjson.loads(invoke("prices", "show", "gpt-4o-mini", "nope", "--json").stdout)
    assert shown["origin"] == "refreshed"
    assert shown["models"] == {"gpt-4o-mini": {"input": 1000.0, "output": 0.0}, "nope": None}


def test_prices_update_reads_genai_prices_data_from_a_url(served: tuple[str, Path]) -> None:
    url, root = served
    (root / "data.json").write_bytes(orjson.dumps(GENAI_DATA))
    assert invoke("prices", "update", "--from", f"{url}/data.json").exit_code == 0
    prices = load_prices(Settings.load())
    assert prices.source == f"genai-prices data from {url}/data.json"
    new = prices.price("gpt-new-2026-11-01")
    assert new is not None and (new.input, new.output) == (2, 8)  # in force today: started, not future
    long = prices.price("gpt-long")
    assert long is not None and (long.input, long.cached_input) == (3, 0.3)  # the base tier
    assert prices.price("whisper-1") == shipped().price("whisper-1")  # 0.36/h = 0.006/min
    transcribe = prices.price("gpt-4o-transcribe")
    assert transcribe is not None and transcribe.input == 6  # its prompt is the clip: audio input price
    assert prices.price("claude-x") is None and "web-only" not in prices.models


def test_prices_update_refuses_what_it_cannot_use_and_changes_nothing(served: tuple[str, Path]) -> None:
    url, root = served
    (root / "bad.json").write_text('{"models": {"m": {"input": -1}}}')
    (root / "other.json").write_text('{"hello": 1}')
    for path, message in (
        ("bad.json", "m.input: expected a number >= 0"),
        ("other.json", "neither a price table"),
        ("missing.json", "HTTP 404"),
    ):
        result = invoke("prices", "update", "--from", f"{url}/{path}")
        assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert load_prices(Settings.load()).origin == "shipped"


def test_a_price_table_prices_aliases_as_their_model() -> None:
    table = shipped().with_aliases({"my-gpt4o-deployment": "gpt-4o-2024-08-06"})
    assert table.price("my-gpt4o-deployment") == shipped().price("gpt-4o")
    usd = shipped().cost("gpt-4o", "direct", 1000, 0, 0)
    assert usd and table.cost("my-gpt4o-deployment", "direct", 1000, 0, 0) == usd
    assert table.unpriced(["my-gpt4o-deployment", "other-deployment"]) == ["other-deployment"]
    assert isinstance(table, PriceTable) and shipped().price("my-gpt4o-deployment") is None


def test_a_genai_prices_document_with_no_openai_models_is_refused() -> None:
    with pytest.raises(pipeline.ConfigError, match="neither a price table"):
        from_document([{"id": "anthropic", "models": []}], "x", datetime.date(2026, 12, 1))


def test_a_capped_run_with_an_unpriced_model_is_refused_at_submit(
    fake: FakeServer, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    job = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            chat_line("a", "hi"),
            chat_line("b", "hi", model="my-own-model"),
            chat_line("c", "hi", model="zz-model"),
        ],
    )
    for command in (["run", "--base-url", fake.url], ["submit"]):
        result = invoke(*command, str(job), "--max-cost", "5")
        assert result.exit_code == 1, (command, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line == (
            "Error: --max-cost needs a price for every model of the batch: no price for my-own-model, "
            "zz-model (add them with --prices FILE, or run `pipeline prices update`)"
        )
    with pytest.raises(pipeline.ConfigError, match="no price for my-own-model, zz-model"):
        pipeline.submit(job, base_url=fake.url, max_cost=5)
    with open_database(database_url).read() as s:
        assert s.execute(text("SELECT count(*) FROM batches")).scalar() == 0
    assert fake.stats()["received"] == 0
    prices = tmp_path / "p.json"
    prices.write_bytes(orjson.dumps({"models": {"my-own-model": {"input": 1}, "zz-model": {"input": 1}}}))
    result = invoke("run", str(job), "--base-url", fake.url, "--max-cost", "5", "--prices", str(prices))
    assert result.exit_code == 0, result.stderr  # priced now: stored and sent
