"""The endpoints a job line may name, and the audio upload rules: one table every part of the flow reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One API endpoint a job file can target."""

    #: the `--endpoint` shorthand name
    name: str
    #: the Batch API line's `url`
    url: str
    #: the body names an audio file, sent as multipart
    audio: bool = False


#: Every endpoint, by shorthand name.
ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Endpoint("chat", "/v1/chat/completions"),
        Endpoint("completions", "/v1/completions"),
        Endpoint("transcriptions", "/v1/audio/transcriptions", audio=True),
        Endpoint("translations", "/v1/audio/translations", audio=True),
    )
}
#: Every endpoint, by url.
BY_URL: dict[str, Endpoint] = {e.url: e for e in ENDPOINTS.values()}
#: urls whose body names an audio file to upload.
AUDIO_URLS: frozenset[str] = frozenset(e.url for e in ENDPOINTS.values() if e.audio)

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
