"""Audio transcriptions and translations end to end: clips stored at intake, sent as multipart, answers kept.

In process (`pipeline run`) and through real `pipeline worker` processes over real Redis, with the clip files
deleted before the worker starts: the worker sends what intake stored in the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from pipeline.cli import EXIT_INVALID_INPUT
from pipeline.fakeapi import FakeServer
from pipeline.send import transport
from pipeline.settings import Settings
from pipeline.store import blobs
from pipeline.store.db import open_database
from pipeline.store.models import Batch, Blob, Request
from tests.conftest import TEST_KEY, invoke
from tests.helpers import attempt_count, chat_line, db_rows, parse_csv, parse_jsonl, write_jsonl
from tests.services import Fleet, wait_for

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
REPO = Path(__file__).resolve().parent.parent

#: custom_id -> (url, clip, body beyond model and file): every transcription format, two for translations
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "t-json": (TRANSCRIPTIONS, "one.wav", {"response_format": "json"}),
    "t-text": (TRANSCRIPTIONS, "one.wav", {"response_format": "text", "prompt": "A tone."}),
    "t-srt": (TRANSCRIPTIONS, "long.wav", {"response_format": "srt", "language": "en"}),
    "t-verbose": (
        TRANSCRIPTIONS,
        "long.wav",
        {"response_format": "verbose_json", "temperature": 0.2, "timestamp_granularities": ["segment"]},
    ),
    "t-vtt": (TRANSCRIPTIONS, "one.wav", {"response_format": "vtt"}),
    "r-json": (TRANSLATIONS, "one.wav", {}),
    "r-text": (TRANSLATIONS, "long.wav", {"response_format": "text", "temperature": 0}),
}
#: seconds of each clip the cases use
CLIP_SECONDS = {"one.wav": 1.0, "long.wav": 1.5}


def write_wav(path: Path, seconds: float, frequency: float = 440.0) -> bytes:
    """A 16 kHz mono sine tone; returns the file's bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 16_000
    frames = b"".join(
        round(8000 * math.sin(2 * math.pi * frequency * n / rate)).to_bytes(2, "little", signed=True)
        for n in range(round(seconds * rate))
    )
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(frames)
    return path.read_bytes()


def audio_line(custom_id: str, url: str, file: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": "whisper-1", "file": file, **body},
    }


def case_file(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """The job file of CASES and its clips under tmp_path/clips; returns (job file, clip name -> bytes)."""
    clips = {
        name: write_wav(tmp_path / "clips" / name, secs, 300 + 100 * i)
        for i, (name, secs) in enumerate(CLIP_SECONDS.items())
    }
    lines = [audio_line(cid, url, f"clips/{clip}", **extra) for cid, (url, clip, extra) in CASES.items()]
    return write_jsonl(tmp_path / "audio.jsonl", lines), clips


def timestamp(seconds: float, sep: str) -> str:
    return f"00:00:{int(seconds):02d}{sep}{round(seconds % 1 * 1000):03d}"


def expected_output(custom_id: str, data: bytes) -> str:
    url, clip, extra = CASES[custom_id]
    verb = "transcript" if url == TRANSCRIPTIONS else "translation"
    text = f"{verb} of {hashlib.sha256(data).hexdigest()[:8]}"
    end = CLIP_SECONDS[clip]
    return {
        "text": f"{text}\n",
        "srt": f"1\n00:00:00,000 --> {timestamp(end, ',')}\n{text}\n\n",
        "vtt": f"WEBVTT\n\n00:00:00.000 --> {timestamp(end, '.')}\n{text}\n\n",
    }.get(extra.get("response_format", "json"), text)


def check_stored(batch_id: str, clips: dict[str, bytes], csv_text: str) -> None:
    """Every case succeeded once, its output, content type and audio seconds stored, the CSV agreeing."""
    rows = db_rows(batch_id)
    assert set(rows) == set(CASES)
    for custom_id, (_, clip, extra) in CASES.items():
        request, result = rows[custom_id]["request"], rows[custom_id]["result"]
        assert (request.status, request.attempts, result.http_status) == ("succeeded", 1, 200), custom_id
        assert result.output == expected_output(custom_id, clips[clip]), custom_id
        fmt = extra.get("response_format", "json")
        if fmt in ("json", "verbose_json"):
            assert result.content_type.startswith("application/json"), custom_id
            body = orjson.loads(result.body)
            # whisper-1 bills whole seconds: the stored seconds are the usage, not the clip's duration
            assert result.audio_seconds == math.ceil(CLIP_SECONDS[clip]), custom_id
            assert body["usage"] == {"type": "duration", "seconds": math.ceil(CLIP_SECONDS[clip])}
            if fmt == "verbose_json":
                assert body["duration"] == CLIP_SECONDS[clip] and body["language"] == "english"
                assert body["segments"][0]["text"] == result.output
        else:
            assert result.content_type.startswith("text/plain"), custom_id
            assert result.body == result.output and result.audio_seconds is None, custom_id
        assert result.total_tokens is None, custom_id  # whisper-1 reports seconds, not tokens
    csv_rows = {row["custom_id"]: row for row in parse_csv(csv_text)}
    assert set(csv_rows) == set(CASES)
    for custom_id, row in csv_rows.items():
        assert row["output"] == rows[custom_id]["result"].output
        assert row["status"] == "succeeded" and row["endpoint"] == CASES[custom_id][0]


def fingerprint(data: bytes, filename: str, fields: dict[str, str]) -> str:
    """The fake's fingerprint of an upload (pipeline/fakeapi/_audio.py)."""
    described = orjson.dumps({"fields": fields, "filename": filename}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data + b"\n" + described).hexdigest()


def blob_count() -> int:
    with open_database(Settings.load().db_url).read() as s:
        return int(s.scalar(select(func.count()).select_from(Blob)) or 0)


def run(fake: FakeServer, path: Path, *extra: str) -> str:
    result = invoke("run", str(path), "--base-url", fake.url, *extra)
    assert result.exit_code == 0, result.stderr
    return result.stdout.split()[-1]


# --- in process ----------------------------------------------------------------------------------------


def test_every_format_through_run_is_stored_and_exported(fake: FakeServer, tmp_path: Path) -> None:
    path, clips = case_file(tmp_path)
    batch_id = run(fake, path)
    check_stored(batch_id, clips, invoke("export", batch_id, "--format", "csv").stdout)

    # Sent exactly as the API expects: the fake fingerprints the file bytes, its name and every form field.
    t_verbose = fingerprint(
        clips["long.wav"],
        "long.wav",
        {
            "model": "whisper-1",
            "response_format": "verbose_json",
            "temperature": "0.2",
            "timestamp_granularities[]": "segment",
        },
    )
    r_text = fingerprint(
        clips["long.wav"], "long.wav", {"model": "whisper-1", "response_format": "text", "temperature": "0"}
    )
    bodies = fake.stats()["bodies"]
    assert len(bodies) == len(CASES) and t_verbose in bodies and r_text in bodies

    # jsonl keeps text bodies as text and parses JSON ones; the openai format likewise.
    rows = db_rows(batch_id)
    exported = parse_jsonl(invoke("export", batch_id, "--format", "jsonl").stdout)
    assert {record["custom_id"] for record in exported} == set(rows) and len(rows) == len(CASES)
    for record in exported:
        stored = rows[record["custom_id"]]["result"]
        body = record["response"]["body"]
        assert record["output"] == stored.output
        assert body == (orjson.loads(stored.body) if "json" in stored.content_type else stored.body)
    openai_lines = parse_jsonl(invoke("export", batch_id, "--format", "openai").stdout)
    assert {record["custom_id"] for record in openai_lines} == set(rows)
    for record in openai_lines:
        assert record["error"] is None and record["response"]["status_code"] == 200


def test_token_billed_models_store_token_usage(fake: FakeServer, tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", 1.0)
    line = audio_line("gpt", TRANSCRIPTIONS, "a.wav", model="gpt-4o-transcribe", language="en")
    result = db_rows(run(fake, write_jsonl(tmp_path / "jobs.jsonl", [line])))["gpt"]["result"]
    assert result.audio_seconds is None
    assert (
        result.prompt_tokens == 10 and result.total_tokens == result.prompt_tokens + result.completion_tokens
    )


def test_shorthand_endpoint_and_absolute_paths(fake: FakeServer, tmp_path: Path) -> None:
    data = write_wav(tmp_path / "elsewhere" / "clip.wav", 1.0)
    bodies = [{"model": "whisper-1", "file": str(tmp_path / "elsewhere" / "clip.wav")}]
    (tmp_path / "jobs").mkdir()
    path = write_jsonl(tmp_path / "jobs" / "bare.jsonl", bodies)
    batch_id = run(fake, path, "--endpoint", "translations", "--audio-root", str(tmp_path / "elsewhere"))
    result = db_rows(batch_id)["line-1"]["result"]
    assert result.output == f"translation of {hashlib.sha256(data).hexdigest()[:8]}"


def test_audio_and_chat_lines_in_one_file(fake: FakeServer, tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", 1.0)
    lines = [chat_line("chat", "hello"), audio_line("audio", TRANSCRIPTIONS, "a.wav", response_format="text")]
    rows = db_rows(run(fake, write_jsonl(tmp_path / "jobs.jsonl", lines)))
    assert rows["chat"]["result"].output == "echo: hello"
    assert rows["chat"]["request"].blob_sha256 is None
    assert rows["audio"]["result"].output.startswith("transcript of ")


def test_a_clip_named_by_100_lines_is_stored_once(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_wav(tmp_path / "clips" / "same.wav", 1.0)
    hashed: list[Path] = []
    real_hash = blobs.hash_file

    def counting_hash(path: Path) -> tuple[str, int]:
        hashed.append(path)
        return real_hash(path)

    monkeypatch.setattr(blobs, "hash_file", counting_hash)
    # relative and absolute name one path; the `..` spelling is another path to the same content
    names = ["clips/same.wav", str(tmp_path / "clips" / "same.wav"), "clips/../clips/same.wav"]
    lines = [audio_line(f"l{i}", TRANSCRIPTIONS, names[i % 3], prompt=f"line {i}") for i in range(100)]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    batch_id = run(fake, path)

    assert len(hashed) == 2, "each distinct path is hashed once per intake"
    sha = hashlib.sha256(data).hexdigest()
    rows = db_rows(batch_id)
    assert len(rows) == 100 and blob_count() == 1
    assert {row["request"].blob_sha256 for row in rows.values()} == {sha}
    assert all(row["request"].status == "succeeded" for row in rows.values())
    assert fake.stats()["answered"] == 100 and len(fake.stats()["bodies"]) == 100

    run(fake, path, "--force")  # a second batch naming the same clip stores no second copy
    assert blob_count() == 1
    with open_database(Settings.load().db_url).read() as s:
        assert s.scalar(select(func.count()).where(Request.blob_sha256 == sha)) == 200


def test_retries_resend_identical_bytes(fake: FakeServer, tmp_path: Path) -> None:
    fake.config.error_rate = 0.3
    clips = {name: write_wav(tmp_path / name, 1.0, freq) for name, freq in (("a.wav", 300), ("b.wav", 500))}
    lines = [
        audio_line(f"r{i}", TRANSCRIPTIONS, "a.wav" if i % 2 else "b.wav", prompt=f"clip {i}")
        for i in range(40)
    ]
    batch_id = run(fake, write_jsonl(tmp_path / "jobs.jsonl", lines), "--max-attempts", "30")

    expected = {
        fingerprint(
            clips[line["body"]["file"]],
            line["body"]["file"],
            {"model": "whisper-1", "prompt": line["body"]["prompt"]},
        ): line["custom_id"]
        for line in lines
    }
    stats = fake.stats()
    bodies = stats["bodies"]
    # Whatever the API received is one of the 40 requests exactly, so a fingerprint received more than once
    # is one request sent again with identical bytes and fields.
    assert set(bodies) == set(expected)
    retried = [fp for fp, entry in bodies.items() if entry["received"] > 1]
    assert retried, "no retries happened"
    assert all(entry["answered"] == 1 for entry in bodies.values())
    rows = db_rows(batch_id)
    for fp in retried:
        assert rows[expected[fp]]["request"].attempts == bodies[fp]["received"]
    assert attempt_count(batch_id) == stats["received"]
    assert all(row["request"].status == "succeeded" for row in rows.values())


def test_form_fields_are_sent_in_order_with_lists_repeated() -> None:
    body = {
        "model": "whisper-1",
        "file": "clips/my clip.mp3",
        "language": "en",
        "temperature": 0.5,
        "timestamp_granularities": ["word", "segment"],
        "prompt": None,
    }
    raw = asyncio.run(_render(transport.form_data(body, b"ID3 bytes")))
    names = re.findall(rb'; name="([^"]*)"', raw)
    granularities = [b"timestamp_granularities[]"] * 2
    assert names == [b"file", b"model", b"language", b"temperature", *granularities]
    assert b'filename="my clip.mp3"' in raw and b"Content-Type: audio/mpeg" in raw
    assert b"\r\n\r\n0.5\r\n" in raw and b"\r\n\r\nword\r\n" in raw and b"\r\n\r\nsegment\r\n" in raw


async def _render(form: Any) -> bytes:
    payload = form()
    chunks: list[bytes] = []

    class Sink:
        async def write(self, data: bytes) -> None:
            chunks.append(bytes(data))

    await payload.write(Sink())
    return b"".join(chunks)


# --- bad audio lines -----------------------------------------------------------------------------------


def _missing(clips: Path) -> str:
    return "clips/nope.wav"


def _wrong_extension(clips: Path) -> str:
    (clips / "notes.txt").write_text("not audio")
    return "clips/notes.txt"


def _too_large(clips: Path) -> str:
    with open(clips / "big.wav", "wb") as fh:
        fh.truncate(25 * 1024 * 1024 + 1)  # sparse: no 25 MB written to disk
    return "clips/big.wav"


def _empty(clips: Path) -> str:
    (clips / "empty.wav").write_bytes(b"")
    return "clips/empty.wav"


def _text_as_wav(clips: Path) -> str:
    (clips / "notes.wav").write_text("not audio at all")
    return "clips/notes.wav"


def _random_as_mp3(clips: Path) -> str:
    (clips / "noise.mp3").write_bytes(bytes(range(7, 255)) * 4)
    return "clips/noise.mp3"


def _directory(clips: Path) -> str:
    (clips / "x.wav").mkdir()  # tests run as root, so permission bits cannot make a file unreadable
    return "clips/x.wav"


BAD_FILES: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (_missing, "body.file: no such file 'clips/nope.wav'"),
    "wrong extension": (
        _wrong_extension,
        "body.file: unsupported audio format '.txt' (expected one of flac,",
    ),
    "over 25 MB": (_too_large, "body.file: 25.1 MB is over the 25 MB limit"),
    "unreadable": (_directory, "body.file: cannot read 'clips/x.wav': Is a directory"),
    "empty": (_empty, "body.file: 'clips/empty.wav' is empty"),
    "text named wav": (_text_as_wav, "body.file: 'clips/notes.wav' is not WAV (expected RIFF....WAVE"),
    "random named mp3": (_random_as_mp3, "body.file: 'clips/noise.mp3' is not MP3 (expected an ID3 tag"),
}


@pytest.mark.parametrize("command", ["run", "submit"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_audio_file_is_named_and_nothing_is_stored_or_sent(
    fake: FakeServer, tmp_path: Path, case: str, command: str
) -> None:
    write_wav(tmp_path / "clips" / "good.wav", 1.0)
    make_bad, message = BAD_FILES[case]
    lines = [
        audio_line("good", TRANSCRIPTIONS, "clips/good.wav"),
        audio_line("bad", TRANSCRIPTIONS, make_bad(tmp_path / "clips")),
        audio_line("good2", TRANSLATIONS, "clips/good.wav"),
    ]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    # submit goes through the filesystem broker in the data directory: nothing to start
    result = invoke(command, str(path), *(["--base-url", fake.url] if command == "run" else []))
    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}:2: {message}" in result.stderr
    assert "nothing was stored or sent" in result.stderr
    with open_database(Settings.load().db_url).read() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 0
        assert s.scalar(select(func.count()).select_from(Request)) == 0
    assert blob_count() == 0  # the good line's clip was stored in the transaction that rolled back
    assert fake.stats()["received"] == 0


# --- the shipped examples ------------------------------------------------------------------------------


def test_make_clips_and_the_example_job_files(fake: FakeServer, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for name in ("audio-transcriptions.jsonl", "audio-translations.jsonl"):
        shutil.copy(REPO / "jobs" / name, jobs / name)
    env = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": ""}  # no ffmpeg: WAVs only
    subprocess.run(
        [sys.executable, str(REPO / "jobs" / "make_clips.py"), str(jobs / "clips")], check=True, env=env
    )
    assert sorted(p.suffix for p in (jobs / "clips").iterdir()) == [".wav"] * len(
        list((jobs / "clips").iterdir())
    )
    for name in ("audio-transcriptions.jsonl", "audio-translations.jsonl"):
        batch_id = run(fake, jobs / name)
        rows = db_rows(batch_id)
        assert rows and all(row["request"].status == "succeeded" for row in rows.values())
        assert all(row["result"].output for row in rows.values())


# --- real workers over real Redis, the clips deleted first ---------------------------------------------


def fleet_env(fake: FakeServer, database_url: str, broker_url: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": fake.url,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_BROKER_URL": broker_url,
        "PIPELINE_LEASE_SECONDS": "4",
        "PIPELINE_TIMEOUT": "10",
    }


@pytest.mark.integration
def test_a_worker_sends_stored_clips_after_the_files_are_deleted(
    fake: FakeServer,
    make_fleet: Callable[..., Fleet],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)  # db_rows reads the fleet's database
    path, clips = case_file(tmp_path)
    fleet = make_fleet(**fleet_env(fake, database_url, redis_url))
    batch_id = fleet.cli("submit", str(path)).stdout.split()[-1]
    shutil.rmtree(tmp_path / "clips")  # as on another machine: only the database has the audio
    assert blob_count() == len(clips)

    fleet.start()

    def done() -> bool:
        counts = orjson.loads(fleet.cli("status", batch_id, "--json").stdout)
        return bool(counts["succeeded"] + counts["failed"] == counts["total"])

    wait_for(done, 60, interval=0.5)
    check_stored(batch_id, clips, fleet.cli("export", batch_id, "--format", "csv").stdout)
    assert fake.stats()["received"] == len(CASES)
