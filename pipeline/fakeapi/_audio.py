"""POST /v1/audio/transcriptions and /v1/audio/translations: multipart uploads, deterministic text.

The text is "transcript of <h>" (or "translation of <h>"), h the first 8 hex digits of the sha256 of
the file bytes. The duration comes from the WAV header when the file parses as WAV (stdlib `wave`),
else from the size at 128 kbit/s (16,000 bytes a second), at least one second.

The fingerprint of an upload is the sha256 of the file bytes, a newline, then the JSON (sorted keys)
of {"fields": {name: value of every other form field}, "filename": the file's name}.

Uploads are read as a stream: a file over 25 MB is hashed to the end but not kept, then refused 413.
A clip under 0.1 s (a short WAV, an empty file) is refused 400 audio_too_short. Accepted extensions
are the ones OpenAI's own error message lists (including "oga"). whisper-* models report usage in
seconds, other models in tokens. Audio requests count 0 tokens towards TPM.

The `prompt` field may carry a directive (_directives.py) that sets the text; audio answers name no
model, so a directive that sets one is refused 400.
"""

from __future__ import annotations

import hashlib
import io
import math
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import hdrs, web

from ._directives import Directive, directive_in, invalid_directive
from ._multipart import FormParser, boundary_of
from ._plan import Plan
from ._protocol import (
    Answer,
    ApiError,
    check_model_exists,
    count_tokens,
    fingerprint_bytes,
    missing_parameter,
    require_model,
)

#: Largest file OpenAI accepts, in bytes (25 MB).
MAX_FILE_BYTES = 26_214_400

#: File extensions OpenAI accepts, in the order its error message lists them.
SUPPORTED_FORMATS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")

#: Values of `response_format`.
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")

#: Bytes a second assumed for files that are not WAV (128 kbit/s).
_BYTES_PER_SECOND = 16_000

#: Language codes verbose_json spells out, as Whisper names them.
_LANGUAGES = {
    "en": "english",
    "fr": "french",
    "de": "german",
    "es": "spanish",
    "it": "italian",
    "pt": "portuguese",
    "nl": "dutch",
    "ja": "japanese",
    "zh": "chinese",
    "ru": "russian",
}


@dataclass
class _Upload:
    """A multipart upload as read off the wire."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    has_file: bool = False
    data: bytearray = field(default_factory=bytearray)  # kept up to MAX_FILE_BYTES only
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def take(self, chunk: bytes) -> None:
        """Hash every byte of the file; keep them only while within the size limit."""
        self.digest.update(chunk)
        self.size += len(chunk)
        if self.size <= MAX_FILE_BYTES:
            self.data += chunk

    def fingerprint(self) -> str:
        digest = self.digest.copy()
        digest.update(b"\n")
        described = {"fields": self.fields, "filename": self.filename}
        digest.update(orjson.dumps(described, option=orjson.OPT_SORT_KEYS))
        return digest.hexdigest()


async def plan_audio(request: web.Request, task: str, models: Sequence[str] | None) -> Plan:
    """Read an upload for `task` ("transcribe" or "translate"); `models` are the models that exist."""
    if request.content_type != "multipart/form-data":
        raw = await request.read()
        error = ApiError(
            400,
            f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data. (HINT: If "
            "you're using curl, you can pass in multipart form data using the -F flag.)",
        )
        return Plan.failing(fingerprint_bytes(raw), error)
    upload = _Upload()
    try:
        await _read_upload(request, upload)
    except ValueError as exc:
        return Plan.failing(upload.fingerprint(), ApiError(400, f"Could not parse multipart form: {exc}"))
    model = upload.fields.get("model", "")
    try:
        directive = _directive_in(upload.fields.get("prompt"))
    except ApiError as error:
        return Plan.failing(upload.fingerprint(), error, model)

    def respond(directed: Directive | None) -> Answer:
        return _answer(upload, task, models, directed)

    return Plan(upload.fingerprint(), model, 0, respond, directive=directive)


def _directive_in(prompt: str | None) -> Directive | None:
    """The directive of the `prompt` field; audio answers name no model, so it cannot set one."""
    directive = directive_in(prompt)
    if directive is not None and directive.model is not None:
        raise invalid_directive("'model' does not apply to audio answers, which name no model")
    return directive


async def _read_upload(request: web.Request, upload: _Upload) -> None:
    parser = FormParser(boundary_of(request.headers.get(hdrs.CONTENT_TYPE, "")), "file", upload.take)
    async for chunk in request.content.iter_any():
        parser.feed(chunk)
    parser.close()
    upload.fields, upload.filename, upload.has_file = parser.fields, parser.filename, parser.has_file


@dataclass(frozen=True)
class _Request:
    """A valid transcription or translation request."""

    model: str
    response_format: str
    temperature: float
    language: str | None


def _validate(upload: _Upload, models: Sequence[str] | None) -> _Request:
    """Refuse what OpenAI refuses, in its order: size, model, file, format, options, model existence."""
    if upload.size > MAX_FILE_BYTES:
        raise ApiError(
            413,
            f"Maximum content size limit ({MAX_FILE_BYTES}) exceeded ({upload.size} bytes read)",
            type="server_error",
        )
    model = require_model(upload.fields.get("model"))
    if not upload.has_file:
        raise missing_parameter("file")
    _, dot, extension = (upload.filename or "").rpartition(".")
    if not dot or extension.lower() not in SUPPORTED_FORMATS:
        raise ApiError(400, f"Invalid file format. Supported formats: {list(SUPPORTED_FORMATS)}")
    response_format = upload.fields.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"'{response_format}' is not one of {list(RESPONSE_FORMATS)} - 'response_format'",
            param="response_format",
        )
    temperature = _temperature(upload.fields.get("temperature"))
    check_model_exists(model, models)
    return _Request(model, response_format, temperature, upload.fields.get("language"))


def _answer(upload: _Upload, task: str, models: Sequence[str] | None, directive: Directive | None) -> Answer:
    """Validate the upload, then transcribe (or translate) it, in the directive's words if it has some."""
    request = _validate(upload, models)
    duration = _duration(bytes(upload.data))
    if duration < 0.1:
        raise ApiError(
            400,
            "Audio file is too short. Minimum audio length is 0.1 seconds.",
            param="file",
            code="audio_too_short",
        )
    verb = "transcript" if task == "transcribe" else "translation"
    text = f"{verb} of {hashlib.sha256(upload.data).hexdigest()[:8]}"
    if directive is not None:
        text = directive.text(text)
    usage = _usage(request.model, duration, text)
    if request.response_format == "json":
        return Answer.json({"text": text, "usage": usage})
    if request.response_format == "verbose_json":
        language = "english" if task == "translate" else _language(request.language)
        return Answer.json(
            {
                "task": task,
                "language": language,
                "duration": duration,
                "text": text,
                "segments": [_segment(text, duration, request.temperature)],
                "usage": usage,
            }
        )
    return Answer(_plain_text(request.response_format, text, duration).encode(), "text/plain")


def _temperature(value: str | None) -> float:
    if value is None or value == "":
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        message = f"Invalid 'temperature': expected a number, got {value!r}."
        raise ApiError(400, message, param="temperature") from None
    if not 0 <= temperature <= 1:
        raise ApiError(400, "Invalid 'temperature': must be between 0 and 1.", param="temperature")
    return temperature


def _language(code: str | None) -> str:
    if not code:
        return "english"
    return _LANGUAGES.get(code.lower(), code.lower())


def _duration(data: bytes) -> float:
    """Seconds of audio: exact for a WAV, estimated from the size otherwise."""
    try:
        with wave.open(io.BytesIO(data)) as clip:
            return float(clip.getnframes() / clip.getframerate())
    except (wave.Error, EOFError, ZeroDivisionError):
        pass
    if not data:
        return 0.0
    return max(1.0, round(len(data) / _BYTES_PER_SECOND, 2))


def _usage(model: str, duration: float, text: str) -> dict[str, Any]:
    """whisper models bill by the second; the gpt-4o transcribe family bills tokens."""
    if model.startswith("whisper"):
        return {"type": "duration", "seconds": math.ceil(duration)}
    audio_tokens, output_tokens = math.ceil(duration * 10), count_tokens(text)
    return {
        "type": "tokens",
        "input_tokens": audio_tokens,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
        "output_tokens": output_tokens,
        "total_tokens": audio_tokens + output_tokens,
    }


def _segment(text: str, duration: float, temperature: float) -> dict[str, Any]:
    return {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": duration,
        "text": text,
        "tokens": [],
        "temperature": temperature,
        "avg_logprob": -0.25,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.01,
    }


def _plain_text(response_format: str, text: str, duration: float) -> str:
    """The body of the text, srt and vtt formats: one cue spanning the whole clip."""
    if response_format == "srt":
        return f"1\n{_timestamp(0, ',')} --> {_timestamp(duration, ',')}\n{text}\n\n"
    if response_format == "vtt":
        return f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(duration, '.')}\n{text}\n\n"
    return f"{text}\n"


def _timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (srt) or HH:MM:SS.mmm (vtt)."""
    ms = round(seconds * 1000)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"
