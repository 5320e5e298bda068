"""The fake's directives (`fake:{...}` prompts), exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline.fakeapi import FakeConfig, FakeServer
from tests.test_fakeapi import AUTH, KEY, MODEL, tokens, transcribe, wav_bytes

pytestmark = pytest.mark.integration

#: The error object of a directed 5xx, or of a 200 error body, that names no message, type or code.
SERVER_ERROR = {
    "message": "The server had an error while processing your request. Sorry about that!",
    "type": "server_error",
    "param": None,
    "code": None,
}


def directive(**keys: Any) -> str:
    return "fake:" + json.dumps(keys)


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer(FakeConfig(api_key=KEY)) as server:
        yield server


@pytest.fixture
def client(fake: FakeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers=AUTH, timeout=30) as http:
        yield http


def post(client: httpx.Client, prompt: str, **extra: Any) -> httpx.Response:
    return client.post("/chat/completions", json=chat(prompt, **extra))


# --- what answers say -----------------------------------------------------------------------------------


def test_model_directive_names_the_answer_model(client: httpx.Client) -> None:
    long_name = "m" * 500
    answer = post(client, directive(model=long_name))
    assert answer.status_code == 200
    assert answer.json()["model"] == long_name
    completion = client.post("/completions", json={"model": MODEL, "prompt": directive(model="other")})
    assert completion.json()["model"] == "other"


def test_request_id_directive_sets_the_header_of_answers_and_errors(client: httpx.Client) -> None:
    long_id = "req_" + "a" * 1000
    assert post(client, directive(request_id=long_id)).headers["x-request-id"] == long_id
    error = post(client, directive(request_id="req_x", status=500))
    assert (error.status_code, error.headers["x-request-id"]) == (500, "req_x")
    assert post(client, directive(body="html", request_id="req_y")).headers["x-request-id"] == "req_y"


def test_content_directive_is_every_choice_any_characters_never_cut(client: httpx.Client) -> None:
    content = "nul \u0000 here, \U0001f600 and \\ too"
    prompt = directive(content=content)
    data = post(client, prompt, n=2, max_tokens=1).json()
    assert [choice["message"]["content"] for choice in data["choices"]] == [content, content]
    assert {choice["finish_reason"] for choice in data["choices"]} == {"stop"}
    usage = data["usage"]
    assert usage["prompt_tokens"] == tokens(prompt)
    assert usage["completion_tokens"] == 2 * tokens(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_content_directive_in_a_legacy_completion(client: httpx.Client) -> None:
    prompt = directive(content="plain \u0000")
    data = client.post("/completions", json={"model": MODEL, "prompt": prompt}).json()
    [choice] = data["choices"]
    assert (choice["text"], choice["finish_reason"]) == ("plain \u0000", "stop")
    assert data["usage"]["completion_tokens"] == tokens("plain \u0000")


def test_content_directive_is_a_forced_calls_arguments(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    body = chat(directive(content="{not json"), tools=tools, tool_choice="required")
    [choice] = client.post("/chat/completions", json=body).json()["choices"]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == "{not json"
    assert choice["finish_reason"] == "tool_calls"


def test_pad_directive_makes_the_text_exactly_that_long(client: httpx.Client) -> None:
    size = 3_000_000
    data = post(client, directive(content="start", pad=size)).json()
    text = data["choices"][0]["message"]["content"]
    assert (len(text), text[:5]) == (size, "start")
    assert data["usage"]["completion_tokens"] == tokens(text)
    natural = post(client, directive(pad=100)).json()["choices"][0]["message"]["content"]
    assert len(natural) == 100
    assert natural.startswith("echo: fake:")
    cut = post(client, directive(content="abcdef", pad=3)).json()
    assert cut["choices"][0]["message"]["content"] == "abc"


# --- error answers and bad bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "status", "error"),
    [
        ({"status": 503}, 503, SERVER_ERROR),
        (
            {"code": "c" * 300},
            400,
            {
                "message": "The fake answers 400, as its directive says.",
                "type": "invalid_request_error",
                "param": None,
                "code": "c" * 300,
            },
        ),
        (
            {"status": 429, "type": "tokens", "code": "rate_limit_exceeded", "message": "Slow down."},
            429,
            {"message": "Slow down.", "type": "tokens", "param": None, "code": "rate_limit_exceeded"},
        ),
    ],
)
def test_error_directives(
    fake: FakeServer, client: httpx.Client, keys: dict[str, Any], status: int, error: dict[str, Any]
) -> None:
    response = post(client, directive(**keys))
    assert response.status_code == status
    assert response.json() == {"error": error}
    assert (fake.stats()["by_status"], fake.stats()["answered"]) == ({str(status): 1}, 0)


def _not_json(response: httpx.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(
    ("kind", "content_type", "check"),
    [
        ("empty", "application/json", lambda r: r.content == b""),
        ("html", "text/html", lambda r: r.text.startswith("<!DOCTYPE html>") and _not_json(r)),
        ("empty_object", "application/json", lambda r: r.json() == {}),
        ("not_json", "application/json", lambda r: r.text.startswith("upstream connect") and _not_json(r)),
        ("error", "application/json", lambda r: r.json() == {"error": SERVER_ERROR}),
    ],
)
def test_bad_body_directives_answer_200(
    fake: FakeServer, client: httpx.Client, kind: str, content_type: str, check: Any
) -> None:
    response = post(client, directive(body=kind))
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == content_type
    assert check(response)
    assert (fake.stats()["answered"], fake.stats()["by_status"]) == (1, {"200": 1})


def test_error_body_directive_takes_code_type_and_message(client: httpx.Client) -> None:
    response = post(client, directive(body="error", code="x" * 200, type="overloaded", message="busy"))
    assert response.status_code == 200
    assert response.json() == {
        "error": {"message": "busy", "type": "overloaded", "param": None, "code": "x" * 200}
    }


def test_truncated_body_is_the_first_half_of_the_real_answer(client: httpx.Client) -> None:
    prompt = directive(body="truncated", times=1)
    truncated, whole = post(client, prompt), post(client, prompt)  # the second is the real answer
    assert (truncated.status_code, whole.status_code) == (200, 200)
    assert truncated.headers["content-type"] == "application/json"
    assert _not_json(truncated)
    assert len(truncated.content) == len(whole.content) // 2
    assert truncated.content.startswith(b'{"id":"chatcmpl-')
    assert whole.json()["choices"][0]["message"]["content"] == f"echo: {prompt}"


# --- times and latency ----------------------------------------------------------------------------------


def test_times_applies_to_the_first_receipts_then_answers_normally(
    fake: FakeServer, client: httpx.Client
) -> None:
    prompt = directive(status=500, times=2)
    raw = json.dumps(chat(prompt)).encode()

    def send() -> httpx.Response:
        return client.post("/chat/completions", content=raw, headers={"content-type": "application/json"})

    responses = [send() for _ in range(4)]
    assert [r.status_code for r in responses] == [500, 500, 200, 200]
    assert responses[3].json()["choices"][0]["message"]["content"] == f"echo: {prompt}"
    assert fake.stats()["bodies"][hashlib.sha256(raw).hexdigest()] == {"received": 4, "answered": 2}
    assert post(client, directive(status=500, times=2, model="y")).status_code == 500  # another body
    fake.reset()  # receipts are counted in the stats: a reset starts them again
    assert send().status_code == 500


def test_times_zero_never_applies(client: httpx.Client) -> None:
    assert post(client, directive(status=500, times=0)).status_code == 200


def test_latency_directive_delays_the_answer(client: httpx.Client) -> None:
    started = time.monotonic()
    assert post(client, directive(latency=0.3)).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert post(client, directive(latency=0.2, status=502)).status_code == 502
    assert time.monotonic() - started >= 0.2


# --- where directives apply, and malformed ones ------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": directive(status=500)}, {"role": "user", "content": "later"}],
        [{"role": "user", "content": [{"type": "text", "text": directive(status=500)}]}],
        [{"role": "system", "content": directive(status=500)}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "not fake:{}"}],
    ],
)
def test_only_the_last_user_messages_string_content_carries_a_directive(
    client: httpx.Client, messages: list[dict[str, Any]]
) -> None:
    response = client.post("/chat/completions", json={"model": MODEL, "messages": messages})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("echo: ")


def test_a_list_prompt_carries_no_directive(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": [directive(status=500)]}
    assert client.post("/completions", json=body).status_code == 200


def test_unknown_directive_key_is_400_naming_it(fake: FakeServer, client: httpx.Client) -> None:
    response = post(client, directive(modle="x", status=500))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "invalid_fake_directive",
    )
    assert "unknown key(s) 'modle'" in error["message"]
    assert fake.stats()["by_status"] == {"400": 1}


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("fake:", "JSON object"),
        ("fake:[1]", "JSON object"),
        ('fake:{"status": 500', "JSON object"),
        (directive(pad="big"), "'pad' must be an integer"),
        (directive(pad=100_000_001), "'pad' must be an integer from 0 to 100000000"),
        (directive(status=200), "'status' must be an integer from 400 to 599"),
        (directive(status=True), "'status' must be an integer"),
        (directive(times=-1), "'times' must be an integer >= 0"),
        (directive(latency=-1), "'latency' must be a number"),
        (directive(content=None), "'content' must be a string"),
        (directive(request_id="a\r\nb"), "no control characters"),
        (directive(body="weird"), "'body' must be one of empty, truncated, html"),
        (directive(body="html", status=500), "cannot go with 'status'"),
        (directive(body="empty", code="x"), "go with 'status' or with 'body': 'error'"),
    ],
)
def test_malformed_directives_are_400(client: httpx.Client, prompt: str, words: str) -> None:
    response = post(client, prompt)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_fake_directive"
    assert error["message"].startswith("Invalid fake directive: ")
    assert words in error["message"]


def test_checks_before_the_directive_still_apply(fake: FakeServer, client: httpx.Client) -> None:
    prompt = directive(request_id="req_mine", content="directed")
    unauthorized = httpx.post(f"{fake.url}/chat/completions", json=chat(prompt))
    assert unauthorized.status_code == 401
    assert unauthorized.headers["x-request-id"] != "req_mine"
    fake.config.models = ["gpt-4o"]
    assert post(client, prompt).status_code == 404  # validation, then the directive
    fake.config.models = None
    fake.config.error_rate = 1.0
    assert post(client, prompt).status_code >= 500
    fake.config.error_rate = 0.0
    fake.config.rpm, fake.config.window = 1, 60
    assert post(client, prompt).json()["choices"][0]["message"]["content"] == "directed"
    assert post(client, prompt).status_code == 429


def test_directed_errors_are_not_successes_for_the_quota(fake: FakeServer, client: httpx.Client) -> None:
    fake.config.quota = 1
    assert post(client, directive(status=500)).status_code == 500
    assert post(client, directive(body="empty")).status_code == 200  # a 200 is a success, bad body or not
    assert post(client, directive(content="x")).status_code == 429


# --- audio ----------------------------------------------------------------------------------------------


def test_directive_in_an_audio_prompt(client: httpx.Client) -> None:
    clip = wav_bytes(1.0)
    answer = transcribe(client, clip, model="gpt-4o-transcribe", prompt=directive(content="said \u0000"))
    assert answer.status_code == 200
    data = answer.json()
    assert data["text"] == "said \u0000"
    assert data["usage"]["output_tokens"] == tokens("said \u0000")
    text = transcribe(client, clip, response_format="text", prompt=directive(content="plain", request_id="r"))
    assert (text.text, text.headers["x-request-id"]) == ("plain\n", "r")
    assert transcribe(client, clip, prompt=directive(status=500, times=1)).status_code == 500
    assert transcribe(client, clip, prompt=directive(status=500, times=1)).status_code == 200
    html = transcribe(client, clip, prompt=directive(body="html"))
    assert (html.status_code, html.headers["content-type"].split(";")[0]) == (200, "text/html")
    translated = client.post(
        "/audio/translations",
        files={"file": ("clip.wav", clip)},
        data={"model": "whisper-1", "prompt": directive(pad=40)},
    )
    assert len(translated.json()["text"]) == 40


def test_audio_directive_cannot_set_a_model(client: httpx.Client) -> None:
    response = transcribe(client, wav_bytes(1.0), prompt=directive(model="x"))
    assert response.status_code == 400
    assert "'model' does not apply to audio answers" in response.json()["error"]["message"]
