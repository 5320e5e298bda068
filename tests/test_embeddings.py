"""/v1/embeddings: validation through the CLI, vectors stored once and given back as sent, the Batch API's
per-batch input limit, the estimate, and the fake's own answers."""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pipeline.batchapi.options import BatchApiOptions
from pipeline.batchapi.plan import plan_parts
from pipeline.cli import EXIT_INVALID_INPUT
from pipeline.endpoints import by_name
from pipeline.endpoints.vectors import unpack
from pipeline.fakeapi import FakeServer
from pipeline.fakeapi._embeddings import floats_of, vector_of
from pipeline.jobs.intake import store_job_file
from pipeline.send.tokens import count_tokens
from pipeline.settings import Settings
from pipeline.store import batches
from pipeline.store.db import Database
from pipeline.store.models import Via
from tests.conftest import TEST_KEY, invoke
from tests.endpoint_cases import embeddings_line
from tests.helpers import write_jsonl
from tests.test_bad_input import assert_nothing_stored_or_sent

EMBEDDINGS = by_name("embeddings")
LONG = "word " * 9000  # 9,000 tokens
MODEL = "text-embedding-3-small"


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hello", **fields}


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no model": ({"input": "x"}, "body.model: required"),
    "no input": ({"model": MODEL}, "body.input: required"),
    "empty string": (body(input=""), "body.input: must not be an empty string"),
    "not a list": (
        body(input={"a": 1}),
        "body.input: must be a string, a list of strings, a list of token ids or a list of token-id lists, "
        "got object",
    ),
    "empty list": (body(input=[]), "body.input: must not be empty"),
    "mixed": (
        body(input=["a", 1]),
        "body.input: must be a string, a list of strings, a list of token ids or a list of token-id lists",
    ),
    "empty item": (body(input=["a", ""]), "body.input[1]: must not be empty"),
    "empty token list": (body(input=[[1, 2], []]), "body.input[1]: must not be empty"),
    "2,049 inputs": (
        body(input=["x"] * 2049),
        "body.input: 2,049 inputs, over the limit of 2,048 per request",
    ),
    "a long input": (
        body(input=["short", LONG]),
        f"body.input[1]: {count_tokens(LONG, MODEL):,} tokens, over the limit of 8,192 per input",
    ),
    "a long token list": (body(input=list(range(8193))), "body.input: 8,193 tokens, over the limit of 8,192"),
    "300,000 tokens in all": (
        body(input=[[7] * 8000] * 38),
        "body.input: 304,000 tokens in all, over the limit of 300,000 per request",
    ),
    "dimensions on ada": (
        body(model="text-embedding-ada-002", dimensions=256),
        "body.dimensions: text-embedding-ada-002 does not take it (the text-embedding-3 models do)",
    ),
    "dimensions 0": (body(dimensions=0), "body.dimensions: must be a positive integer, got 0"),
    "dimensions over the model's": (
        body(dimensions=2000),
        "body.dimensions: 2,000 is over text-embedding-3-small's 1,536",
    ),
    "encoding_format": (
        body(encoding_format="int8"),
        "body.encoding_format: must be one of base64, float, got 'int8'",
    ),
    "stream": (body(stream=True), "body.stream: not supported"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_every_invalid_line_is_one_file_line_error_and_nothing_is_stored_or_sent(
    fake: FakeServer, tmp_path: Path, case: str
) -> None:
    bad, message = INVALID[case]
    line = {"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": bad}
    path = write_jsonl(tmp_path / "jobs.jsonl", [embeddings_line(0), line])
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == EXIT_INVALID_INPUT
    errors = [text for text in result.stderr.splitlines() if text.startswith(f"{path}:")]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:2: {message}"), result.stderr
    assert_nothing_stored_or_sent(fake)


def test_shorthand_bodies_and_a_hint_without_endpoint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bare.jsonl", [body(), body(input=["a", "b"])])
    result = invoke("estimate", str(path))
    assert result.exit_code == EXIT_INVALID_INPUT and "add --endpoint embeddings" in result.stderr
    assert invoke("estimate", str(path), "--endpoint", "embeddings").exit_code == 0


# --- what is stored: vectors once, the body without them ----------------------------------------------


def answer(encoding: str, order: list[int]) -> tuple[dict[str, Any], list[bytes]]:
    vectors = [vector_of(MODEL, 5, f"input {i}") for i in range(len(order))]
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(vectors[i]).decode()
            if encoding == "base64"
            else floats_of(vectors[i]),
        }
        for i in order
    ]
    usage = {"prompt_tokens": 9, "total_tokens": 9}
    return {"object": "list", "data": data, "model": MODEL, "usage": usage}, vectors


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_vectors_are_stored_once_as_float32_and_given_back_as_sent(encoding: str) -> None:
    sent, vectors = answer(encoding, [2, 0, 1])  # out of order: the API does not promise an order
    original = orjson.loads(orjson.dumps(sent))
    original["data"].sort(key=lambda item: item["index"])  # kept in input order, as every export lists them
    parsed = EMBEDDINGS.parse(sent)
    assert not isinstance(parsed, str)
    assert parsed.vectors == vectors[0] + vectors[1] + vectors[2]  # float32 little-endian, in input order
    assert (parsed.dimensions, parsed.prompt_tokens, parsed.model) == (5, 9, MODEL)
    assert parsed.body is not None and len(parsed.body) < 300  # the body keeps no vector
    stored = orjson.loads(parsed.body)
    assert [item["embedding"] for item in stored["data"]] == ([""] * 3 if encoding == "base64" else [[]] * 3)
    assert EMBEDDINGS.restore(stored, parsed.vectors, 5) == original  # bit for bit, floats or base64
    fields = EMBEDDINGS.export_fields(original, parsed.vectors, 5, None)
    assert fields == {"embeddings": [floats_of(vector) for vector in vectors]}  # in input order


def test_json_floats_of_float32_values_come_back_digit_for_digit() -> None:
    """The API prints each float32 as the double it is (-0.006929283495992422): the export writes the same
    digits (orjson spells the smallest without an exponent, 0.0000454... for 4.54...e-05: the same number)."""
    printed = b"[-0.006929283495992422,-0.005336422007530928,-4.547132266452536e-05,0.1]"
    data = {"data": [{"index": 0, "embedding": orjson.loads(printed)}]}
    parsed = EMBEDDINGS.parse(data)
    assert not isinstance(parsed, str) and parsed.vectors is not None
    again = orjson.dumps(unpack(parsed.vectors))
    assert again.startswith(b"[-0.006929283495992422,-0.005336422007530928,-0.00004547132266452536,")
    assert orjson.loads(again)[:3] == orjson.loads(printed)[:3]
    assert orjson.loads(again)[3] == 0.10000000149011612  # 0.1 is no float32: its nearest one


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "no `data`"),
        ({"data": []}, "no `data`"),
        ({"error": {"message": "boom"}}, "an error object"),
        ({"data": [{"index": 0}]}, "an item of `data` without an `embedding`"),
        ({"data": [{"embedding": ["a"]}]}, "an `embedding` that is neither a list of numbers nor base64"),
        (
            {"data": [{"embedding": "not base64!"}]},
            "an `embedding` that is neither a list of numbers nor base64",
        ),
        ({"data": [{"embedding": [1.0, 2.0]}, {"embedding": [1.0]}]}, "embeddings of different lengths"),
    ],
)
def test_an_answer_without_vectors_is_no_answer(data: dict[str, Any], problem: str) -> None:
    assert EMBEDDINGS.parse(data) == problem


# --- the Batch API: at most 50,000 inputs per batch ----------------------------------------------------


def test_parts_hold_at_most_50000_embedding_inputs(tmp_path: Path) -> None:
    line = embeddings_line(0)
    lines = [
        {**line, "custom_id": f"big-{i}", "body": {**line["body"], "input": [f"t{i}"] * 2000}}
        for i in range(26)
    ]
    path = write_jsonl(tmp_path / "big.jsonl", lines)
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    db.upgrade()
    try:
        settings = Settings.load({})
        intake = store_job_file(db, settings, str(path), via=Via.BATCH_API, batch_api=BatchApiOptions())
        made = plan_parts(db, batches.get_batch(db, intake.batch_id))
        assert [part.lines for part in made] == [25, 1]  # 25 x 2,000 = 50,000 inputs, then the rest
    finally:
        db.engine.dispose()


# --- estimate --------------------------------------------------------------------------------------------


def test_estimate_counts_the_inputs_exactly_and_no_completion(tmp_path: Path) -> None:
    texts = ["The quick brown fox", "jumps over the lazy dog", "and again"]
    lines = [{"custom_id": "t", "method": "POST", "url": "/v1/embeddings", "body": body(input=texts)}]
    lines.append(
        {"custom_id": "ids", "method": "POST", "url": "/v1/embeddings", "body": body(input=[1, 2, 3])}
    )
    result = orjson.loads(invoke("estimate", str(write_jsonl(tmp_path / "e.jsonl", lines)), "--json").stdout)
    prompt = sum(count_tokens(text, MODEL) for text in texts) + 3
    (model,) = result["models"]
    assert (model["prompt_tokens"], model["completion_low"], model["completion_high"]) == (prompt, 0, 0)
    assert (model["reserved_tokens"], model["unbounded_requests"], model["completion_source"]) == (
        prompt,
        0,
        "none",
    )
    assert model["cost_low"] == model["cost_high"] == round(prompt * 0.02 / 1_000_000, 6)


# --- the fake ------------------------------------------------------------------------------------------


def post(fake: FakeServer, payload: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10) as http:
        return http.post("/embeddings", json=payload)


def test_the_fake_answers_the_same_vector_for_an_input_in_either_encoding(fake: FakeServer) -> None:
    floats = post(fake, body(input=["a", "b"], dimensions=4)).json()
    base64s = post(fake, body(input=["b", "a"], dimensions=4, encoding_format="base64")).json()
    assert floats["data"][0]["embedding"] == floats_of(vector_of(MODEL, 4, "a"))
    assert base64.b64decode(base64s["data"][1]["embedding"]) == vector_of(MODEL, 4, "a")
    assert floats["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    full = post(fake, body(model="text-embedding-3-large")).json()
    assert len(full["data"][0]["embedding"]) == 3072
    assert all(1 / 32 <= abs(x) < 1 / 8 for x in floats_of(vector_of(MODEL, 64, str(random.random()))))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            body(model="text-embedding-ada-002", dimensions=8),
            "This model does not support specifying dimensions.",
        ),
        (
            body(input=["x"] * 2049),
            "Invalid 'input': array too long. Expected an array with maximum length 2048",
        ),
        (
            body(input="abcd" * 8193),
            "This model's maximum context length is 8192 tokens, however you requested 8193",
        ),
        (body(input=[[1] * 8000] * 38), "Requested 304000 tokens, max 300000 tokens per request"),
        (body(input=["a", 2]), "'$.input' is invalid."),
        (body(encoding_format="int8"), "'int8' is not one of ['float', 'base64'] - 'encoding_format'"),
    ],
)
def test_the_fake_refuses_what_openai_refuses(
    fake: FakeServer, payload: dict[str, Any], message: str
) -> None:
    response = post(fake, payload)
    assert response.status_code == 400 and response.json()["error"]["message"].startswith(message)
