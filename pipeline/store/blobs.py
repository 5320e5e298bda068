"""Stored files (audio clips): each stored once at intake, content-addressed, read back per attempt.

Workers may run on other machines, and the job file's clips may be gone by the time a request is sent, so
intake copies every clip into the database, content-addressed by sha256: a clip named by many lines (or by
many batches) is stored once. The engine loads the bytes back for each attempt, so a retry re-sends exactly
what the first attempt sent and no process holds every clip of a batch at once.

    blobs = BlobWriter(session)          # inside intake's write transaction
    sha = blobs.add(line.audio_path)     # hashed once per distinct path; inserted once per content
    ...
    data = load_blob(db, sha)            # per attempt
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.endpoints.audio import MAX_AUDIO_BYTES
from pipeline.store.db import Database
from pipeline.store.models import Blob
from pipeline.store.sql import upsert

#: Bytes read at a time while hashing a clip.
READ_CHUNK = 1024 * 1024


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
        upsert(self._session, Blob, "sha256", [row], update=False)
        self._stored.add(sha)
        return sha

    def _exists(self, sha: str) -> bool:
        return self._session.scalar(select(Blob.sha256).where(Blob.sha256 == sha)) is not None


def load_blob(db: Database, sha256: str) -> bytes:
    """The bytes of a stored file (an audio clip). Raises LookupError when there is none."""
    with db.read() as s:
        data = s.scalar(select(Blob.data).where(Blob.sha256 == sha256))
    if data is None:
        raise LookupError(f"no stored file with sha256 {sha256}")
    return bytes(data)
