"""Read and check a job file: one request per line, streamed, every bad line reported.

A line is an OpenAI Batch API line, `{"custom_id", "method": "POST", "url", "body"}`, so a file made for the
Batch API (or vLLM's run-batch) runs unchanged. With an `endpoint` shorthand (`--endpoint chat`, ...: see
pipeline/endpoints/) a line may instead be a bare request body; its custom id is `line-<n>`
(minted by `ids.CustomIds`, which also names invalid lines and keeps generated ids clear of given ones).
A line longer than `max_line_bytes` is reported without being read whole.

    for item in JobReader("jobs.jsonl"):
        if isinstance(item, LineError):
            print(item)            # jobs.jsonl:17: body.messages: required
    reader.content_hash            # after the loop: recognises the same file submitted twice
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import String
from sqlalchemy.types import TypeEngine

from pipeline.endpoints import BY_URL, Endpoint, by_name
from pipeline.endpoints.checks import json_type
from pipeline.errors import LineError, PathError
from pipeline.ids import CustomIds
from pipeline.settings import Settings
from pipeline.store.models import Request

__all__ = ["JobLine", "JobReader"]

#: the keys of a Batch API line; any other top-level key is reported, never dropped
BATCH_KEYS: frozenset[str] = frozenset({"custom_id", "method", "url", "body"})
_UTF8_BOM = b"\xef\xbb\xbf"
#: the name LineError gives standard input
STDIN_NAME = "<stdin>"
#: shown once for Batch API lines whose url differs from --endpoint
_ENDPOINT_HINT = "Batch API lines name their own url: leave out --endpoint, or fix the url"
#: bytes read at a time while skipping the rest of a line that is too long
_SKIP_CHUNK = 1024 * 1024


def _declared_length(column_type: TypeEngine[Any]) -> int:
    if not isinstance(column_type, String) or column_type.length is None:
        raise TypeError(f"expected a String column with a length, got {column_type!r}")
    return column_type.length


#: The longest custom_id the requests table holds, read from the model. SQLite would store any length and
#: PostgreSQL would refuse the whole intake, so the reader holds both to the declared length.
MAX_CUSTOM_ID_CHARS = _declared_length(Request.custom_id.type)


@dataclass(frozen=True, slots=True)
class JobLine:
    """One valid request of a job file."""

    #: 1-based line number in the file
    line: int
    custom_id: str
    #: canonical url: the endpoint's
    url: str
    #: the parsed request body, untouched: every parameter passes through
    body: dict[str, Any]
    #: the resolved file an upload endpoint sends (`body["file"]` stays as written)
    audio_path: Path | None = None


class JobReader:
    """Streams a job file (never loads it whole), yielding JobLine or LineError per non-blank line.

    `path` "-" reads standard input (once). A job file that cannot be read raises PathError from iteration.
    `content_hash` (hex sha256 of the bytes read and the endpoint option) is known once iteration finished;
    `lines_read` counts the non-blank lines seen so far; `ids` holds the custom ids of the lines read so far
    (intake names invalid lines through it).
    """

    def __init__(
        self,
        path: Path | str,
        endpoint: str | None = None,
        *,
        max_line_bytes: int = Settings.max_line_bytes,
        base_dir: Path | None = None,
    ) -> None:
        self._endpoint = by_name(endpoint) if endpoint is not None else None
        self.path = path
        self.endpoint = endpoint
        self.max_line_bytes = max_line_bytes
        self.lines_read = 0
        self.ids = CustomIds()
        self._stdin = str(path) == "-"
        self._name = STDIN_NAME if self._stdin else str(path)
        # audio files are named relative to the job file; for stdin, to the working directory
        self._base_dir = base_dir or (Path.cwd() if self._stdin else Path(path).absolute().parent)
        self._hash: str | None = None
        self._started = False

    @property
    def content_hash(self) -> str:
        """Hex sha256 of the raw bytes read plus the endpoint option."""
        if self._hash is None:
            raise RuntimeError("content_hash is known only after the whole job file was read")
        return self._hash

    def __iter__(self) -> Iterator[JobLine | LineError]:
        if self._stdin and self._started:
            raise RuntimeError("standard input can be read only once")
        self._started = True
        self.lines_read = 0
        self.ids = CustomIds()
        self._hash = None
        try:
            with self._open() as fh:
                yield from self._read(fh)
        except OSError as exc:  # missing, a directory, no permission, an I/O error while reading
            raise PathError(f"cannot read job file {self._name}: {exc.strerror or exc}") from None

    def _open(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        if self._stdin:
            # never close the process's stdin
            return contextlib.nullcontext(sys.stdin.buffer)
        return open(self.path, "rb")

    def _read(self, fh: IO[bytes]) -> Iterator[JobLine | LineError]:
        digest = hashlib.sha256(f"endpoint={self.endpoint or ''}\n".encode())
        limit = self.max_line_bytes
        number = 0
        # at most limit + 1 bytes at a time: a longer line is never held whole
        while raw := fh.readline(limit + 1):
            number += 1
            digest.update(raw)
            if len(raw) > limit and not raw.endswith(b"\n"):
                self.lines_read += 1
                size = len(raw) + _skip_line(fh, digest)
                yield LineError(
                    self._name,
                    number,
                    f"line too long: {size:,} bytes, over the limit of {limit:,} (PIPELINE_MAX_LINE_BYTES)",
                )
                continue
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            if not raw or raw.isspace():
                continue
            self.lines_read += 1
            yield self._parse(raw, number)
        if self.lines_read == 0:
            yield LineError(self._name, max(number, 1), "empty file: no requests")
        self._hash = digest.hexdigest()

    def _parse(self, raw: bytes, number: int) -> JobLine | LineError:
        """One non-blank line, as a JobLine or the first problem found on it."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return LineError(self._name, number, _decode_problem(raw, exc))
        if not isinstance(value, dict):
            return LineError(self._name, number, f"expected a JSON object, got {json_type(value)}")
        shorthand = self._endpoint
        if shorthand is not None and not ("url" in value and "body" in value):
            return self._check_body(number, self.ids.for_shorthand(number), shorthand, value)
        problem = self._check_batch_line(value, number)
        if problem is not None:
            hint = _shorthand_hint(value) if shorthand is None else None
            return LineError(self._name, number, problem, hint)
        endpoint = BY_URL[value["url"]]
        if shorthand is not None and endpoint is not shorthand:
            # a Batch API line under --endpoint must name that endpoint: the flag is never silently ignored
            problem = f"url: {value['url']!r} contradicts --endpoint {self.endpoint}"
            return LineError(self._name, number, problem, _ENDPOINT_HINT)
        return self._check_body(number, value["custom_id"], endpoint, value["body"])

    def _check_batch_line(self, value: dict[str, Any], number: int) -> str | None:
        """The envelope of a Batch API line; the first problem, or None when body checks may follow."""
        custom_id = value.get("custom_id")
        # registered before any other check: a later line with this id is a duplicate even if this one fails
        holder = self.ids.give(custom_id, number) if isinstance(custom_id, str) and custom_id else None
        if not value.keys() <= BATCH_KEYS:
            unknown = [key for key in value if key not in BATCH_KEYS]
            names = ", ".join(repr(key) for key in unknown)
            return f"unknown key{'s' if len(unknown) > 1 else ''} {names}"
        if "custom_id" not in value:
            return "custom_id: required"
        problem = _check_custom_id(custom_id)
        if problem:
            return problem
        if holder is not None and isinstance(custom_id, str):
            origin = "generated for line" if self.ids.is_generated(custom_id) else "first on line"
            return f"custom_id: duplicate {custom_id!r} ({origin} {holder})"
        return _check_request(value)

    def _check_body(
        self, number: int, custom_id: str, endpoint: Endpoint, body: dict[str, Any]
    ) -> JobLine | LineError:
        problem = endpoint.validate(body, self._base_dir)
        if problem is not None:
            return LineError(self._name, number, problem)
        return JobLine(number, custom_id, endpoint.url, body, endpoint.upload(body, self._base_dir))


def _skip_line(fh: IO[bytes], digest: Any) -> int:
    """Read past the rest of a line a chunk at a time, hashing it; the bytes it had before its newline."""
    skipped = 0
    while chunk := fh.readline(_SKIP_CHUNK):
        digest.update(chunk)
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)
    return skipped


def _decode_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why orjson refused a line: bad UTF-8 first, since it garbles any JSON message."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        # the column an editor shows: characters before the bad byte, plus one
        column = len(raw[: bad.start].decode("utf-8")) + 1
        return f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {column})"
    # orjson counts the line's own newline: anything past it means "ran out of line"
    where = f"at column {exc.colno}" if exc.lineno == 1 else "at end of line"
    return f"invalid JSON: {exc.msg} {where}"


def _check_custom_id(custom_id: object) -> str | None:
    """A given custom id: a non-empty string the requests table holds as it is on every database."""
    if not isinstance(custom_id, str):
        return f"custom_id: must be a string, got {json_type(custom_id)}"
    if not custom_id:
        return "custom_id: must not be empty"
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return f"custom_id: {len(custom_id):,} characters, over the limit of {MAX_CUSTOM_ID_CHARS}"
    if "\x00" in custom_id:
        # PostgreSQL text cannot hold NUL; SQLite could, so refuse it on both
        return "custom_id: must not contain NUL (\\u0000)"
    return None


def _shorthand_hint(value: dict[str, Any]) -> str | None:
    """For a line that looks like a bare request body (shorthand without --endpoint): which flag to add."""
    if value.keys() & BATCH_KEYS:
        return None
    if "messages" in value:
        endpoint, kind = "--endpoint chat", "chat"
    elif "file" in value:
        endpoint, kind = "--endpoint transcriptions or --endpoint translations", "audio"
    elif "prompt" in value:
        endpoint, kind = "--endpoint completions", "completions"
    elif "input" in value:
        kind = _input_kind(str(value.get("model") or ""))
        endpoint = f"--endpoint {kind}"
    else:
        return None
    return f"add {endpoint} (the lines look like bare {kind} request bodies)"


def _input_kind(model: str) -> str:
    """Which endpoint a bare body with an `input` is most likely for, from its model."""
    if "embedding" in model:
        return "embeddings"
    return "moderations" if "moderation" in model or not model else "responses"


def _check_request(value: dict[str, Any]) -> str | None:
    """`method`, `url` and `body` of a Batch API line."""
    if "method" not in value:
        return "method: required"
    if value["method"] != "POST":
        return f"method: must be POST, got {value['method']!r}"
    if "url" not in value:
        return "url: required"
    url = value["url"]
    if not isinstance(url, str):
        return f"url: must be a string, got {json_type(url)}"
    if url not in BY_URL:
        return f"url: unknown endpoint {url!r} (expected one of {', '.join(BY_URL)})"
    if "body" not in value:
        return "body: required"
    if not isinstance(value["body"], dict):
        return f"body: must be an object, got {json_type(value['body'])}"
    return None
