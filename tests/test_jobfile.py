"""Job file reading: every bad line reported as `FILE:LINE: message`, good lines passed through untouched."""

from __future__ import annotations

import hashlib
import io
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.endpoints import ENDPOINTS
from pipeline.endpoints.audio import AUDIO_EXTENSIONS, MAX_AUDIO_BYTES
from pipeline.errors import ConfigError, LineError
from pipeline.ids import CustomIds
from pipeline.jobs.reader import MAX_CUSTOM_ID_CHARS, JobLine, JobReader
from pipeline.settings import Settings

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
CHAT_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Job files are named relative to the working directory, so messages read `jobs.jsonl:N: ...`."""
    monkeypatch.chdir(tmp_path)


def line(body: Any = None, custom_id: Any = "req-1", url: Any = CHAT, **extra: Any) -> dict[str, Any]:
    """A Batch API line, with `**extra` overriding or adding keys."""
    body = CHAT_BODY if body is None else body
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra}


def write(*lines: Any, name: str = "jobs.jsonl") -> str:
    """A job file of the given lines: dicts become JSON, str and bytes are written as they are."""
    out = bytearray()
    for item in lines:
        if isinstance(item, bytes):
            out += item
        elif isinstance(item, str):
            out += item.encode()
        else:
            out += orjson.dumps(item)
        out += b"\n"
    Path(name).write_bytes(bytes(out))
    return name


def read(path: str, endpoint: str | None = None, **options: Any) -> list[JobLine | LineError]:
    return list(JobReader(path, endpoint, **options))


def errors(path: str, endpoint: str | None = None, **options: Any) -> list[str]:
    return [str(item) for item in read(path, endpoint, **options) if isinstance(item, LineError)]


def only_error(*lines: Any, endpoint: str | None = None) -> str:
    """The single error a file of these lines produces."""
    found = errors(write(*lines), endpoint)
    assert len(found) == 1, found
    return found[0]


def with_key(key: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(line() if base is None else base), key: value}


def without(key: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    return {k: v for k, v in (line() if base is None else base).items() if k != key}


# --- malformed lines -----------------------------------------------------------------------------------


def test_invalid_json() -> None:
    path = write(line(), '{"custom_id": "b", ')
    assert errors(path) == ["jobs.jsonl:2: invalid JSON: unexpected end of data at end of line"]


def test_invalid_json_column() -> None:
    # columns count characters, not bytes; the words between are orjson's and vary by its version
    error = only_error('{"é": x}')
    assert error.startswith("jobs.jsonl:1: invalid JSON: unexpected character")
    assert error.endswith(" at column 7")


def test_invalid_json_without_final_newline() -> None:
    Path("jobs.jsonl").write_bytes(orjson.dumps(line()) + b'\n{"a": 1,}')
    assert errors("jobs.jsonl") == ["jobs.jsonl:2: invalid JSON: trailing comma is not allowed at column 8"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2]", "array"), ('"hi"', "string"), ("3.5", "number"), ("null", "null"), ("true", "boolean")],
)
def test_not_an_object(text: str, kind: str) -> None:
    assert only_error(text) == f"jobs.jsonl:1: expected a JSON object, got {kind}"


def test_not_utf8() -> None:
    assert only_error(b'{"custom_id": "\xff"}') == "jobs.jsonl:1: not valid UTF-8 (byte 0xff at column 16)"


def test_not_utf8_column_counts_characters() -> None:
    # "é" is two bytes but one column in an editor
    bad = '{"x": "é'.encode() + b'\xfe"}'
    assert only_error(line(), bad) == "jobs.jsonl:2: not valid UTF-8 (byte 0xfe at column 9)"


def test_unknown_top_level_key() -> None:
    misspelt = without("body") | {"bdy": CHAT_BODY}
    assert only_error(misspelt) == "jobs.jsonl:1: unknown key 'bdy'"


def test_several_unknown_keys() -> None:
    assert only_error(line() | {"a": 1, "b": 2}) == "jobs.jsonl:1: unknown keys 'a', 'b'"


# --- the Batch API envelope ---------------------------------------------------------------------------


def test_custom_id_required() -> None:
    assert only_error(without("custom_id")) == "jobs.jsonl:1: custom_id: required"


def test_custom_id_must_be_a_string() -> None:
    assert only_error(line(custom_id=7)) == "jobs.jsonl:1: custom_id: must be a string, got number"


def test_custom_id_must_not_be_empty() -> None:
    assert only_error(line(custom_id="")) == "jobs.jsonl:1: custom_id: must not be empty"


def test_method_required() -> None:
    assert only_error(without("method")) == "jobs.jsonl:1: method: required"


def test_method_not_post() -> None:
    assert only_error(with_key("method", "GET")) == "jobs.jsonl:1: method: must be POST, got 'GET'"


def test_missing_url() -> None:
    assert only_error(line(), without("url", line(custom_id="b"))) == "jobs.jsonl:2: url: required"


def test_unknown_url() -> None:
    assert only_error(line(url="/v1/images/generations")) == (
        "jobs.jsonl:1: url: unknown endpoint '/v1/images/generations' (expected one of /v1/chat/completions, "
        "/v1/completions, /v1/audio/transcriptions, /v1/audio/translations, /v1/embeddings, /v1/responses, "
        "/v1/moderations)"
    )


def test_url_not_a_string() -> None:
    assert only_error(line(url=["/v1/completions"])) == "jobs.jsonl:1: url: must be a string, got array"


def test_body_required() -> None:
    assert only_error(without("body")) == "jobs.jsonl:1: body: required"


def test_body_must_be_an_object() -> None:
    assert only_error(line(body="hello")) == "jobs.jsonl:1: body: must be an object, got string"


def test_duplicate_custom_id() -> None:
    path = write(line(custom_id="a"), line(custom_id="b"), line(custom_id="abc"), "", line(custom_id="abc"))
    assert errors(path) == ["jobs.jsonl:5: custom_id: duplicate 'abc' (first on line 3)"]


def test_duplicate_of_an_invalid_line() -> None:
    path = write(line(custom_id="abc", url="/v1/nope"), line(custom_id="abc"))
    assert errors(path)[1] == "jobs.jsonl:2: custom_id: duplicate 'abc' (first on line 1)"


# --- chat and completions bodies ----------------------------------------------------------------------


def test_missing_model() -> None:
    assert only_error(line(body=without("model", CHAT_BODY))) == "jobs.jsonl:1: body.model: required"


def test_model_must_not_be_empty() -> None:
    body = with_key("model", "", CHAT_BODY)
    assert only_error(line(body=body)) == "jobs.jsonl:1: body.model: must not be empty"


def test_messages_missing() -> None:
    assert only_error(line(body={"model": "m"})) == "jobs.jsonl:1: body.messages: required"


def test_messages_not_a_list() -> None:
    body = {"model": "m", "messages": {"role": "user", "content": "Hi"}}
    assert only_error(line(body=body)) == "jobs.jsonl:1: body.messages: must be a list, got object"


def test_messages_empty() -> None:
    body = {"model": "m", "messages": []}
    assert only_error(line(body=body)) == "jobs.jsonl:1: body.messages: must not be empty"


def test_message_without_role() -> None:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief"}, {"content": "Hi"}]}
    assert only_error(line(body=body)) == "jobs.jsonl:1: body.messages[1].role: required"


def test_message_with_unknown_role() -> None:
    body = {"model": "m", "messages": [{"role": "bot", "content": "Hi"}]}
    assert only_error(line(body=body)).startswith("jobs.jsonl:1: body.messages[0].role: unknown role 'bot' (")


def test_message_not_an_object() -> None:
    body = {"model": "m", "messages": ["Hi"]}
    assert only_error(line(body=body)) == "jobs.jsonl:1: body.messages[0]: must be an object, got string"


def test_message_without_content() -> None:
    body = {"model": "m", "messages": [{"role": "user"}]}
    assert only_error(line(body=body)) == "jobs.jsonl:1: body.messages[0].content: required"


def test_message_content_of_wrong_type() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": 5}]}
    assert only_error(line(body=body)) == (
        "jobs.jsonl:1: body.messages[0].content: must be a string, a list of parts or null, got number"
    )


def test_assistant_tool_calls_need_no_content() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "user", "content": None},
    ]
    assert errors(write(line(body={"model": "m", "messages": messages}))) == []


@pytest.mark.parametrize("key", ["n", "max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_counts_must_be_positive_integers(key: str, value: Any) -> None:
    body = CHAT_BODY | {key: value}
    assert (
        only_error(line(body=body)) == f"jobs.jsonl:1: body.{key}: must be a positive integer, got {value!r}"
    )


def test_every_chat_parameter_passes_through() -> None:
    body = CHAT_BODY | {
        "functions": [{"name": "f", "parameters": {"type": "object", "properties": {}}}],
        "function_call": "auto",
        "n": 2,
        "stop": ["\n", "END"],
        "logit_bias": {"50256": -100},
        "user": "u-1",
        "tools": [{"type": "function", "function": {"name": "g", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "g"}},
        "temperature": 0.2,
        "max_tokens": None,
        "response_format": {"type": "json_object"},
        "seed": 7,
        "a_parameter_from_next_year": {"nested": [1, 2.5, None]},
    }
    [item] = read(write(line(body=body)))
    assert item == JobLine(line=1, custom_id="req-1", url=CHAT, body=body)


def test_missing_prompt() -> None:
    assert only_error(line(url=COMPLETIONS, body={"model": "m"})) == "jobs.jsonl:1: body.prompt: required"


@pytest.mark.parametrize("prompt", ["Once upon", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_prompt_forms(prompt: Any) -> None:
    assert errors(write(line(url=COMPLETIONS, body={"model": "m", "prompt": prompt, "n": 1}))) == []


@pytest.mark.parametrize("prompt", [["a", 1], [[1], "b"], [[]], [True], 5])
def test_prompt_of_wrong_shape(prompt: Any) -> None:
    message = only_error(line(url=COMPLETIONS, body={"model": "m", "prompt": prompt}))
    assert message.startswith("jobs.jsonl:1: body.prompt: must be a string, a list of strings, ")


# --- audio bodies -------------------------------------------------------------------------------------


def audio(
    file: Any = "clips/a.mp3", url: str = TRANSCRIPTIONS, custom_id: str = "req-1", **extra: Any
) -> dict[str, Any]:
    """A Batch API line for an audio url; `**extra` goes into the body."""
    return line(url=url, custom_id=custom_id, body={"model": "whisper-1", "file": file, **extra})


#: the first bytes of a WAV file: enough for validation, which reads no further
WAV_HEAD = b"RIFF\x24\x00\x00\x00WAVEfmt "


@pytest.fixture
def clip() -> Path:
    """A small audio file at clips/a.mp3."""
    path = Path("clips/a.mp3")
    path.parent.mkdir()
    path.write_bytes(b"ID3" + bytes(100))
    return path


def test_audio_file_resolved(clip: Path, tmp_path: Path) -> None:
    [item] = read(write(audio(language="en", temperature=0, response_format="srt")))
    assert isinstance(item, JobLine)
    assert item.audio_path == tmp_path / "clips/a.mp3"
    assert item.body["file"] == "clips/a.mp3"


def test_audio_file_relative_to_the_job_file(tmp_path: Path) -> None:
    Path("jobs").mkdir()
    (tmp_path / "jobs" / "b.WAV").write_bytes(WAV_HEAD)
    [item] = read(write(audio("b.WAV", url=TRANSLATIONS), name="jobs/j.jsonl"))
    assert isinstance(item, JobLine)
    assert item.audio_path == tmp_path / "jobs" / "b.WAV"


def test_audio_file_absolute(clip: Path) -> None:
    [item] = read(write(audio(str(clip.absolute()))))
    assert isinstance(item, JobLine)
    assert item.audio_path == clip.absolute()


def test_audio_missing_file() -> None:
    assert only_error(audio()) == "jobs.jsonl:1: body.file: no such file 'clips/a.mp3'"


def test_audio_file_key_required() -> None:
    body = {"model": "whisper-1"}
    assert only_error(line(url=TRANSCRIPTIONS, body=body)) == "jobs.jsonl:1: body.file: required"


def test_audio_wrong_extension() -> None:
    Path("notes.txt").write_text("hello")
    assert only_error(audio("notes.txt")) == (
        "jobs.jsonl:1: body.file: unsupported audio format '.txt' "
        "(expected one of flac, m4a, mp3, mp4, mpeg, mpga, ogg, wav, webm)"
    )


def test_audio_too_large() -> None:
    with open("big.wav", "wb") as f:
        f.truncate(26 * 1024 * 1024)  # sparse: no 26 MB written
    assert only_error(audio("big.wav")) == "jobs.jsonl:1: body.file: 26.0 MB is over the 25 MB limit"


def test_audio_just_over_the_limit() -> None:
    with open("big.wav", "wb") as f:
        f.truncate(MAX_AUDIO_BYTES + 1)
    assert only_error(audio("big.wav")) == "jobs.jsonl:1: body.file: 25.1 MB is over the 25 MB limit"


def test_audio_at_the_limit() -> None:
    with open("ok.wav", "wb") as f:
        f.write(WAV_HEAD)
        f.truncate(MAX_AUDIO_BYTES)
    assert errors(write(audio("ok.wav"))) == []


def test_audio_unreadable() -> None:
    # a directory cannot be read even by root, unlike a chmod 000 file
    Path("x.wav").mkdir()
    assert only_error(audio("x.wav")) == "jobs.jsonl:1: body.file: cannot read 'x.wav': Is a directory"


def test_audio_language_on_translations(clip: Path) -> None:
    message = only_error(audio(url=TRANSLATIONS, language="de"))
    assert message == "jobs.jsonl:1: body.language: not accepted by translations"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"temperature": 1.5}, "body.temperature: must be a number from 0 to 1, got 1.5"),
        (
            {"response_format": "xml"},
            "body.response_format: must be one of json, srt, text, verbose_json, vtt",
        ),
        ({"response_format": ["json"]}, "body.response_format: must be one of"),
        ({"prompt": ["a"]}, "body.prompt: must be a string, got array"),
        ({"model": None}, "body.model: must be a string, got null"),
    ],
)
def test_audio_parameters(clip: Path, extra: dict[str, Any], message: str) -> None:
    assert only_error(audio(**extra)).startswith(f"jobs.jsonl:1: {message}")


# --- whole files --------------------------------------------------------------------------------------


def test_empty_file() -> None:
    Path("jobs.jsonl").write_bytes(b"")
    assert errors("jobs.jsonl") == ["jobs.jsonl:1: empty file: no requests"]


def test_file_of_blank_lines() -> None:
    assert errors(write("", "   ", "\t")) == ["jobs.jsonl:3: empty file: no requests"]


def test_blank_lines_bom_and_crlf_are_fine() -> None:
    data = (
        b"\xef\xbb\xbf"
        + orjson.dumps(line(custom_id="a"))
        + b"\r\n\r\n  \n"
        + orjson.dumps(line(custom_id="b"))
    )
    Path("jobs.jsonl").write_bytes(data)
    reader = JobReader("jobs.jsonl")
    items = list(reader)
    assert [(i.line, i.custom_id) for i in items if isinstance(i, JobLine)] == [(1, "a"), (4, "b")]
    assert len(items) == 2
    assert reader.lines_read == 2


def test_shorthand_custom_ids() -> None:
    path = write(CHAT_BODY, "", CHAT_BODY)
    items = read(path, "chat")
    assert items == [JobLine(1, "line-1", CHAT, CHAT_BODY), JobLine(3, "line-3", CHAT, CHAT_BODY)]


def test_shorthand_accepts_batch_lines() -> None:
    body = {"model": "m", "prompt": "x"}
    path = write({"model": "m", "prompt": "Hi"}, line(custom_id="mine", url=COMPLETIONS, body=body))
    items = read(path, "completions")
    assert [(i.custom_id, i.url) for i in items if isinstance(i, JobLine)] == [
        ("line-1", COMPLETIONS),
        ("mine", COMPLETIONS),
    ]


def test_shorthand_batch_line_still_validated() -> None:
    message = only_error(with_key("method", "GET"), endpoint="chat")
    assert message == "jobs.jsonl:1: method: must be POST, got 'GET'"


def test_shorthand_bad_body() -> None:
    assert only_error({"model": "m"}, endpoint="chat") == "jobs.jsonl:1: body.messages: required"


def test_unknown_endpoint_option() -> None:
    with pytest.raises(ConfigError, match="unknown endpoint 'images'"):
        JobReader("jobs.jsonl", "images")


def test_many_errors_all_reported_in_order() -> None:
    path = write(
        line(custom_id="ok-1"),
        "{oops",
        line(custom_id="ok-1"),
        "",
        line(custom_id="x", url="/v1/embeddings"),
        line(custom_id="ok-2"),
        line(custom_id="y", body={"model": "m"}),
        "[]",
        b"\xc3\x28",
    )
    items = read(path)
    assert [i.line for i in items] == [1, 2, 3, 5, 6, 7, 8, 9]
    assert [str(i).split(": ")[0] for i in items if isinstance(i, LineError)] == [
        "jobs.jsonl:2",
        "jobs.jsonl:3",
        "jobs.jsonl:5",
        "jobs.jsonl:7",
        "jobs.jsonl:8",
        "jobs.jsonl:9",
    ]
    assert [i.custom_id for i in items if isinstance(i, JobLine)] == ["ok-1", "ok-2"]


def content_hash(path: str, endpoint: str | None = None) -> str:
    reader = JobReader(path, endpoint)
    list(reader)
    return reader.content_hash


def test_content_hash() -> None:
    path = write(CHAT_BODY)
    first = content_hash(path, "chat")
    assert len(first) == 64
    assert content_hash(path, "chat") == first
    assert content_hash(write(CHAT_BODY, name="copy.jsonl"), "chat") == first
    assert content_hash(path, "completions") != first
    assert content_hash(path) != first
    assert content_hash(write(CHAT_BODY, "")) != first


def test_content_hash_before_reading() -> None:
    with pytest.raises(RuntimeError, match="after the whole job file"):
        _ = JobReader(write(CHAT_BODY)).content_hash


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def test_stdin(monkeypatch: pytest.MonkeyPatch, clip: Path, tmp_path: Path) -> None:
    data = orjson.dumps(audio()) + b"\n" + orjson.dumps(audio(custom_id="req-2", file="nope.mp3")) + b"\n"
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    reader = JobReader("-")
    items = list(reader)
    assert isinstance(items[0], JobLine)
    assert items[0].audio_path == tmp_path / "clips/a.mp3"  # relative to the working directory
    assert str(items[1]) == "<stdin>:2: body.file: no such file 'nope.mp3'"
    assert reader.content_hash == content_hash(write(data.decode().rstrip("\n")))
    with pytest.raises(RuntimeError, match="only once"):
        list(reader)


def test_endpoints_cover_every_shorthand() -> None:
    assert set(ENDPOINTS) == {
        "chat",
        "completions",
        "transcriptions",
        "translations",
        "embeddings",
        "responses",
        "moderations",
    }


# --- what cannot work: refused at validation -----------------------------------------------------------


@pytest.mark.parametrize("stream", [True, "yes", 1])
@pytest.mark.parametrize("url", [CHAT, COMPLETIONS])
def test_stream_is_refused(url: str, stream: object) -> None:
    body = {**CHAT_BODY, "prompt": "Hi", "stream": stream}
    assert only_error(line(url=url, body=body)) == (
        "jobs.jsonl:1: body.stream: not supported (answers are stored whole, never as streamed chunks); "
        "remove it"
    )


def test_stream_false_or_null_is_fine() -> None:
    path = write(
        line(body={**CHAT_BODY, "stream": False}), line(custom_id="b", body={**CHAT_BODY, "stream": None})
    )
    assert errors(path) == []


def test_stream_on_audio_is_refused(clip: Path) -> None:
    assert only_error(audio(stream=True)).startswith("jobs.jsonl:1: body.stream: not supported")


def test_stream_in_shorthand_is_refused() -> None:
    message = only_error({**CHAT_BODY, "stream": True}, endpoint="chat")
    assert message.startswith("jobs.jsonl:1: body.stream: not supported")


def test_endpoint_flag_contradicting_the_url() -> None:
    items = read(write(line(custom_id="a"), line(custom_id="b")), "completions")
    assert [str(i) for i in items] == [
        f"jobs.jsonl:{n}: url: '/v1/chat/completions' contradicts --endpoint completions; "
        "Batch API lines name their own url: leave out --endpoint, or fix the url"
        for n in (1, 2)
    ]
    assert all(isinstance(i, LineError) and i.hint for i in items)  # intake shows the hint once


def test_endpoint_flag_agreeing_with_the_url() -> None:
    assert errors(write(line()), "chat") == []


def test_custom_id_at_the_column_limit() -> None:
    assert MAX_CUSTOM_ID_CHARS == 512  # read from the model's column, String(512)
    [item] = read(write(line(custom_id="é" * MAX_CUSTOM_ID_CHARS)))
    assert isinstance(item, JobLine)


def test_custom_id_over_the_column_limit() -> None:
    message = only_error(line(custom_id="x" * 10_000))
    assert message == "jobs.jsonl:1: custom_id: 10,000 characters, over the limit of 512"


def test_custom_id_with_nul() -> None:
    assert only_error(line(custom_id="a\x00b")) == "jobs.jsonl:1: custom_id: must not contain NUL (\\u0000)"


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (CHAT_BODY, "add --endpoint chat (the lines look like bare chat request bodies)"),
        ({"model": "m", "prompt": "Hi"}, "add --endpoint completions (the lines look like bare completions"),
        (
            {"model": "whisper-1", "file": "a.wav"},
            "add --endpoint transcriptions or --endpoint translations (the lines look like bare audio",
        ),
    ],
)
def test_shorthand_without_endpoint_gets_a_hint(body: dict[str, Any], hint: str) -> None:
    [item] = read(write(body))
    assert isinstance(item, LineError)
    assert item.message.startswith("unknown keys 'model', ")
    assert item.hint is not None and item.hint.startswith(hint)


def test_no_hint_for_a_batch_line_with_a_stray_key() -> None:
    [item] = read(write(with_key("messages", [])))
    assert isinstance(item, LineError) and item.hint is None


# --- line length ---------------------------------------------------------------------------------------


def test_line_at_the_limit_is_read() -> None:
    data = orjson.dumps(line())
    Path("jobs.jsonl").write_bytes(data + b"\n" + data.replace(b"req-1", b"req-2"))  # last line: no newline
    assert errors("jobs.jsonl", max_line_bytes=len(data)) == []


def test_line_over_the_limit() -> None:
    data = orjson.dumps(line())
    path = write(data.replace(b"req-1", b"req-0"), data + b" ", data.replace(b"req-1", b"req-2") + b"  ")
    assert errors(path, max_line_bytes=len(data)) == [
        f"jobs.jsonl:2: line too long: {len(data) + 1:,} bytes, over the limit of {len(data):,} "
        "(PIPELINE_MAX_LINE_BYTES)",
        f"jobs.jsonl:3: line too long: {len(data) + 2:,} bytes, over the limit of {len(data):,} "
        "(PIPELINE_MAX_LINE_BYTES)",
    ]


def test_a_long_line_is_never_held_whole() -> None:
    limit = 1024 * 1024
    long_body = {**CHAT_BODY, "pad": "x" * (20 * limit)}
    path = write(line(custom_id="a"), line(custom_id="big", body=long_body), line(custom_id="c"))
    tracemalloc.start()
    try:
        reader = JobReader(path, max_line_bytes=limit)
        items = list(reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [i.line for i in items if isinstance(i, JobLine)] == [1, 3]
    assert [str(i).split(": ")[1] for i in items if isinstance(i, LineError)] == ["line too long"]
    assert peak < 5 * limit  # the 20 MB line was read a piece at a time
    assert reader.content_hash == hashlib.sha256(b"endpoint=\n" + Path(path).read_bytes()).hexdigest()


def test_default_line_limit_is_the_settings_default() -> None:
    assert JobReader("jobs.jsonl").max_line_bytes == Settings().max_line_bytes == 8 * 1024 * 1024


# --- audio bytes ---------------------------------------------------------------------------------------

#: a valid head for every accepted extension
AUDIO_HEADS = {
    "flac": b"fLaC\x00\x00\x00\x22",
    "m4a": b"\x00\x00\x00\x20ftypM4A ",
    "mp3": b"ID3\x04\x00\x00\x00\x00",
    "mp4": b"\x00\x00\x00\x18ftypmp42",
    "mpeg": b"\xff\xfb\x90\x64\x00\x00",
    "mpga": b"\xff\xf3\x64\xc4\x00\x00",
    "ogg": b"OggS\x00\x02\x00\x00",
    "wav": WAV_HEAD,
    "webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81",
}


def test_every_extension_has_a_head() -> None:
    assert set(AUDIO_HEADS) == AUDIO_EXTENSIONS


@pytest.mark.parametrize("extension", sorted(AUDIO_HEADS))
def test_audio_bytes_of_the_claimed_format(extension: str) -> None:
    Path(f"a.{extension}").write_bytes(AUDIO_HEADS[extension] + bytes(64))
    assert errors(write(audio(f"a.{extension}"))) == []


@pytest.mark.parametrize(
    "head",
    [b"ID3\x04", b"\xff\xe3\x18\xc4", b"\xff\xfb\x90\x64"],
    ids=["id3", "mpeg-2.5 frame", "mpeg-1 frame"],
)
def test_mp3_heads(head: bytes) -> None:
    Path("a.mp3").write_bytes(head + bytes(16))
    assert errors(write(audio("a.mp3"))) == []


def test_mpeg_program_stream() -> None:
    Path("a.mpeg").write_bytes(b"\x00\x00\x01\xba\x44" + bytes(16))
    assert errors(write(audio("a.mpeg"))) == []


def test_empty_audio_file() -> None:
    Path("empty.wav").write_bytes(b"")
    assert only_error(audio("empty.wav")) == "jobs.jsonl:1: body.file: 'empty.wav' is empty"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.wav", b"hello, this is text", "is not WAV (expected RIFF....WAVE at the start)"),
        ("riff.wav", b"RIFF\x24\x00\x00\x00AVI LIST", "is not WAV (expected RIFF....WAVE at the start)"),
        (
            "noise.mp3",
            bytes(range(7, 107)),
            "is not MP3 (expected an ID3 tag or an MPEG audio frame at the start)",
        ),
        ("x.flac", b"ID3\x04" + bytes(20), "is not FLAC (expected fLaC at the start)"),
        ("x.ogg", WAV_HEAD, "is not Ogg (expected OggS at the start)"),
        ("x.m4a", b"\x00\x00\x00\x20moov", "is not MP4 audio (expected ftyp at byte 4)"),
        ("x.mp4", b"ftyp", "is not MP4 (expected ftyp at byte 4)"),
        ("x.webm", b"OggS" + bytes(8), "is not WebM (expected the EBML header 1A 45 DF A3 at the start)"),
        ("x.mpga", b"\x00\x00\x01\xba", "is not MPEG audio (expected an ID3 tag or an MPEG audio frame"),
    ],
)
def test_audio_bytes_not_of_the_claimed_format(name: str, data: bytes, message: str) -> None:
    Path(name).write_bytes(data)
    assert only_error(audio(name)).startswith(f"jobs.jsonl:1: body.file: {name!r} {message}")


# --- generated custom ids ------------------------------------------------------------------------------


def test_generated_ids_take_a_free_suffix() -> None:
    ids = CustomIds()
    assert ids.give("line-2", 1) is None
    assert ids.give("invalid-line-3", 1) is None  # a line's own id: no clash
    assert ids.give("invalid-line-3~2", 2) is None
    assert ids.for_shorthand(2) == "line-2~2"
    assert ids.for_invalid(3) == "invalid-line-3~3"
    assert ids.for_invalid(4) == "invalid-line-4"
    assert ids.give("invalid-line-4", 5) == 4 and ids.is_generated("invalid-line-4")
    assert not ids.is_generated("line-2")


def test_an_invalid_line_keeps_its_own_given_id_free() -> None:
    ids = CustomIds()
    assert ids.give("invalid-line-1", 1) is None
    assert ids.for_invalid(1) == "invalid-line-1"  # line 1 holds it: its row is the only one


def test_shorthand_id_given_earlier_in_the_file() -> None:
    path = write(line(custom_id="line-2"), CHAT_BODY)
    assert [i.custom_id for i in read(path, "chat") if isinstance(i, JobLine)] == ["line-2", "line-2~2"]


def test_given_id_equal_to_an_earlier_generated_one() -> None:
    path = write(CHAT_BODY, line(custom_id="line-1"))
    assert errors(path, "chat") == ["jobs.jsonl:2: custom_id: duplicate 'line-1' (generated for line 1)"]
