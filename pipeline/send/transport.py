"""The HTTP side of an attempt: one pooled aiohttp session, JSON or multipart bodies, sent to the URL and
with the headers of the account the attempt goes through (routing.py: its `Target` and `Lane`).

`Transport.post` makes one exchange and never raises for transport failures: a timeout or a broken
connection comes back as a RetryableError, so the engine classifies every attempt in one place. The body
comes back with the key in use scrubbed (`Secret.scrub`): a 401 may quote it, whole or masked, and nothing
after this point (error messages, results, attempts, logs, exports) ever sees it.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from pipeline.about import user_agent
from pipeline.endpoints import Endpoint
from pipeline.endpoints.audio import AUDIO_CONTENT_TYPES
from pipeline.errors import APIError, BadResponse, ErrorType, PermanentError, RetryableError
from pipeline.send.bodies import UndecodableBody, read_capped
from pipeline.settings import Secret, Settings
from pipeline.store.claims import Claimed

if TYPE_CHECKING:
    from pipeline.send.routing import Lane, Target

#: What the User-Agent header says.
USER_AGENT = user_agent()


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs ~1 us a field
class Exchange:
    """One HTTP exchange: the answer (status, headers, body) or the transport error that prevented it."""

    status: int | None
    headers: Mapping[str, str]
    raw: bytes
    error: APIError | None = None


class Transport:
    """Use as `async with Transport(...) as http: exchange = await http.post(row)`."""

    def __init__(self, settings: Settings, load_blob: Callable[[str], bytes]) -> None:
        self.settings = settings
        self._load_blob = load_blob
        self._session: aiohttp.ClientSession | None = None
        #: requests on the wire now, and the most there were at once
        self.in_flight = 0
        self.max_in_flight = 0

    def __repr__(self) -> str:
        return f"Transport(max_in_flight={self.settings.max_in_flight})"

    async def __aenter__(self) -> Transport:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout, connect=self.settings.connect_timeout),
            connector=aiohttp.TCPConnector(limit=self.settings.max_in_flight, limit_per_host=0),
            auto_decompress=False,  # bodies.py inflates within the size cap
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, row: Claimed, endpoint: Endpoint, target: Target, lane: Lane) -> Exchange:
        """Send the row's request to its endpoint once, through the target's account, as JSON or (an
        upload) as multipart. Transport failures come back as a RetryableError, never raised."""
        assert self._session is not None, "use the transport as an async context manager"
        body = row.body if target.body_model is None else _with_model(row.body, target.body_model)
        payload: bytes | aiohttp.FormData = body.encode()
        headers: Mapping[str, str] = lane.json_headers  # the account's, Accept-Encoding included
        if endpoint.multipart:
            # Loaded for every attempt, from the database: a retry sends the same bytes, and only the clips
            # in flight are in memory. aiohttp sets the multipart Content-Type with its boundary.
            if row.blob_sha256 is None:
                return _failed(PermanentError("no stored audio file", error_type=ErrorType.MISSING_AUDIO))
            try:
                data = await asyncio.to_thread(self._load_blob, row.blob_sha256)
            except LookupError as exc:
                return _failed(PermanentError(str(exc), error_type=ErrorType.MISSING_AUDIO))
            payload, headers = form_data(orjson.loads(body), data), lane.form_headers
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async with self._session.post(target.url, data=payload, headers=headers) as resp:
                answer, error = await self._read(resp)
                # The one place answers enter: whatever is stored, logged or printed of them comes after.
                key = lane.account.key
                return Exchange(resp.status, resp.headers, key.scrub(answer) if key else answer, error)
        except TimeoutError:
            error = RetryableError(
                f"no answer within {self.settings.timeout:g}s", error_type=ErrorType.TIMEOUT
            )
        except aiohttp.ClientError as exc:
            error = RetryableError(f"connection error: {exc}", error_type=ErrorType.CONNECTION_ERROR)
        finally:
            self.in_flight -= 1
        return _failed(error)

    async def _read(self, resp: aiohttp.ClientResponse) -> tuple[bytes, APIError | None]:
        """The decoded body, unless it decodes to more than the cap (or not at all): then no body, and the
        error. The cap counts decoded bytes, whatever the encoding and with or without Content-Length."""
        cap = self.settings.max_response_bytes
        try:
            body = await read_capped(resp, cap)
        except UndecodableBody as exc:
            resp.close()
            return b"", BadResponse(f"HTTP {resp.status}: {exc}", status=resp.status)
        if body is not None:
            return body, None
        resp.close()  # the rest is never read: the connection is not reused
        return b"", PermanentError(
            f"HTTP {resp.status}: the answer is over the {cap:,}-byte cap (decoded) "
            "(raise PIPELINE_MAX_RESPONSE_BYTES to accept it)",
            status=resp.status,
            error_type=ErrorType.RESPONSE_TOO_LARGE,
        )


def auth_headers(key: Secret, organization: str | None, project: str | None = None) -> dict[str, str]:
    """The headers every call to the API carries: the key, the organization and project if any, our
    User-Agent."""
    headers = {"Authorization": f"Bearer {key.reveal()}", "User-Agent": USER_AGENT}
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return headers


def _with_model(body: str, model: str) -> str:
    """The body naming `model` (an Azure deployment named otherwise than the line's model)."""
    data = orjson.loads(body)
    data["model"] = model
    return orjson.dumps(data).decode()


def _failed(error: APIError) -> Exchange:
    return Exchange(None, {}, b"", error)


def content_type_for(filename: str) -> str:
    """The content type of an audio file, from its extension."""
    extension = filename.rpartition(".")[2].lower()
    guessed = AUDIO_CONTENT_TYPES.get(extension) or mimetypes.guess_type(filename)[0]
    return guessed or "application/octet-stream"


def form_data(body: dict[str, Any], data: bytes) -> aiohttp.FormData:
    """The multipart form of an audio request, as the API expects it.

    `file` first (the clip's bytes under its original file name), then `model`, then every other body key as
    a text field: numbers and booleans as JSON spells them, lists as repeated `key[]` fields
    (`timestamp_granularities[]`), objects as JSON. Null means "the default" and is not sent.
    """
    filename = Path(str(body["file"])).name
    # Unquoted names, as the official client (httpx) sends them: aiohttp's default percent-encodes the file
    # name, so the API would see "my%20clip.wav".
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", data, filename=_header_safe(filename), content_type=content_type_for(filename))
    form.add_field("model", str(body["model"]))
    for key, value in body.items():
        if key in ("file", "model") or value is None:
            continue
        if isinstance(value, list):
            name = key if key.endswith("[]") else f"{key}[]"
            for item in value:
                form.add_field(name, _field_text(item))
        else:
            form.add_field(key, _field_text(value))
    return form


def _header_safe(filename: str) -> str:
    """Percent-escape what cannot stand inside a quoted header value (quotes, control characters),
    as HTML5 forms and httpx do; aiohttp escapes backslashes itself."""
    return "".join(f"%{ord(c):02X}" if c == '"' or ord(c) < 0x20 or c == "\x7f" else c for c in filename)


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    # JSON spelling: true/false, 0.2, {"type": "auto"}
    return orjson.dumps(value).decode()
