"""What the tests of the bulk endpoints share: each endpoint's job lines, and the check that what was stored
and exported for a line is what the fake sent for it (the fake's answers are deterministic)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

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


def responses_line(i: int, model: str = "gpt-4.1-mini") -> dict[str, Any]:
    """Input items, a string input with instructions, reasoning, a forced function call, and answers cut
    by max_output_tokens (`incomplete`: a result, not an error)."""
    text = f"question {i}"
    body: dict[str, Any] = {"model": model, "input": [{"role": "user", "content": text}]}
    if i % 3 == 1:
        body["reasoning"] = {"effort": "low"}
    if i % 3 == 2:
        body.update(input=text, instructions="Be brief.", metadata={"line": str(i)})
    if i % 5 == 4:
        body.update(tools=[{"type": "function", "name": "lookup", "parameters": {}}], tool_choice="required")
    elif i % 7 == 6:
        body.update(input=f"{text} " * 20, max_output_tokens=16)
    return {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/responses", "body": body}


def check_responses(
    body: dict[str, Any], row: dict[str, str], record: dict[str, Any], line: dict[str, Any]
) -> None:
    answer = line["response"]["body"]
    assert record["response"]["body"] == answer
    prompt = body["input"] if isinstance(body["input"], str) else body["input"][-1]["content"]
    usage = answer["usage"]
    if "tools" in body:
        (call,) = orjson.loads(record["output"])
        assert (call["type"], call["name"], orjson.loads(call["arguments"])) == (
            "function_call",
            "lookup",
            {"echo": prompt},
        )
    elif "max_output_tokens" in body:  # cut (reasoning may take it all): never written, nor paid for
        output = record["output"] or ""
        assert f"echo: {prompt}".startswith(output) and output != f"echo: {prompt}"
        assert usage["output_tokens"] == body["max_output_tokens"]
    else:
        assert record["output"] == f"echo: {prompt}"
    finish = "max_output_tokens" if "max_output_tokens" in body else "completed"
    assert record["finish_reasons"] == [finish] and row["finish_reason"] == finish
    assert row["output"] == (record["output"] or "")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        str(usage["input_tokens"]),
        str(usage["output_tokens"]),
    )
    reasoning = usage["output_tokens_details"]["reasoning_tokens"]
    assert row["reasoning_tokens"] == str(reasoning) and (reasoning > 0) == ("reasoning" in body)


def moderations_line(i: int, model: str = "omni-moderation-latest") -> dict[str, Any]:
    """Every fifth flagged (violence); every third has two inputs, one of them harassment."""
    text = f"I will attack the castle {i}" if i % 5 == 0 else f"a calm sentence {i}"
    body: dict[str, Any] = {"model": model, "input": [text, "you idiot"] if i % 3 == 2 else text}
    return {"custom_id": f"m-{i}", "method": "POST", "url": "/v1/moderations", "body": body}


def check_moderations(
    body: dict[str, Any], row: dict[str, str], record: dict[str, Any], line: dict[str, Any]
) -> None:
    answer = line["response"]["body"]
    assert record["response"]["body"] == answer
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    assert [result["flagged"] for result in answer["results"]] == [
        "attack" in text or "idiot" in text for text in texts
    ]
    categories = {"violence"} if "attack" in texts[0] else set()
    categories |= {"harassment"} if len(texts) > 1 else set()
    assert record["flagged"] is bool(categories) and row["flagged"] == ("true" if categories else "false")
    assert row["output"] == record["output"] == "|".join(sorted(categories))
    assert row["prompt_tokens"] == "" and record["usage"] is None  # no usage: moderations are free


CASES: dict[str, Case] = {
    "embeddings": Case("/v1/embeddings", embeddings_line, check_embeddings),
    "responses": Case("/v1/responses", responses_line, check_responses),
    "moderations": Case("/v1/moderations", moderations_line, check_moderations),
}
