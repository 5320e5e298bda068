"""POST /v1/audio/transcriptions and /v1/audio/translations: a clip uploaded as multipart, a transcript back.

The body names an audio file relative to the job file; it is checked here (it exists, is not empty, is at
most 25 MB and its first bytes are the format its extension claims), stored at intake and sent as
multipart/form-data (send/transport.py builds the form). The Batch API takes no audio. An answer is a JSON
object with `text` (json, verbose_json), or plain text (text, srt, vtt).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.endpoints.base import Body, Endpoint, Parsed, as_number, as_str, usage_tokens
from pipeline.endpoints.checks import check_stream, check_string, json_type, one_of

#: The API's upload limit for one audio file.
MAX_AUDIO_BYTES = 25 * 1024 * 1024
#: Content type sent for each accepted audio extension (lower case, no dot); an explicit table, since the
#: system's mime.types varies.
AUDIO_CONTENT_TYPES: dict[str, str] = {
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
#: Audio file extensions the API accepts.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(AUDIO_CONTENT_TYPES)
#: `response_format` values the audio endpoints accept; text, srt and vtt come back as plain text.
AUDIO_RESPONSE_FORMATS: frozenset[str] = frozenset({"json", "text", "srt", "verbose_json", "vtt"})
#: Audio response formats answered as plain text rather than JSON.
AUDIO_TEXT_FORMATS: frozenset[str] = frozenset({"text", "srt", "vtt"})

#: Leading bytes of a file that `audio_format_matches` reads.
AUDIO_HEAD_BYTES = 12
#: The format each audio extension claims, and where its signature is, for messages.
AUDIO_SIGNATURES: dict[str, tuple[str, str]] = {
    "flac": ("FLAC", "fLaC at the start"),
    "m4a": ("MP4 audio", "ftyp at byte 4"),
    "mp3": ("MP3", "an ID3 tag or an MPEG audio frame at the start"),
    "mp4": ("MP4", "ftyp at byte 4"),
    "mpeg": ("MPEG", "an ID3 tag, an MPEG audio frame or a program stream header at the start"),
    "mpga": ("MPEG audio", "an ID3 tag or an MPEG audio frame at the start"),
    "ogg": ("Ogg", "OggS at the start"),
    "wav": ("WAV", "RIFF....WAVE at the start"),
    "webm": ("WebM", "the EBML header 1A 45 DF A3 at the start"),
}
_MAGIC = {"flac": b"fLaC", "ogg": b"OggS", "webm": b"\x1a\x45\xdf\xa3"}
#: An MPEG program stream's pack header: a `.mpeg` video whose audio the API transcribes.
_MPEG_PACK = b"\x00\x00\x01\xba"


def audio_format_matches(extension: str, head: bytes) -> bool:
    """Whether a file's first AUDIO_HEAD_BYTES bytes are the format its extension (lower case) claims.

    Only the container's magic number is checked: enough to refuse a text file, an empty file or random
    bytes named like audio before they are stored and paid for; the audio inside is the API's to judge.
    """
    if extension == "wav":
        return head[:4] == b"RIFF" and head[8:12] == b"WAVE"
    if extension in ("mp3", "mpga", "mpeg"):
        # an ID3v2 tag, or the 11-bit MPEG audio frame sync (FF Ex, FF Fx)
        mpeg_audio = head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)
        return mpeg_audio or (extension == "mpeg" and head[:4] == _MPEG_PACK)
    if extension in ("mp4", "m4a"):
        return head[4:8] == b"ftyp"
    return head.startswith(_MAGIC[extension])


@dataclass(frozen=True)
class Audio(Endpoint):
    """Transcriptions of an uploaded clip, or (`translate`) translations of it into English."""

    multipart = True
    batch_api = False
    completes = False

    #: translations (no `language`), not transcriptions
    translate: bool = False

    def validate(self, body: Body, base_dir: Path) -> str | None:
        problem = self.check_params(body) or check_stream(body)
        if problem is not None:
            return problem
        found = check_audio_file(body, base_dir)
        return found if isinstance(found, str) else None

    def upload(self, body: Body, base_dir: Path) -> Path | None:
        return base_dir / str(body["file"])  # an absolute name replaces base_dir

    def check_params(self, body: Body) -> str | None:
        """The parameters of an audio body other than `file`."""
        problem = check_string(body, "model")
        if problem:
            return problem
        fmt = body.get("response_format")
        if fmt is not None and not (isinstance(fmt, str) and fmt in AUDIO_RESPONSE_FORMATS):
            return f"body.response_format: must be one of {one_of(AUDIO_RESPONSE_FORMATS)}, got {fmt!r}"
        temperature = body.get("temperature")
        number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
        if temperature is not None and not (number and 0 <= temperature <= 1):
            return f"body.temperature: must be a number from 0 to 1, got {temperature!r}"
        for key in ("prompt", "language"):
            value = body.get(key)
            if value is not None and not isinstance(value, str):
                return f"body.{key}: must be a string, got {json_type(value)}"
        if "language" in body and self.translate:
            return "body.language: not accepted by translations"
        return None

    def plain_text(self, body: Body) -> bool:
        return (body.get("response_format") or "json") in AUDIO_TEXT_FORMATS

    def parse(self, data: dict[str, Any]) -> Parsed | str:
        if not isinstance(data.get("text"), str):
            return "no `text` in the transcript"
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        seconds = as_number(data.get("duration"))
        if usage.get("type") == "duration":
            seconds = as_number(usage.get("seconds"))
        prompt, completion, total, cached, _ = usage_tokens(usage)
        return Parsed(
            response_id=as_str(data.get("id")),
            model=as_str(data.get("model")),
            output=data["text"],
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            audio_seconds=seconds,
            cached_tokens=cached,
        )


def check_audio_file(body: Body, base_dir: Path) -> Path | str:
    """The audio file named by `body["file"]`, resolved against `base_dir`, or the problem with it.

    Only stats the file and reads its first bytes (is it the format its extension claims?): a 25 MB upload
    is read by whoever stores it, not by validation.
    """
    if "file" not in body:
        return "body.file: required"
    name = body["file"]
    if not isinstance(name, str):
        return f"body.file: must be a string path, got {json_type(name)}"
    if not name:
        return "body.file: must not be empty"
    path = base_dir / name  # an absolute `name` replaces base_dir
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"body.file: no such file {name!r}"
    except OSError as exc:
        return f"body.file: cannot read {name!r}: {exc.strerror}"
    head = _read_head(path, name, info.st_mode)
    if isinstance(head, str):
        return head
    extension = path.suffix[1:].lower()
    if extension not in AUDIO_EXTENSIONS:
        found = f"audio format {path.suffix!r}" if path.suffix else "file without an extension"
        return f"body.file: unsupported {found} (expected one of {one_of(AUDIO_EXTENSIONS)})"
    if info.st_size > MAX_AUDIO_BYTES:
        # rounded up, so a file just over the limit never reads "25.0 MB is over the 25 MB limit"
        size = math.ceil(info.st_size * 10 / 2**20) / 10
        return f"body.file: {size:.1f} MB is over the {MAX_AUDIO_BYTES // 2**20} MB limit"
    if not head:
        return f"body.file: {name!r} is empty"
    if not audio_format_matches(extension, head):
        claimed, signature = AUDIO_SIGNATURES[extension]
        return f"body.file: {name!r} is not {claimed} (expected {signature})"
    return path


def _read_head(path: Path, name: str, mode: int) -> bytes | str:
    """The file's first bytes, read once, since permission bits say nothing when running as root."""
    if stat.S_ISDIR(mode):
        return f"body.file: cannot read {name!r}: Is a directory"
    if not stat.S_ISREG(mode):
        # never open a FIFO or device: that could block forever
        return f"body.file: cannot read {name!r}: not a regular file"
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, AUDIO_HEAD_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"body.file: cannot read {name!r}: {exc.strerror}"
