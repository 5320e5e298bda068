"""The fake OpenAI API, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import re
import time
import wave
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline.fakeapi import FakeConfig, FakeServer, serve
from pipeline.fakeapi._multipart import FormParser, boundary_of
from pipeline.fakeapi._protocol import go_duration

pytestmark = pytest.mark.integration

KEY = "sk-test-0123456789abcdefwxyz"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "gpt-4o-mini"


def chat(text: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer(FakeConfig(api_key=KEY)) as server:
        yield server


@pytest.fixture
def client(fake: FakeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers=AUTH, timeout=10) as http:
        yield http


def post_many(server: FakeServer, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST every body to /chat/completions at once."""

    async def send() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=10, limits=limits) as http:
            return await asyncio.gather(*(http.post("/chat/completions", json=body) for body in bodies))

    return asyncio.run(send())


def control(server: FakeServer, path: str, body: Any = None) -> httpx.Response:
    root = server.url.removesuffix("/v1")
    if body is None and path == "stats":
        return httpx.get(f"{root}/_fake/stats")
    return httpx.post(f"{root}/_fake/{path}", json=body)


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(b"\x01\x00" * int(seconds * rate))
    return buffer.getvalue()


# --- chat and completions ---------------------------------------------------------------------------


def test_chat_answer_has_openai_shape_and_consistent_usage(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "system", "content": "be brief"}, chat()["messages"][0]]}
    response = client.post("/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == MODEL
    [choice] = data["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "echo: hello world", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage = data["usage"]
    assert usage["prompt_tokens"] == tokens("be brief") + tokens("hello world")
    assert usage["completion_tokens"] == tokens("echo: hello world")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"])
    assert int(response.headers["openai-processing-ms"]) >= 0
    assert "x-ratelimit-limit-requests" not in response.headers  # no limits configured


def test_chat_honours_n(client: httpx.Client) -> None:
    data = client.post("/chat/completions", json=chat(n=3)).json()
    assert [choice["index"] for choice in data["choices"]] == [0, 1, 2]
    assert {choice["message"]["content"] for choice in data["choices"]} == {"echo: hello world"}
    assert data["usage"]["completion_tokens"] == 3 * tokens("echo: hello world")


@pytest.mark.parametrize("limit_name", ["max_tokens", "max_completion_tokens"])
def test_chat_stops_for_length_below_natural_answer(client: httpx.Client, limit_name: str) -> None:
    data = client.post("/chat/completions", json=chat("a long enough prompt", **{limit_name: 2})).json()
    [choice] = data["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "echo: a "  # 2 tokens = 8 characters
    assert data["usage"]["completion_tokens"] == 2


def test_chat_large_max_tokens_stops_normally(client: httpx.Client) -> None:
    data = client.post("/chat/completions", json=chat(max_tokens=500)).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == tokens("echo: hello world")


def test_forced_function_call(client: httpx.Client) -> None:
    functions = [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    body = chat("find x", functions=functions, function_call={"name": "lookup"})
    [choice] = client.post("/chat/completions", json=body).json()["choices"]
    assert choice["finish_reason"] == "function_call"
    message = choice["message"]
    assert message["content"] is None
    assert message["function_call"]["name"] == "lookup"
    assert json.loads(message["function_call"]["arguments"]) == {"echo": "find x"}
    assert "tool_calls" not in message


@pytest.mark.parametrize("tool_choice", [{"type": "function", "function": {"name": "lookup"}}, "required"])
def test_forced_tool_call(client: httpx.Client, tool_choice: Any) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    body = chat("find x", tools=tools, tool_choice=tool_choice)
    [choice] = client.post("/chat/completions", json=body).json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"echo": "find x"}


def test_auto_tool_choice_answers_text(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    [choice] = client.post("/chat/completions", json=chat(tools=tools, tool_choice="auto")).json()["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "echo: hello world"


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model", "missing_required_parameter"),
        ({"model": MODEL}, 400, "messages", "missing_required_parameter"),
        ({"model": MODEL, "messages": "hi"}, 400, "messages", "invalid_type"),
        ({"model": MODEL, "messages": []}, 400, "messages", "empty_array"),
        (chat(n=0), 400, "n", "integer_below_min_value"),
        (chat(max_tokens="many"), 400, "max_tokens", "invalid_type"),
        ({**chat(), "model": "does-not-exist"}, 404, None, "model_not_found"),
    ],
)
def test_chat_validation_errors(
    client: httpx.Client, body: dict[str, Any], status: int, param: str | None, code: str
) -> None:
    response = client.post("/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert error["message"]
    assert response.headers["x-request-id"].startswith("req_")


def test_known_models_refuse_every_other_model_with_404(fake: FakeServer, client: httpx.Client) -> None:
    assert control(fake, "config", {"models": [MODEL, "whisper-1"]}).status_code == 200
    assert fake.config.models == [MODEL, "whisper-1"]
    assert client.post("/chat/completions", json=chat()).status_code == 200
    assert transcribe(client, wav_bytes(1.0)).status_code == 200
    refused = [
        client.post("/chat/completions", json={**chat(), "model": "gpt-9"}),
        client.post("/completions", json={"model": "gpt-9", "prompt": "hi"}),
        transcribe(client, wav_bytes(1.0), model="gpt-9"),
    ]
    for response in refused:
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "message": "The model `gpt-9` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        }
    assert control(fake, "config", {"models": None}).status_code == 200
    assert client.post("/chat/completions", json={**chat(), "model": "gpt-9"}).status_code == 200


def test_known_models_must_be_a_list_of_strings(fake: FakeServer) -> None:
    assert control(fake, "config", {"models": "gpt-9"}).status_code == 400
    assert control(fake, "config", {"models": [MODEL, 7]}).status_code == 400
    assert fake.config.models is None
    with pytest.raises(ValueError, match="models"):
        FakeConfig(models=MODEL)  # type: ignore[arg-type]


def test_unparsable_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "could not parse the JSON body" in response.json()["error"]["message"]


def test_completions_with_list_prompt(client: httpx.Client) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "second prompt"], "n": 2}
    data = client.post("/completions", json=body).json()
    assert data["id"].startswith("cmpl-")
    assert data["object"] == "text_completion"
    texts = [(choice["index"], choice["text"], choice["finish_reason"]) for choice in data["choices"]]
    assert texts == [
        (0, "echo: one", "stop"),
        (1, "echo: one", "stop"),
        (2, "echo: second prompt", "stop"),
        (3, "echo: second prompt", "stop"),
    ]
    assert data["usage"]["prompt_tokens"] == tokens("one") + tokens("second prompt")
    assert data["usage"]["completion_tokens"] == 2 * (tokens("echo: one") + tokens("echo: second prompt"))


def test_completions_length_and_bad_prompt(client: httpx.Client) -> None:
    data = client.post("/completions", json={"model": "m", "prompt": "a long prompt", "max_tokens": 1}).json()
    assert (data["choices"][0]["text"], data["choices"][0]["finish_reason"]) == ("echo", "length")
    response = client.post("/completions", json={"model": "m", "prompt": 7})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "prompt")


def test_unknown_url_is_404(client: httpx.Client) -> None:
    response = client.get("/chat/completions")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"


# --- auth ---------------------------------------------------------------------------------------------


def test_missing_key_is_401(fake: FakeServer) -> None:
    response = httpx.post(f"{fake.url}/chat/completions", json=chat())
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"].startswith("You didn't provide an API key.")
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)
    assert response.headers["x-request-id"].startswith("req_")


def test_wrong_key_is_401_with_masked_key(fake: FakeServer) -> None:
    wrong = "sk-abcdefghijklmnopqrstuvwxyz"
    response = httpx.post(
        f"{fake.url}/chat/completions", json=chat(), headers={"Authorization": f"Bearer {wrong}"}
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith("Incorrect API key provided: sk-ab****wxyz.")
    assert wrong not in response.text
    assert fake.stats()["answered"] == 0


def test_any_key_accepted_without_configured_key() -> None:
    with FakeServer() as server:
        response = httpx.post(
            f"{server.url}/chat/completions", json=chat(), headers={"Authorization": "Bearer x"}
        )
        assert response.status_code == 200


# --- rate limits --------------------------------------------------------------------------------------

RATE_LIMIT_MESSAGE = re.compile(
    r"Rate limit reached for gpt-4o-mini in organization org-fake on requests per min \(RPM\): "
    r"Limit 10, Used 10, Requested 1\. Please try again in (\S+)\. "
    r"Visit https://platform\.openai\.com/account/rate-limits to learn more\."
)


def test_rpm_burst_gets_429_with_openai_body_and_headers() -> None:
    # One bucket of a whole minute: exactly 10 of the 25 concurrent requests fit.
    with FakeServer(FakeConfig(api_key=KEY, rpm=10, window=60)) as server:
        responses = post_many(server, [chat(f"burst {i}") for i in range(25)])
        assert Counter(r.status_code for r in responses) == {200: 10, 429: 15}
        ok = next(r for r in responses if r.status_code == 200)
        assert ok.headers["x-ratelimit-limit-requests"] == "10"
        assert re.fullmatch(r"(\d+h)?(\d+m)?\d+(\.\d+)?s|\d+ms", ok.headers["x-ratelimit-reset-requests"])
        refused = next(r for r in responses if r.status_code == 429)
        error = refused.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("requests", None, "rate_limit_exceeded")
        assert RATE_LIMIT_MESSAGE.fullmatch(error["message"])
        wait_ms = int(refused.headers["retry-after-ms"])
        assert 0 < wait_ms <= 60_000
        assert int(refused.headers["retry-after"]) == math.ceil(wait_ms / 1000)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "10"
        assert server.stats()["by_status"] == {"200": 10, "429": 15}


def test_remaining_header_counts_down() -> None:
    with FakeServer(FakeConfig(api_key=KEY, rpm=10, tpm=1000, window=60)) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            first = http.post("/chat/completions", json=chat(max_tokens=10))
            second = http.post("/chat/completions", json=chat(max_tokens=10))
    estimate = tokens("hello world") + 10
    assert [
        first.headers["x-ratelimit-remaining-requests"],
        second.headers["x-ratelimit-remaining-requests"],
    ] == [
        "9",
        "8",
    ]
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - estimate)
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - 2 * estimate)


def test_request_fits_again_after_retry_after() -> None:
    with FakeServer(FakeConfig(api_key=KEY, rpm=120, window=0.5)) as server:  # 1 request per 0.5 s
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            assert http.post("/chat/completions", json=chat()).status_code == 200
            refused = http.post("/chat/completions", json=chat())
            assert refused.status_code == 429
            wait_ms = int(refused.headers["retry-after-ms"])
            assert 0 < wait_ms <= 500
            time.sleep(wait_ms / 1000 + 0.02)
            assert http.post("/chat/completions", json=chat()).status_code == 200


def test_tpm_binds_and_refused_requests_take_nothing() -> None:
    # 1000 tokens and 3 requests per minute bucket; each big request is estimated at prompt + max_tokens.
    with FakeServer(FakeConfig(api_key=KEY, rpm=3, tpm=1000, window=60)) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            assert http.post("/chat/completions", json=chat(max_tokens=600)).status_code == 200
            refused = http.post("/chat/completions", json=chat(max_tokens=500))
            # Fits only if the refused one took neither tokens nor a request:
            second = http.post("/chat/completions", json=chat(max_tokens=300))
            third = http.post("/chat/completions", json=chat(max_tokens=1))
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    used, requested = 600 + tokens("hello world"), 500 + tokens("hello world")
    assert f"on tokens per min (TPM): Limit 1000, Used {used}, Requested {requested}." in error["message"]
    assert "retry-after-ms" in refused.headers
    assert second.status_code == 200
    assert third.status_code == 200  # the third request of the bucket: the refused one was not counted


def test_request_too_large_for_tpm() -> None:
    with FakeServer(FakeConfig(api_key=KEY, tpm=100)) as server:
        response = httpx.post(f"{server.url}/chat/completions", json=chat(max_tokens=500), headers=AUTH)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    requested = 500 + tokens("hello world")
    assert error["message"].startswith(
        f"Request too large for {MODEL} in organization org-fake on tokens per min (TPM): "
        f"Limit 100, Requested {requested}."
    )
    assert "retry-after-ms" not in response.headers


# --- quota, faults, latency ---------------------------------------------------------------------------


def test_quota_exhausts_then_restores_through_control_endpoint() -> None:
    with FakeServer(FakeConfig(api_key=KEY, quota=2)) as server:
        statuses = [r.status_code for r in post_many(server, [chat()])]
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            statuses += [http.post("/chat/completions", json=chat()).status_code for _ in range(3)]
            refused = http.post("/chat/completions", json=chat())
            assert control(server, "config", {"quota": None}).status_code == 200
            assert server.config.quota is None
            restored = http.post("/chat/completions", json=chat())
    assert statuses == [200, 200, 429, 429]
    error = refused.json()["error"]
    assert error["message"].startswith(
        "You exceeded your current quota, please check your plan and billing details"
    )
    assert (error["type"], error["param"], error["code"]) == (
        "insufficient_quota",
        None,
        "insufficient_quota",
    )
    assert restored.status_code == 200


def test_quota_is_never_overshot_by_concurrent_requests() -> None:
    with FakeServer(FakeConfig(api_key=KEY, quota=5, latency=0.1)) as server:
        responses = post_many(server, [chat(f"q{i}") for i in range(20)])
        assert Counter(r.status_code for r in responses) == {200: 5, 429: 15}
        assert server.stats()["answered"] == 5


def test_error_rate_one_answers_5xx_with_openai_bodies() -> None:
    with FakeServer(FakeConfig(api_key=KEY, error_rate=1, seed=7)) as server:
        responses = post_many(server, [chat() for _ in range(20)])
        assert server.stats()["answered"] == 0
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {500, 502, 503}
    assert statuses[500] > 0
    for response in responses:
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("server_error", None, None)
        assert response.headers["x-request-id"].startswith("req_")
    first_500 = next(r for r in responses if r.status_code == 500)
    assert first_500.json()["error"]["message"] == (
        "The server had an error while processing your request. Sorry about that!"
    )


def test_error_rate_changed_live(client: httpx.Client, fake: FakeServer) -> None:
    fake.config.error_rate = 1.0
    assert client.post("/chat/completions", json=chat()).status_code >= 500
    fake.config.error_rate = 0.0
    assert client.post("/chat/completions", json=chat()).status_code == 200


def test_hang_times_out_client_and_cancels_handler() -> None:
    server = FakeServer(FakeConfig(api_key=KEY, hang_rate=1))
    with server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/chat/completions", json=chat(), headers=AUTH, timeout=0.5)
        deadline = time.monotonic() + 5
        while server.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.stats()["in_flight"] == 0  # the handler went away with its client
        assert server.stats()["received"] == 1
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5


def test_latency_delays_answers() -> None:
    with FakeServer(FakeConfig(api_key=KEY, latency=0.3)) as server:
        started = time.monotonic()
        assert httpx.post(f"{server.url}/chat/completions", json=chat(), headers=AUTH).status_code == 200
        assert time.monotonic() - started >= 0.3


# --- audio ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oversize() -> bytes:
    return bytes(26_214_401)


def transcribe(http: httpx.Client, data: bytes, name: str = "clip.wav", **fields: str) -> httpx.Response:
    form = {"model": "whisper-1", **fields}
    return http.post("/audio/transcriptions", files={"file": (name, data, "audio/wav")}, data=form)


@pytest.mark.parametrize(
    ("response_format", "content_type", "expected"),
    [
        (None, "application/json", None),
        ("json", "application/json", None),
        ("text", "text/plain", "{text}\n"),
        ("srt", "text/plain", "1\n00:00:00,000 --> 00:00:01,500\n{text}\n\n"),
        ("vtt", "text/plain", "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n{text}\n\n"),
        ("verbose_json", "application/json", None),
    ],
)
def test_transcription_formats(
    client: httpx.Client, response_format: str | None, content_type: str, expected: str | None
) -> None:
    clip = wav_bytes(1.5)
    text = f"transcript of {hashlib.sha256(clip).hexdigest()[:8]}"
    fields = {"response_format": response_format} if response_format else {}
    response = transcribe(client, clip, **fields)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == content_type
    if expected is not None:
        assert response.text == expected.format(text=text)
    elif response_format == "verbose_json":
        data = response.json()
        assert (data["task"], data["language"], data["text"]) == ("transcribe", "english", text)
        assert data["duration"] == 1.5  # read from the WAV header
        assert data["segments"][0]["start"] == 0.0
        assert data["segments"][0]["end"] == 1.5
        assert data["usage"] == {"type": "duration", "seconds": 2}
    else:
        assert response.json() == {"text": text, "usage": {"type": "duration", "seconds": 2}}


def test_translation_says_translation(client: httpx.Client) -> None:
    clip = wav_bytes(1.0)
    files = {"file": ("clip.mp3", clip)}
    response = client.post("/audio/translations", files=files, data={"model": "whisper-1", "language": "fr"})
    assert response.status_code == 200
    assert response.json()["text"] == f"translation of {hashlib.sha256(clip).hexdigest()[:8]}"


def test_transcription_language_in_verbose_json(client: httpx.Client) -> None:
    response = transcribe(client, wav_bytes(1.0), response_format="verbose_json", language="fr")
    assert response.json()["language"] == "french"


def test_audio_bad_extension_is_400(client: httpx.Client) -> None:
    response = transcribe(client, wav_bytes(1.0), name="notes.txt")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("Invalid file format. Supported formats: [")
    assert "'wav'" in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("missing", "param"), [("model", "model"), ("file", "file")])
def test_audio_missing_parts_are_400(client: httpx.Client, missing: str, param: str) -> None:
    data = {} if missing == "model" else {"model": "whisper-1"}
    files = {"file": ("a.wav", wav_bytes(1.0))} if missing != "file" else {"other": ("x.wav", b"x")}
    response = client.post("/audio/transcriptions", files=files, data=data)
    assert (response.status_code, response.json()["error"]["param"]) == (400, param)


def test_audio_over_25_mb_is_413(client: httpx.Client, oversize: bytes) -> None:
    response = transcribe(client, oversize, name="big.mp3")
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["message"] == "Maximum content size limit (26214400) exceeded (26214401 bytes read)"
    assert (error["type"], error["code"]) == ("server_error", None)


def test_audio_size_based_duration_for_non_wav(client: httpx.Client) -> None:
    response = transcribe(client, bytes(48_000), name="clip.mp3", response_format="verbose_json")
    assert response.json()["duration"] == 3.0  # 48,000 bytes at 16,000 bytes a second


@pytest.mark.parametrize("slice_size", [1, 5, 63, 100_000])
def test_form_parser_reads_any_slicing(slice_size: int) -> None:
    payload = b"RIFF\r\n--\r\n-" * 50 + bytes(range(256))  # near-delimiters inside the file
    fields = {"model": "whisper-1", "prompt": "line\r\n--not a boundary"}
    request = httpx.Request("POST", "http://fake/", files={"file": ("a b.wav", payload)}, data=fields)
    body = request.read()
    received: list[bytes] = []
    parser = FormParser(boundary_of(request.headers["content-type"]), "file", received.append)
    for start in range(0, len(body), slice_size):
        parser.feed(body[start : start + slice_size])
    parser.close()
    assert b"".join(received) == payload
    assert (parser.fields, parser.filename, parser.has_file) == (fields, "a b.wav", True)
    truncated = FormParser(boundary_of(request.headers["content-type"]), "file", received.append)
    truncated.feed(body[:-10])
    with pytest.raises(ValueError, match="closing boundary"):
        truncated.close()


# --- stats and control ----------------------------------------------------------------------------------


def test_stats_fingerprints_count_repeats(fake: FakeServer, client: httpx.Client) -> None:
    raw = json.dumps(chat("same")).encode()
    headers = {"content-type": "application/json"}
    for _ in range(2):
        client.post("/chat/completions", content=raw, headers=headers)
    httpx.post(
        f"{fake.url}/chat/completions", content=raw, headers={**headers, "Authorization": "Bearer sk-x"}
    )
    client.post("/chat/completions", json=chat("other"))
    for _ in range(2):
        transcribe(client, wav_bytes(0.5))
    stats = control(fake, "stats").json()
    assert stats == fake.stats()
    assert stats["bodies"][hashlib.sha256(raw).hexdigest()] == {"received": 3, "answered": 2}
    assert sorted(entry["received"] for entry in stats["bodies"].values()) == [1, 2, 3]
    assert (stats["received"], stats["answered"]) == (6, 5)
    assert stats["by_status"] == {"200": 5, "401": 1}
    assert stats["in_flight"] == 0


def test_max_in_flight_and_reset() -> None:
    with FakeServer(FakeConfig(api_key=KEY, latency=0.3)) as server:
        post_many(server, [chat(str(i)) for i in range(5)])
        assert server.stats()["max_in_flight"] == 5
        reset = control(server, "reset").json()
        assert (reset["received"], reset["max_in_flight"], reset["bodies"]) == (0, 0, {})
        post_many(server, [chat()])
        assert server.stats()["received"] == 1
        server.reset()
        assert server.stats() == control(server, "stats").json()
        assert (server.stats()["received"], server.stats()["by_status"]) == (0, {})


def test_control_config_refuses_unknown_fields_and_bad_values(fake: FakeServer) -> None:
    assert control(fake, "config", {"eror_rate": 1}).status_code == 400
    assert control(fake, "config", {"error_rate": 2}).status_code == 400
    assert control(fake, "config", {"rpm": "many", "latency": 1}).status_code == 400
    assert (fake.config.error_rate, fake.config.rpm, fake.config.latency) == (0.0, None, 0.0)
    view = control(fake, "config", {"rpm": 100, "latency_jitter": 0.5}).json()
    assert (fake.config.rpm, fake.config.latency_jitter) == (100, 0.5)
    assert view["rpm"] == 100
    assert view["api_key"] == "****"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.02, "20ms"), (0.6441, "645ms"), (1.5, "1.5s"), (360, "6m0s"), (5011, "1h23m31s")],
)
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_serve_runs_until_cancelled() -> None:
    async def run() -> int:
        urls: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.create_task(serve(FakeConfig(), on_ready=urls.put_nowait))
        url = await asyncio.wait_for(urls.get(), 5)
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{url}/chat/completions", json=chat(), headers=AUTH)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return response.status_code

    assert asyncio.run(run()) == 200
