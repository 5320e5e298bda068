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
