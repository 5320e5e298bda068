"""/v1/files: upload (multipart, with a purpose), list, retrieve, content and delete, kept in memory.

Files are what Batch API batches read their input from and write their output and errors to. An upload
over MAX_UPLOAD_BYTES is read to its end and refused 413; a purpose outside PURPOSES is refused 400.
Listing is newest first unless `order=asc`, `limit` 1..10,000 (default 10,000), `after` a file id.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web

from ._multipart import FormParser, boundary_of
from ._protocol import ApiError, invalid_type, missing_parameter
from ._stats import Stats

#: Largest file the files endpoint takes (OpenAI's 512 MB).
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
#: The purposes OpenAI accepts for an upload.
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: Most files one list call returns.
MAX_LIST = 10_000


@dataclass
class FakeFile:
    """One stored file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def view(self) -> dict[str, Any]:
        """The file object, as OpenAI shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def no_such(kind: str, object_id: str) -> ApiError:
    return ApiError(404, f"No such {kind} object: {object_id}", param="id")


class FileStore:
    """Every file uploaded or written by a batch, by id, in the order they were made."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.files: dict[str, FakeFile] = {}

    def add(self, filename: str, purpose: str, data: bytes) -> FakeFile:
        """Store a file (an upload, or a batch's output or error file)."""
        made = FakeFile(f"file-{secrets.token_hex(12)}", filename, purpose, data, int(time.time()))
        self.files[made.id] = made
        return made

    def get(self, file_id: str) -> FakeFile:
        found = self.files.get(file_id)
        if found is None:
            raise no_such("File", file_id)
        return found

    async def upload(self, request: web.Request) -> web.Response:
        """POST /v1/files: multipart `purpose` and `file`."""
        if request.content_type != "multipart/form-data":
            await request.read()
            raise ApiError(400, f"Invalid Content-Type header ({request.content_type}), expected multipart")
        data = bytearray()
        size = 0

        def take(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size <= MAX_UPLOAD_BYTES:
                data.extend(chunk)

        parser = FormParser(boundary_of(request.headers.get(hdrs.CONTENT_TYPE, "")), "file", take)
        try:
            async for chunk in request.content.iter_any():
                parser.feed(chunk)
            parser.close()
        except ValueError as exc:
            raise ApiError(400, f"Could not parse multipart form: {exc}") from None
        if size > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"File is too large: {size} bytes, the limit is {MAX_UPLOAD_BYTES}.")
        purpose = parser.fields.get("purpose")
        if not purpose:
            raise missing_parameter("purpose")
        if purpose not in PURPOSES:
            raise ApiError(400, f"'{purpose}' is not one of {list(PURPOSES)} - 'purpose'", param="purpose")
        if not parser.has_file:
            raise missing_parameter("file")
        made = self.add(parser.filename or "upload", purpose, bytes(data))
        self.stats.uploaded(made.filename)
        return json_response(made.view())

    async def listing(self, request: web.Request) -> web.Response:
        """GET /v1/files?purpose=&limit=&after=&order=."""
        query = request.query
        limit = list_limit(query.get("limit"), MAX_LIST, MAX_LIST)
        files = [f for f in self.files.values() if query.get("purpose") in (None, f.purpose)]
        if query.get("order", "desc") != "asc":
            files.reverse()
        if "after" in query:
            ids = [f.id for f in files]
            files = files[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
        page = files[:limit]
        return json_response(
            {
                "object": "list",
                "data": [f.view() for f in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(files) > limit,
            }
        )

    async def retrieve(self, request: web.Request) -> web.Response:
        """GET /v1/files/{id}."""
        return json_response(self.get(request.match_info["id"]).view())

    async def content(self, request: web.Request) -> web.Response:
        """GET /v1/files/{id}/content: the bytes as stored."""
        found = self.get(request.match_info["id"])
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def delete(self, request: web.Request) -> web.Response:
        """DELETE /v1/files/{id}."""
        found = self.get(request.match_info["id"])
        del self.files[found.id]
        return json_response({"id": found.id, "object": "file", "deleted": True})


def list_limit(raw: str | None, default: int, highest: int) -> int:
    """A list call's `limit` query parameter, 1..highest (files and batches)."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_type("limit", "an integer", raw) from None
    if not 1 <= value <= highest:
        raise ApiError(400, f"Invalid 'limit': expected a value from 1 to {highest}.", param="limit")
    return value
