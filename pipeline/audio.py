"""Audio uploads: storing each clip once at intake, and building the multipart form that sends it.

Workers may run on other machines, and the job file's clips may be gone by the time a request is sent, so
intake copies every clip into the database, content-addressed by sha256: a clip named by many lines (or by
many batches) is stored once. The engine loads the bytes back for each attempt, so a retry re-sends exactly
what the first attempt sent and no process holds every clip of a batch at once.

    blobs = BlobWriter(session)          # inside intake's write transaction
    sha = blobs.add(line.audio_path)     # hashed once per distinct path; inserted once per content
    ...
    form = form_data(body, store.load_blob(db, sha))   # per attempt
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pipeline._validate import AUDIO_URLS, MAX_AUDIO_BYTES
from pipeline.models import Blob

__all__ = ["AUDIO_URLS", "BlobWriter", "UnreadableAudio", "content_type_for", "form_data", "hash_file"]

#: Bytes read at a time while hashing a clip.
READ_CHUNK = 1024 * 1024

#: Content type sent for each accepted extension; an explicit table, since the system's mime.types varies.
CONTENT_TYPES: dict[str, str] = {
    "flac": "audio/flac",
    "m4a": "audio/mp4",
    "mp3": "audio/mpeg",
    "mp4": "audio/mp4",
    "mpeg": "audio/mpeg",
    "mpga": "audio/mpeg",
    "ogg": "audio/ogg",
    "wav": "audio/wav",
    "webm": "audio/webm",
}


class UnreadableAudio(Exception):
    """A clip that passed validation but could not be stored; `problem` reads like a validation message."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def hash_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size) of a file, read a chunk at a time."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class BlobWriter:
    """Stores the clips of one intake in its write transaction (`session`), so a rejected file stores none.

    Each distinct path is hashed once; a clip whose content is already stored (by this intake or an earlier
    one) is never read whole. Rows are inserted with ON CONFLICT DO NOTHING, so two intakes storing the same
    clip at once both succeed.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._by_path: dict[Path, str] = {}
        self._stored: set[str] = set()

    def add(self, path: Path, name: str) -> str:
        """The sha256 of the clip at `path` (`name` in the job file), stored if new; or UnreadableAudio."""
        sha = self._by_path.get(path)
        if sha is None:
            sha = self._store(path, name)
            self._by_path[path] = sha
        return sha

    def _store(self, path: Path, name: str) -> str:
        try:
            sha, _ = hash_file(path)
            if sha in self._stored or self._exists(sha):
                self._stored.add(sha)
                return sha
            data = path.read_bytes()
        except OSError as exc:  # removed or made unreadable since validation checked it
            raise UnreadableAudio(f"body.file: cannot read {name!r}: {exc.strerror or exc}") from None
        if len(data) > MAX_AUDIO_BYTES or hashlib.sha256(data).hexdigest() != sha:
            raise UnreadableAudio(f"body.file: {name!r} changed while it was being stored")
        row = {"sha256": sha, "size": len(data), "data": data}
        self._session.execute(_insert_ignoring_conflicts(self._session), row)
        self._stored.add(sha)
        return sha

    def _exists(self, sha: str) -> bool:
        return self._session.scalar(select(Blob.sha256).where(Blob.sha256 == sha)) is not None


def _insert_ignoring_conflicts(s: Session) -> Any:
    table = cast(Table, Blob.__table__)
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing(index_elements=["sha256"])


def content_type_for(filename: str) -> str:
    """The content type of an audio file, from its extension."""
    extension = filename.rpartition(".")[2].lower()
    guessed = CONTENT_TYPES.get(extension) or mimetypes.guess_type(filename)[0]
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
