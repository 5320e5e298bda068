"""The fake's Batch API on its own, over real HTTP: files, batches, validation, lifecycle, stats."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from pipeline.fakeapi import FakeServer
from tests.conftest import TEST_KEY
from tests.helpers import chat_line


@pytest.fixture
def client(fake: FakeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10) as c:
        yield c


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


def upload(
    client: httpx.Client, data: bytes, name: str = "in.jsonl", purpose: str = "batch"
) -> httpx.Response:
    return client.post("/files", data={"purpose": purpose}, files={"file": (name, data)})


def create(client: httpx.Client, file_id: str, **extra: Any) -> httpx.Response:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    return client.post("/batches", json=body)


def until_final(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not end")


def test_files_upload_list_retrieve_read_and_delete(client: httpx.Client, fake: FakeServer) -> None:
    data = jsonl([chat_line("a", "hi")])
    made = upload(client, data, "first.jsonl").json()
    upload(client, data, "second.jsonl")
    assert (made["object"], made["purpose"], made["bytes"], made["filename"]) == (
        "file",
        "batch",
        len(data),
        "first.jsonl",
    )
    page = client.get("/files", params={"purpose": "batch", "limit": 1}).json()
    assert [f["filename"] for f in page["data"]] == ["second.jsonl"] and page["has_more"] is True
    rest = client.get("/files", params={"purpose": "batch", "after": page["last_id"]}).json()
    assert [f["filename"] for f in rest["data"]] == ["first.jsonl"] and rest["has_more"] is False
    assert client.get(f"/files/{made['id']}").json() == made
    assert client.get(f"/files/{made['id']}/content").content == data
    assert client.delete(f"/files/{made['id']}").json() == {
        "id": made["id"],
        "object": "file",
        "deleted": True,
    }
    assert client.get(f"/files/{made['id']}").status_code == 404
    assert fake.stats()["batch_api"]["uploaded"] == ["first.jsonl", "second.jsonl"]


def test_uploads_need_a_key_a_purpose_and_a_file(client: httpx.Client, fake: FakeServer) -> None:
    assert (
        httpx.post(f"{fake.url}/files", data={"purpose": "batch"}, files={"file": ("a", b"x")}).status_code
        == 401
    )
    assert upload(client, b"x", purpose="").json()["error"]["code"] == "missing_required_parameter"
    assert upload(client, b"x", purpose="homework").status_code == 400
    assert client.post("/files", data={"purpose": "batch"}, files={"other": ("a", b"x")}).status_code == 400


def test_a_valid_batch_runs_and_answers_every_line_with_directives(
    client: httpx.Client, fake: FakeServer
) -> None:
    fake.config.batch_seconds = 0.3
    lines = [chat_line(f"q{i}", f"question {i}") for i in range(5)]
    lines.append(chat_line("refused", 'fake:{"status": 400, "code": "bad_thing"}'))
    file_id = upload(client, jsonl(lines)).json()["id"]
    made = create(client, file_id, metadata={"pipeline_part": "p1"}).json()
    assert made["status"] == "validating" and made["metadata"] == {"pipeline_part": "p1"}
    assert client.get(f"/batches/{made['id']}").json()["status"] in ("validating", "in_progress")
    done = until_final(client, made["id"])
    assert done["status"] == "completed" and done["request_counts"] == {
        "total": 6,
        "completed": 5,
        "failed": 1,
    }
    assert all(done[f"{name}_at"] for name in ("in_progress", "finalizing", "completed"))
    output = [
        orjson.loads(line)
        for line in client.get(f"/files/{done['output_file_id']}/content").content.splitlines()
    ]
    errors = [
        orjson.loads(line)
        for line in client.get(f"/files/{done['error_file_id']}/content").content.splitlines()
    ]
    assert sorted(o["custom_id"] for o in output) == [f"q{i}" for i in range(5)]
    first = next(o for o in output if o["custom_id"] == "q0")
    assert first["error"] is None and first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 0"
    assert [
        (e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["code"]) for e in errors
    ] == [("refused", 400, "bad_thing")]
    stats = fake.stats()
    assert stats["batch_api"]["lines"] == {"answered": 6, "expired": 0}
    assert stats["received"] == 0 and sum(b["answered"] for b in stats["bodies"].values()) == 5


def test_validation_fails_the_batch_naming_each_bad_line(client: httpx.Client) -> None:
    lines: list[Any] = [
        chat_line("a", "one"),
        b"{not json",
        {**chat_line("b", "two"), "method": "GET"},
        {**chat_line("c", "three"), "url": "/v1/completions"},
        chat_line("a", "four"),
        {
            **chat_line("d", "x"),
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "five"}]},
        },
        {"custom_id": "e", "method": "POST", "url": "/v1/chat/completions"},
    ]
    done = until_final(client, create(client, upload(client, jsonl(lines)).json()["id"]).json()["id"])
    assert done["status"] == "failed" and done["failed_at"]
    assert [(e["line"], e["code"]) for e in done["errors"]["data"]] == [
        (2, "invalid_json_line"),
        (3, "invalid_method"),
        (4, "mismatched_endpoint"),
        (5, "duplicate_custom_id"),
        (6, "mismatched_model"),
        (7, "missing_required_parameter"),
    ]


def test_limits_on_lines_bytes_and_enqueued_tokens(client: httpx.Client, fake: FakeServer) -> None:
    fake.config.batch_max_lines = 2
    three = upload(client, jsonl([chat_line(f"q{i}", "hi") for i in range(3)])).json()["id"]
    failed = until_final(client, create(client, three).json()["id"])
    assert [e["code"] for e in failed["errors"]["data"]] == ["max_requests_exceeded"]
    fake.config.batch_max_lines, fake.config.batch_max_bytes = 50_000, 10
    refused = create(client, three)
    assert refused.status_code == 400 and refused.json()["error"]["message"] == "File is too large."
    fake.config.batch_max_bytes, fake.config.batch_seconds, fake.config.batch_token_limit = 10**8, 5.0, 10
    running = create(client, upload(client, jsonl([chat_line("a", "hi")])).json()["id"]).json()
    over = until_final(client, create(client, three).json()["id"])
    assert [e["code"] for e in over["errors"]["data"]] == ["token_limit_exceeded"]
    assert "Enqueued token limit reached" in over["errors"]["data"][0]["message"]
    assert client.get(f"/batches/{running['id']}").json()["status"] == "in_progress"


def test_create_refuses_what_openai_refuses_at_once(client: httpx.Client) -> None:
    file_id = upload(client, jsonl([chat_line("a", "hi")])).json()["id"]
    assert create(client, "file-missing").status_code == 404
    assert create(client, file_id, completion_window="1h").status_code == 400
    assert create(client, file_id, endpoint="/v1/audio/transcriptions").status_code == 400
    assert create(client, file_id, metadata={f"k{i}": "v" for i in range(17)}).status_code == 400
    assert create(client, file_id, metadata={"k": "v" * 513}).status_code == 400
    other = upload(client, b"x", purpose="fine-tune").json()["id"]
    assert create(client, other).status_code == 400


def test_list_cancel_and_expiry(client: httpx.Client, fake: FakeServer) -> None:
    file_id = upload(client, jsonl([chat_line(f"q{i}", "hi") for i in range(10)])).json()["id"]
    fake.config.batch_seconds = 30.0
    slow = create(client, file_id).json()
    fake.config.batch_seconds, fake.config.batch_expire_rate = 0.0, 1.0
    expired = until_final(client, create(client, file_id).json()["id"])
    assert expired["status"] == "expired" and expired["output_file_id"] is None
    codes = {
        orjson.loads(line)["error"]["code"]
        for line in client.get(f"/files/{expired['error_file_id']}/content").content.splitlines()
    }
    assert codes == {"batch_expired"} and fake.stats()["batch_api"]["lines"]["expired"] == 10
    page = client.get("/batches", params={"limit": 1}).json()
    assert [b["id"] for b in page["data"]] == [expired["id"]] and page["has_more"] is True
    assert [b["id"] for b in client.get("/batches", params={"after": expired["id"]}).json()["data"]] == [
        slow["id"]
    ]
    assert client.post(f"/batches/{slow['id']}/cancel").json()["status"] == "cancelling"
    assert until_final(client, slow["id"])["status"] == "cancelled"
    assert client.post(f"/batches/{slow['id']}/cancel").status_code == 400
    assert fake.stats()["batch_api"]["cancelled"] == [slow["id"]]


def test_delays_hold_an_answer_after_the_operation_is_done(client: httpx.Client, fake: FakeServer) -> None:
    control = fake.url.removesuffix("/v1") + "/_fake/config"
    assert httpx.post(control, json={"batch_delays": {"upload": 0.5}}).status_code == 200
    assert httpx.post(control, json={"batch_delays": {"teleport": 1}}).status_code == 400
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{fake.url}/files",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            data={"purpose": "batch"},
            files={"file": ("held.jsonl", b"x")},
            timeout=0.2,
        )
    assert fake.stats()["batch_api"]["uploaded"] == ["held.jsonl"]  # made, though its answer never came
