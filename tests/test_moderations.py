"""/v1/moderations: validation through the CLI, results read (flagged, categories), free but rate limited,
and the fake's answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pipeline.cli import EXIT_INVALID_INPUT
from pipeline.endpoints import by_name
from pipeline.fakeapi import FakeServer
from pipeline.fakeapi._moderations import CATEGORIES
from pipeline.send.tokens import count_tokens
from tests.conftest import TEST_KEY, invoke
from tests.endpoint_cases import moderations_line
from tests.helpers import write_jsonl
from tests.test_bad_input import assert_nothing_stored_or_sent

MODERATIONS = by_name("moderations")

INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no input": ({"model": "omni-moderation-latest"}, "body.input: required"),
    "input a number": (
        {"input": 3},
        "body.input: must be a string, a list of strings or a list of content parts",
    ),
    "empty list": ({"input": []}, "body.input: must not be empty"),
    "mixed": ({"input": ["a", {"type": "text", "text": "b"}]}, "body.input: must be a string, a list of"),
    "part without type": ({"input": [{"text": "b"}]}, "body.input: must be a string, a list of strings or"),
    "model not a string": ({"input": "a", "model": 5}, "body.model: must be a non-empty string, got 5"),
    "stream": ({"input": "a", "stream": True}, "body.stream: not supported"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_every_invalid_line_is_one_file_line_error_and_nothing_is_stored_or_sent(
    fake: FakeServer, tmp_path: Path, case: str
) -> None:
    bad, message = INVALID[case]
    line = {"custom_id": "bad", "method": "POST", "url": "/v1/moderations", "body": bad}
    path = write_jsonl(tmp_path / "jobs.jsonl", [moderations_line(0), line])
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == EXIT_INVALID_INPUT
    errors = [text for text in result.stderr.splitlines() if text.startswith(f"{path}:")]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:2: {message}"), result.stderr
    assert_nothing_stored_or_sent(fake)


def test_results_are_read_flagged_or_not() -> None:
    flagged = {"flagged": True, "categories": {"violence": True, "hate": False, "harassment": True}}
    calm = {"flagged": False, "categories": {"violence": False}}
    parsed = MODERATIONS.parse(
        {"id": "modr-1", "model": "omni-moderation-latest", "results": [calm, flagged]}
    )
    assert not isinstance(parsed, str)
    assert (parsed.flagged, parsed.output, parsed.response_id) == (True, "harassment|violence", "modr-1")
    assert parsed.prompt_tokens is None  # the API reports no usage
    assert MODERATIONS.parse({"results": [calm]}) != MODERATIONS.parse({"results": []}) == "no `results`"
    assert MODERATIONS.parse({"results": [{"categories": {}}]}) == "a result without `flagged`"


def test_free_but_rate_limited(fake: FakeServer, tmp_path: Path) -> None:
    """No cost, no cap to pause on (even for a model the price table does not know), and the requests still
    wait for the rate limit: the limiter reserves their input tokens."""
    fake.config.rpm = 600  # 10 a second
    lines = [moderations_line(i, model="text-moderation-unknown") for i in range(12)]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    result = invoke("run", str(path), "--base-url", fake.url, "--max-cost", "0.000001", "--rpm", "300")
    assert result.exit_code == 0, result.stderr
    status = orjson.loads(invoke("status", "--json").stdout)
    assert (status["succeeded"], status["cost_usd"], status["unpriced_models"]) == (12, 0.0, [])
    assert status["rate_limited"] == 0 and status["limits"][0]["rpm"] == 300
    estimate = orjson.loads(invoke("estimate", str(path), "--json").stdout)
    assert estimate["cost_usd"] == {"low": 0.0, "high": 0.0} and estimate["models"][0]["free"]
    texts = [line["body"]["input"] for line in lines]
    prompt = sum(count_tokens(t) for text in texts for t in ([text] if isinstance(text, str) else text))
    assert estimate["prompt_tokens"] == prompt


def test_without_a_model_the_default_is_the_rate_limit_key(fake: FakeServer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", [{**moderations_line(0), "body": {"input": "hello"}}])
    assert invoke("run", str(path), "--base-url", fake.url).exit_code == 0
    status = orjson.loads(invoke("status", "--json").stdout)
    assert [limit["model"] for limit in status["limits"]] == ["omni-moderation-latest"]
    assert status["cost_by_model"] == {"omni-moderation-latest": 0.0}


# --- the fake ------------------------------------------------------------------------------------------


def post(fake: FakeServer, payload: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10) as http:
        return http.post("/moderations", json=payload)


def test_the_fake_flags_by_keyword_deterministically(fake: FakeServer) -> None:
    answer = post(fake, {"input": ["I will kill time", "a calm sentence"]}).json()
    assert answer["model"] == "omni-moderation-latest" and answer["id"].startswith("modr-")
    first, second = answer["results"]
    assert first["flagged"] and first["categories"]["violence"] and not second["flagged"]
    assert list(first["category_scores"]) == list(CATEGORIES)
    assert first["category_scores"]["violence"] >= 0.9 and max(second["category_scores"].values()) < 0.01
    again = post(fake, {"input": "a calm sentence"}).json()["results"][0]
    assert again["category_scores"] == second["category_scores"]
    image = post(fake, {"input": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}).json()
    assert image["results"][0]["category_applied_input_types"]["violence"] == ["text", "image"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "Missing required parameter: 'input'."),
        ({"input": 5}, "'$.input' is invalid."),
        ({"input": "a", "model": 3}, "Invalid type for 'model'"),
    ],
)
def test_the_fake_refuses_what_openai_refuses(
    fake: FakeServer, payload: dict[str, Any], message: str
) -> None:
    response = post(fake, payload)
    assert response.status_code == 400 and response.json()["error"]["message"].startswith(message)
