"""Write the short audio clips that jobs/audio-*.jsonl name, into jobs/clips/ (or the directory given).

Only the standard library: each clip is a WAV of a few sine tones, about a second long, 16 kHz mono 16-bit,
and the same bytes on every run. When `ffmpeg` is on PATH, each clip is also converted to mp3 and ogg;
without it that step is skipped silently (the example job files name only the WAVs).

    python jobs/make_clips.py            # -> jobs/clips/*.wav
    python jobs/make_clips.py /tmp/clips
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

#: Samples per second of every clip.
RATE = 16_000
#: Peak amplitude, as a share of the 16-bit range.
LEVEL = 0.3

#: name -> (seconds, frequencies in Hz played together)
CLIPS: dict[str, tuple[float, tuple[float, ...]]] = {
    "tone-a4": (1.0, (440.0,)),
    "tone-e5": (1.2, (659.25,)),
    "chord-c-major": (1.0, (261.63, 329.63, 392.0)),
    "beep-low": (0.8, (220.0,)),
}


def samples(seconds: float, frequencies: tuple[float, ...]) -> bytes:
    """16-bit little-endian mono samples of the tones, faded in and out over 10 ms to avoid clicks."""
    count = round(seconds * RATE)
    fade = RATE // 100
    peak = LEVEL * 32767 / len(frequencies)
    frames = bytearray()
    for n in range(count):
        envelope = min(1.0, n / fade, (count - 1 - n) / fade)
        value = sum(math.sin(2 * math.pi * f * n / RATE) for f in frequencies) * peak * envelope
        frames += struct.pack("<h", round(value))
    return bytes(frames)


def write_wav(path: Path, seconds: float, frequencies: tuple[float, ...]) -> None:
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(RATE)
        clip.writeframes(samples(seconds, frequencies))


def convert(ffmpeg: str, wav: Path) -> None:
    """mp3 and ogg copies of a WAV; a format this ffmpeg cannot write is skipped."""
    for suffix in (".mp3", ".ogg"):
        subprocess.run(
            [ffmpeg, "-loglevel", "error", "-y", "-i", str(wav), str(wav.with_suffix(suffix))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "clips"
    out.mkdir(parents=True, exist_ok=True)
    ffmpeg = shutil.which("ffmpeg")
    for name, (seconds, frequencies) in CLIPS.items():
        wav = out / f"{name}.wav"
        write_wav(wav, seconds, frequencies)
        if ffmpeg:
            convert(ffmpeg, wav)
    print(f"wrote {len(CLIPS)} clips to {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
