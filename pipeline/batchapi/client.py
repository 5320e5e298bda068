"""The Batch API over HTTP: /v1/files and /v1/batches, with the engine's auth headers and error policy.

Answers are classified as the engine classifies them (`send.classify.classify`). Calls that only read
(lists, retrieve, file content) and the cancel (asking twice is harmless) are retried on RetryableError
with the engine's backoff (pipeline/retrying.py). The two calls that make something, the upload and the
create, are made once: after a failure nobody can tell whether the API made it, so the caller looks it up
(`find_file`, `find_batch`) before making it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import IO, Any, TypeVar

import aiohttp
import orjson

from pipeline.errors import APIError, BadResponse, ErrorType, PermanentError, RetryableError
from pipeline.retrying import Policy, call_async
from pipeline.send.bodies import ACCEPT_ENCODING, UndecodableBody, iter_decoded, read_capped
from pipeline.send.classify import backoff_delay, classify
from pipeline.send.transport import auth_headers
from pipeline.settings import Secret, Settings

#: Files per page when looking for an upload by name (the API's largest page).
FILES_PAGE = 10_000
#: Batches per page when looking for one by metadata (the API's largest page).
BATCHES_PAGE = 100
#: Pages read at most when looking something up: what was made a moment ago is on the first ones.
LOOKUP_PAGES = 20
T = TypeVar("T")


class BatchClient:
    """`async with BatchClient(settings, key, base_url, organization) as api:` then its calls."""

    def __init__(self, settings: Settings, key: Secret, base_url: str, organization: str | None) -> None:
        self.settings = settings
        self.base_url = base_url
        self._key = key
        self._headers = auth_headers(key, organization, settings.project)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"BatchClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> BatchClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout, connect=self.settings.connect_timeout),
            headers={**self._headers, "Accept-Encoding": ACCEPT_ENCODING},
            auto_decompress=False,  # send/bodies.py inflates within the size cap
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    def scrub(self, data: bytes) -> bytes:
        """An answer (or a line of a downloaded file) without the key in use, whole or masked."""
        return self._key.scrub(data)

    # --- files -----------------------------------------------------------------------------------------

    async def upload(self, filename: str, content: IO[bytes]) -> dict[str, Any]:
        """POST /files (purpose batch) once: the file object."""
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        return await self._json("POST", "/files", data=form)

    async def find_file(self, filename: str) -> dict[str, Any] | None:
        """The newest batch file named `filename`, looking through the newest LOOKUP_PAGES pages."""
        params: dict[str, str] = {"purpose": "batch", "limit": str(FILES_PAGE), "order": "desc"}
        for _ in range(LOOKUP_PAGES):
            page = await self._retrying("listing files", lambda: self._json("GET", "/files", params=params))
            files = [f for f in page.get("data") or [] if isinstance(f, dict)]
            found = next((f for f in files if f.get("filename") == filename), None)
            if found is not None or not page.get("has_more") or not files:
                return found
            params["after"] = str(files[-1].get("id"))
        return None

    async def download(self, file_id: str, out: IO[bytes]) -> None:
        """GET /files/{id}/content into `out`, a chunk at a time (as sent: scrub each line read back)."""

        async def fetch() -> None:
            out.seek(0)
            out.truncate()
            async with self._request("GET", f"/files/{file_id}/content") as resp:
                if not 200 <= resp.status < 300:
                    raise _error(resp.status, resp.headers, await self._body(resp))
                try:
                    async for piece in iter_decoded(resp):
                        out.write(piece)
                except UndecodableBody as exc:
                    raise BadResponse(f"file {file_id}: {exc}") from None

        await self._retrying(f"downloading {file_id}", lambda: _transport(fetch()))

    # --- batches ---------------------------------------------------------------------------------------

    async def create(self, file_id: str, endpoint: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        """POST /batches once: the batch object."""
        body = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        return await self._json("POST", "/batches", json=body)

    async def find_batch(self, metadata: Mapping[str, str]) -> dict[str, Any] | None:
        """The newest batch carrying every pair of `metadata`, looking through the newest LOOKUP_PAGES."""
        params = {"limit": str(BATCHES_PAGE)}
        for _ in range(LOOKUP_PAGES):
            page = await self._retrying(
                "listing batches", lambda: self._json("GET", "/batches", params=params)
            )
            batches = [b for b in page.get("data") or [] if isinstance(b, dict)]
            found = next((b for b in batches if _carries(b, metadata)), None)
            if found is not None or not page.get("has_more") or not batches:
                return found
            params["after"] = str(batches[-1].get("id"))
        return None

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """GET /batches/{id}."""
        return await self._retrying(f"reading {batch_id}", lambda: self._json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """POST /batches/{id}/cancel (harmless to repeat)."""
        path = f"/batches/{batch_id}/cancel"
        return await self._retrying(f"cancelling {batch_id}", lambda: self._json("POST", path))

    # --- HTTP ------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._session is not None, "use the client as an async context manager"
        return self._session.request(method, self.base_url + path, **kwargs)

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One call whose 2xx answer is a JSON object; any other answer raises its APIError."""

        async def call() -> dict[str, Any]:
            async with self._request(method, path, **kwargs) as resp:
                raw = await self._body(resp)
                if not 200 <= resp.status < 300:
                    raise _error(resp.status, resp.headers, raw)
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                quoted = raw[:200].decode("utf-8", "replace")
                raise BadResponse(
                    f"HTTP {resp.status} from {path} is not a JSON object: {quoted!r}", body=raw
                )
            return data

        return await _transport(call())

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes:
        """An answer's body, decoded within the size cap and scrubbed of the key."""
        cap = self.settings.max_response_bytes
        try:
            raw = await read_capped(resp, cap)
        except UndecodableBody as exc:
            raise BadResponse(f"HTTP {resp.status}: {exc}") from None
        if raw is None:
            resp.close()
            raise PermanentError(
                f"HTTP {resp.status}: the answer is over the {cap:,}-byte cap (decoded)",
                status=resp.status,
                error_type=ErrorType.RESPONSE_TOO_LARGE,
            )
        return self.scrub(raw)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call` tried again on RetryableError, up to max_attempts, with the engine's backoff."""
        policy = Policy(
            f"Batch API: {what}",
            retry_on=lambda exc: isinstance(exc, RetryableError),
            attempts=self.settings.max_attempts,
            wait=_wait,
        )
        return await call_async(call, policy)


async def _transport(call: Awaitable[T]) -> T:
    """`call`, with timeouts and broken connections as the RetryableErrors the engine makes of them."""
    try:
        return await call
    except TimeoutError:
        raise RetryableError("no answer in time", error_type=ErrorType.TIMEOUT) from None
    except aiohttp.ClientError as exc:
        raise RetryableError(f"connection error: {exc}", error_type=ErrorType.CONNECTION_ERROR) from None


def _error(status: int, headers: Mapping[str, str], raw: bytes) -> APIError:
    error = classify(status, headers, raw)
    assert error is not None
    return error


def _wait(attempt: int, exc: BaseException | None) -> float:
    return backoff_delay(attempt, exc.retry_after if isinstance(exc, APIError) else None)


def _carries(batch: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
    found = batch.get("metadata")
    return isinstance(found, dict) and all(found.get(k) == v for k, v in metadata.items())
