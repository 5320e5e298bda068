"""A job file's audio comes from its own folder (symlinks resolved) or a folder named with --audio-root.

A job file may be someone else's: `../x.wav`, an absolute path or a symlink out of the folder would upload
any audio file the user can read. Each is refused as one `FILE:LINE:` error and nothing is stored; run
against the fake API over HTTP on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.cli import EXIT_INVALID_INPUT
from pipeline.fakeapi import FakeServer
from pipeline.jobs.paths import audio_outside
from tests.conftest import invoke
from tests.helpers import batch_of, status_of, write_jsonl
from tests.test_audio import TRANSCRIPTIONS, audio_line, write_wav


@pytest.fixture(autouse=True)
def _on_every_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(the job folder with clips/inside.wav, a private folder with secret.wav and a symlink into it)."""
    jobs, private = tmp_path / "jobs", tmp_path / "private"
    write_wav(jobs / "clips" / "inside.wav", 0.5)
    write_wav(private / "secret.wav", 0.5)
    os.symlink(private / "secret.wav", jobs / "clips" / "link-out.wav")
    os.symlink(jobs / "clips" / "inside.wav", jobs / "link-in.wav")
    os.symlink(private, jobs / "private-dir")
    return jobs, private


def _job(jobs: Path, *files: str) -> Path:
    lines = [audio_line(f"a{i}", TRANSCRIPTIONS, name) for i, name in enumerate(files, 1)]
    return write_jsonl(jobs / "audio.jsonl", lines)


def test_audio_leaving_the_job_folder_is_refused_line_by_line(
    fake: FakeServer, folders: tuple[Path, Path]
) -> None:
    jobs, private = folders
    escapes = [
        "../private/secret.wav",
        str(private / "secret.wav"),
        "clips/link-out.wav",
        "private-dir/secret.wav",
    ]
    path = _job(jobs, "clips/inside.wav", *escapes, "link-in.wav")
    result = invoke("run", str(path), "--base-url", fake.url)
    assert result.exit_code == EXIT_INVALID_INPUT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{path}:")]
    assert [e.split(":")[1] for e in errors] == ["2", "3", "4", "5"]  # one line each, lines 1 and 6 fine
    assert all("outside the job file's folder" in e and "--audio-root" in e for e in errors)
    assert "secret" not in result.stdout
    assert fake.stats()["received"] == 0
    assert invoke("batches", "--json").stdout.strip() == ""  # nothing stored
    assert invoke("estimate", str(path)).exit_code == EXIT_INVALID_INPUT  # estimate reads as run does


def test_audio_root_allows_a_named_folder(fake: FakeServer, folders: tuple[Path, Path]) -> None:
    jobs, private = folders
    path = _job(jobs, "clips/inside.wav", "../private/secret.wav", "clips/link-out.wav", "link-in.wav")
    result = invoke("run", str(path), "--base-url", fake.url, "--audio-root", str(private))
    assert result.exit_code == 0, result.stderr
    assert status_of(batch_of(result.stdout))["succeeded"] == 4


def test_audio_roots_from_the_environment(
    fake: FakeServer, folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jobs, private = folders
    monkeypatch.setenv("PIPELINE_AUDIO_ROOTS", f"{tmp_path / 'nowhere'}{os.pathsep}{private}")
    result = invoke("run", str(_job(jobs, str(private / "secret.wav"))), "--base-url", fake.url)
    assert result.exit_code == 0, result.stderr


def test_the_check_resolves_before_comparing(folders: tuple[Path, Path]) -> None:
    jobs, private = folders
    assert audio_outside(jobs / "clips" / "inside.wav", "x", jobs) is None
    assert audio_outside(jobs / "clips" / ".." / "link-in.wav", "x", jobs) is None
    assert audio_outside(jobs / "clips" / "link-out.wav", "x", jobs) is not None
    assert audio_outside(jobs / "clips" / "link-out.wav", "x", jobs, [private]) is None
    assert audio_outside(jobs / ".." / "jobs2" / "a.wav", "x", jobs) is not None  # a sibling sharing a prefix
