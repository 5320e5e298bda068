"""What the tests of the bulk endpoints share: each endpoint's job lines, and the check that what was stored
and exported for a line is what the fake sent for it (the fake's answers are deterministic)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.endpoints.embeddings import inputs
from pipeline.fakeapi._embeddings import floats_of, vector_of

#: Dimensions asked of text-embedding-3-small in the tests: small vectors, the same code.
DIMENSIONS = 8


@dataclass(frozen=True)
class Case:
    """One endpoint under test."""

    url: str
    #: the i-th line of a test file
    line: Callable[[int], dict[str, Any]]
    #: asserts one request's csv row, jsonl record and openai line are the fake's answer to its body
    check: Callable[[dict[str, Any], dict[str, str], dict[str, Any], dict[str, Any]], None]


def embeddings_line(i: int, model: str = "text-embedding-3-small") -> dict[str, Any]:
    """Even lines ask for floats, odd ones for base64; every third gives token ids."""
    body: dict[str, Any] = {"model": model, "input": [f"text {i} a", f"text {i} b"], "dimensions": DIMENSIONS}
    if i % 3 == 2:
        body["input"] = [[i, 1, 2], [i, 3]]
    if i % 2:
        body["encoding_format"] = "base64"
    return {"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings", "body": body}


def check_embeddings(
    body: dict[str, Any], row: dict[str, str], record: dict[str, Any], line: dict[str, Any]
) -> None:
    dims = body.get("dimensions", 1536)
    sent = [vector_of(body["model"], dims, item) for item in inputs(body["input"])]
    assert record["embeddings"] == [floats_of(vector) for vector in sent]
    answer = line["response"]["body"]
    assert record["response"]["body"] == answer  # jsonl and openai carry the same body
    if body.get("encoding_format") == "base64":  # bit for bit, as the API sent it
        assert [item["embedding"] for item in answer["data"]] == [base64.b64encode(v).decode() for v in sent]
    else:
        assert [item["embedding"] for item in answer["data"]] == [floats_of(v) for v in sent]
    assert row["dimensions"] == str(dims) and row["output"] == ""
    assert row["prompt_tokens"] == str(record["usage"]["prompt_tokens"]) != "0"


CASES: dict[str, Case] = {
    "embeddings": Case("/v1/embeddings", embeddings_line, check_embeddings),
}
