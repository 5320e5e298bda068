"""/v1/responses: validation through the CLI, answers read (finish reasons, output text and calls, usage
with cached and reasoning tokens), priced, estimated as chat, and the fake's answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pipeline.cli import EXIT_INVALID_INPUT
from pipeline.endpoints import by_name
from pipeline.fakeapi import FakeServer
from pipeline.prices import shipped
from pipeline.send.tokens import TOKENS_PER_MESSAGE, count_tokens
from tests.conftest import TEST_KEY, invoke
from tests.endpoint_cases import responses_line
from tests.helpers import write_jsonl
from tests.test_bad_input import assert_nothing_stored_or_sent

RESPONSES = by_name("responses")
MODEL = "gpt-4.1-mini"


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hello", **fields}


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no model": ({"input": "x"}, "body.model: required"),
    "no input": ({"model": MODEL}, "body.input: required"),
    "empty input": (body(input=""), "body.input: must not be empty"),
    "input not a list": (body(input=7), "body.input: must be a string or a list of items, got number"),
    "empty items": (body(input=[]), "body.input: must not be empty"),
    "item not an object": (body(input=["hi"]), "body.input[0]: must be an object, got string"),
    "instructions": (body(instructions=["be brief"]), "body.instructions: must be a string, got array"),
    "max_output_tokens": (body(max_output_tokens=0), "body.max_output_tokens: must be a positive integer"),
    "previous_response_id": (
        body(previous_response_id="resp_123"),
        "body.previous_response_id: not supported (a row may not build on another answer (rows are sent "
        "in no order); put the earlier turns in `input`)",
    ),
    "conversation": (body(conversation="conv_123"), "body.conversation: not supported"),
    "stream": (body(stream=True), "body.stream: not supported"),
    "background": (body(background=True), "body.background: not supported"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_every_invalid_line_is_one_file_line_error_and_nothing_is_stored_or_sent(
    fake: FakeServer, tmp_path: Path, case: str
) -> None:
    bad, message = INVALID[case]
    line = {"custom_id": "bad", "method": "POST", "url": "/v1/responses", "body": bad}
    path = write_jsonl(tmp_path / "jobs.jsonl", [responses_line(0), line])
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == EXIT_INVALID_INPUT
    errors = [text for text in result.stderr.splitlines() if text.startswith(f"{path}:")]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:2: {message}"), result.stderr
    assert_nothing_stored_or_sent(fake)


def test_every_other_parameter_passes_through_untouched(fake: FakeServer, tmp_path: Path) -> None:
    extra = {
        "tools": [{"type": "web_search_preview"}],
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "high", "summary": "auto"},
        "metadata": {"k": "v"},
        "store": False,
        "truncation": "auto",
        "include": ["reasoning.encrypted_content"],
        "service_tier": "flex",
    }
    path = write_jsonl(tmp_path / "jobs.jsonl", [{**responses_line(0), "body": body(**extra)}])
    assert invoke("run", str(path), "--base-url", fake.url).exit_code == 0
    (record,) = [orjson.loads(line) for line in invoke("export", "--format", "jsonl").stdout.splitlines()]
    assert record["request"] == body(**extra)
    assert {k: record["response"]["body"][k] for k in ("text", "reasoning", "metadata", "store")} == {
        k: extra[k] for k in ("text", "reasoning", "metadata", "store")
    }


# --- reading answers -----------------------------------------------------------------------------------


def answer(status: str = "completed", **fields: Any) -> dict[str, Any]:
    usage = {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 60},
        "output_tokens": 50,
        "output_tokens_details": {"reasoning_tokens": 30},
        "total_tokens": 150,
    }
    text = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris"}]}
    return {"id": "resp_1", "model": "o4-mini-2025-04-16", "status": status, "output": [text], "usage": usage,
            "error": None, "incomplete_details": None, **fields}  # fmt: skip


def test_usage_with_cached_and_reasoning_tokens_is_read_and_priced() -> None:
    parsed = RESPONSES.parse(answer())
    assert not isinstance(parsed, str)
    assert (parsed.response_id, parsed.model, parsed.finish_reasons, parsed.output) == (
        "resp_1", "o4-mini-2025-04-16", "completed", "Paris",
    )  # fmt: skip
    assert (parsed.prompt_tokens, parsed.cached_tokens, parsed.completion_tokens) == (100, 60, 50)
    assert (parsed.reasoning_tokens, parsed.total_tokens) == (30, 150)
    # reasoning tokens are output tokens; cached ones are input tokens at the cached price
    expected = (40 * 1.1 + 60 * 0.275 + 50 * 4.4) / 1_000_000
    assert shipped().cost("o4-mini-2025-04-16", "direct", 100, 60, 50) == pytest.approx(expected)


def test_incomplete_is_a_result_whose_reason_is_the_finish_reason() -> None:
    parsed = RESPONSES.parse(answer("incomplete", incomplete_details={"reason": "max_output_tokens"}))
    assert not isinstance(parsed, str) and parsed.finish_reasons == "max_output_tokens"
    parsed = RESPONSES.parse(answer("incomplete", incomplete_details={"reason": "content_filter"}))
    assert not isinstance(parsed, str) and parsed.finish_reasons == "content_filter"


def test_the_output_is_its_text_else_its_refusal_else_its_calls() -> None:
    parts = [{"type": "output_text", "text": "a"}, {"type": "output_text", "text": "b"}]
    reasoning = {"type": "reasoning", "summary": []}
    two = answer(output=[reasoning, {"type": "message", "content": parts}])
    refusal = answer(output=[{"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}])
    call = {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c1"}
    calls = answer(output=[reasoning, call])
    outputs = [RESPONSES.parse(a) for a in (two, refusal, calls, answer(output=[reasoning]))]
    assert [getattr(p, "output", p) for p in outputs] == ["ab", "No.", orjson.dumps([call]).decode(), None]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "no `output`"),
        ({"status": "completed"}, "no `output`"),
        ({"error": {"message": "boom"}, "status": "failed", "output": None}, "an error object"),
        (answer("failed"), "a response with status 'failed'"),
        (answer("queued"), "a response with status 'queued'"),
    ],
)
def test_a_response_that_is_not_done_is_no_answer(data: dict[str, Any], problem: str) -> None:
    assert RESPONSES.parse(data) == problem


def test_an_answer_cut_by_max_output_tokens_succeeds_and_is_sent_once(
    fake: FakeServer, tmp_path: Path
) -> None:
    line = {**responses_line(0), "body": body(input="tell me a long story " * 10, max_output_tokens=16)}
    path = write_jsonl(tmp_path / "jobs.jsonl", [line])
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr
    (record,) = [orjson.loads(text) for text in invoke("export", "--format", "jsonl").stdout.splitlines()]
    assert (record["status"], record["finish_reasons"], record["attempts"]) == (
        "succeeded", ["max_output_tokens"], 1,
    )  # fmt: skip
    assert record["usage"]["completion_tokens"] == 16 and fake.stats()["received"] == 1


# --- estimate: as chat -------------------------------------------------------------------------------


def test_estimate_counts_instructions_and_items_and_caps_at_max_output_tokens(tmp_path: Path) -> None:
    items = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]},
    ]
    lines = [
        {**responses_line(0), "body": body(input=items, instructions="Answer kindly.", max_output_tokens=40)}
    ]
    result = orjson.loads(invoke("estimate", str(write_jsonl(tmp_path / "r.jsonl", lines)), "--json").stdout)
    (model,) = result["models"]
    texts = ["Answer kindly.", "Be brief.", "Hi there"]
    prompt = sum(count_tokens(text, MODEL) for text in texts) + 2 * TOKENS_PER_MESSAGE
    assert (model["prompt_tokens"], model["messages"], model["completion_high"]) == (prompt, 2, 40)
    assert model["reserved_tokens"] == prompt + 40 and model["unbounded_requests"] == 0


# --- the fake ------------------------------------------------------------------------------------------


def post(fake: FakeServer, payload: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10) as http:
        return http.post("/responses", json=payload)


def test_the_fake_echoes_and_cuts_and_reasons(fake: FakeServer) -> None:
    done = post(fake, body(input=[{"role": "user", "content": "Hi"}])).json()
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "echo: Hi"
    assert done["usage"]["input_tokens"] == 1 and done["usage"]["output_tokens"] == 2
    cut = post(fake, body(input="x" * 400, max_output_tokens=16)).json()
    assert (cut["status"], cut["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert cut["usage"]["output_tokens"] == 16 and len(cut["output"][0]["content"][0]["text"]) == 64
    thought = post(fake, body(input="Hi", reasoning={"effort": "low"})).json()
    assert [item["type"] for item in thought["output"]] == ["reasoning", "message"]
    assert thought["usage"]["output_tokens_details"]["reasoning_tokens"] == 4
    assert fake.stats()["usage"] == {"prompt_tokens": 1 + 100 + 1, "completion_tokens": 2 + 16 + 6}


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"input": "x"}, 400, "Missing required parameter: 'model'."),
        ({"model": MODEL}, 400, "Missing required parameter: 'input'."),
        (body(max_output_tokens=8), 400, "Invalid 'max_output_tokens': integer below minimum value."),
        (body(previous_response_id="resp_x"), 400, "Previous response with id 'resp_x' not found."),
        (body(stream=True), 400, "The fake API does not support stream=true."),
        (body(model="does-not-exist"), 404, "The model `does-not-exist` does not exist"),
    ],
)
def test_the_fake_refuses_what_openai_refuses(
    fake: FakeServer, payload: dict[str, Any], status: int, message: str
) -> None:
    response = post(fake, payload)
    assert response.status_code == status and response.json()["error"]["message"].startswith(message)
