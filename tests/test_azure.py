"""Azure OpenAI against the fake in its Azure mode: the deployments API and the v1 API, the `api-key` header,
Azure's error bodies; the key stored, logged and exported nowhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import EXIT_PAUSED
from pipeline.fakeapi import FakeConfig, FakeServer
from pipeline.settings import Settings
from tests.conftest import invoke
from tests.helpers import batch_of, chat_line, status_of, write_jsonl
from tests.leaks import dump_database
from tests.test_audio import write_wav

AZURE_KEY = "az-SECRET-0c9b8a7f6e5d4c3b2a1f0e9d"
VERSION = "2024-10-21"


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The fake in Azure mode with three deployments, accepting only AZURE_KEY, set in the SDK's variable."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    monkeypatch.delenv("OPENAI_API_KEY")
    config = FakeConfig(
        api_key=AZURE_KEY,
        azure=True,
        deployments=["gpt-4o-mini", "emb-small", "whisper"],
        api_versions=[VERSION],
        seed=1,
    )
    with FakeServer(config) as server:
        yield server


def _endpoint(server: FakeServer) -> str:
    return server.url.removesuffix("/v1")


def _azure(server: FakeServer, *args: str) -> list[str]:
    return ["--azure-endpoint", _endpoint(server), *args]


def test_chat_embeddings_and_audio_run_through_azure_deployments(
    azure: FakeServer, tmp_path: Path, database_url: str
) -> None:
    chat = write_jsonl(tmp_path / "chat.jsonl", [chat_line(f"c{i}", f"q{i}") for i in range(5)])
    emb = write_jsonl(
        tmp_path / "emb.jsonl",
        [{"model": "emb-small", "input": f"text {i}"} for i in range(3)],
    )
    write_wav(tmp_path / "clips" / "one.wav", 0.5)
    audio = write_jsonl(tmp_path / "audio.jsonl", [{"model": "whisper", "file": "clips/one.wav"}])
    db = ["--database-url", database_url]
    for path, endpoint in ((chat, "chat"), (emb, "embeddings"), (audio, "transcriptions")):
        extra = ["--deployment", "emb-small=text-embedding-3-small"] if endpoint == "embeddings" else []
        result = invoke(
            "run", str(path), "--endpoint", endpoint, *db, *_azure(azure, "--api-version", VERSION), *extra
        )
        assert result.exit_code == 0, result.stderr
        report = status_of(batch_of(result.stdout), *db)
        assert report["state"] == "completed" and report["succeeded"] == report["total"]
    assert azure.stats()["by_status"] == {"200": 9}


def test_the_v1_api_names_the_deployment_in_the_body(azure: FakeServer, tmp_path: Path) -> None:
    """Without --api-version: Azure's v1 routes; a line naming a model goes to the deployment serving it."""
    azure.config.deployments = ["mini-prod"]
    chat = write_jsonl(tmp_path / "chat.jsonl", [chat_line(f"c{i}", f"q{i}") for i in range(4)])
    result = invoke("run", str(chat), *_azure(azure, "--deployment", "mini-prod=gpt-4o-mini"))
    assert result.exit_code == 0, result.stderr
    report = status_of(batch_of(result.stdout))
    assert report["succeeded"] == 4
    assert report["cost_usd"] > 0  # priced as the model the deployment serves


@pytest.mark.parametrize(
    ("args", "model", "expected"),
    [
        (
            ("--api-version", VERSION),
            "no-such-deployment",
            "The API deployment for this resource does not exist",
        ),
        (("--api-version", "2099-01-01"), "gpt-4o-mini", "Resource not found (Azure: is the api-version"),
    ],
    ids=["wrong-deployment", "unsupported-api-version"],
)
def test_a_wrong_deployment_or_api_version_is_one_line_and_pauses(
    azure: FakeServer, tmp_path: Path, database_url: str, args: tuple[str, ...], model: str, expected: str
) -> None:
    lines = [chat_line(f"c{i}", f"q{i}", model=model) for i in range(20)]
    db = ["--database-url", database_url]
    result = invoke("run", str(write_jsonl(tmp_path / "a.jsonl", lines)), *db, *_azure(azure, *args))
    assert result.exit_code == EXIT_PAUSED, result.stderr
    paused = [line for line in result.stderr.splitlines() if line.startswith("paused:")]
    assert len(paused) == 1 and expected in paused[0]
    report = status_of(batch_of(result.stdout), *db)
    assert report["state"] == "paused" and report["queued"] == 20
    assert azure.stats()["received"] <= 4  # the probe, not the batch


def test_a_deployment_route_without_api_version_is_azure_s_404() -> None:
    import urllib.error
    import urllib.request

    with FakeServer(FakeConfig(azure=True)) as server:
        root = server.url.removesuffix("/v1")
        request = urllib.request.Request(
            f"{root}/openai/deployments/gpt-4o-mini/chat/completions",
            data=b'{"messages": []}',
            headers={"api-key": "k", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 404
        assert info.value.read() == b'{"error":{"code":"404","message":"Resource not found"}}'


def test_the_azure_key_is_stored_logged_and_exported_nowhere(
    azure: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    chat = write_jsonl(tmp_path / "chat.jsonl", [chat_line(f"c{i}", f"q{i}") for i in range(5)])
    result = invoke("run", str(chat), *_azure(azure, "--api-version", VERSION))
    outputs += [result.stdout, result.stderr]
    wrong = AZURE_KEY.replace("SECRET", "WRONGKEY")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", wrong)
    other = write_jsonl(tmp_path / "b.jsonl", [chat_line(f"b{i}", f"b{i}") for i in range(3)])
    result = invoke("run", str(other), *_azure(azure, "--api-version", VERSION))
    assert result.exit_code == EXIT_PAUSED
    outputs += [result.stdout, result.stderr]
    for fmt in ("csv", "jsonl", "openai"):
        outputs.append(invoke("export", "--format", fmt).stdout)
    outputs += [invoke("status", "--json").stdout, invoke("status").stdout]
    settings = Settings.load()
    outputs += [repr(settings), dump_database(settings.db_url)]
    outputs += [record.getMessage() + str(record.exc_info) for record in caplog.records]
    outputs.append(
        b"".join(p.read_bytes() for p in settings.data_dir.rglob("*") if p.is_file()).decode("latin-1")
    )
    for key in (AZURE_KEY, wrong):
        for text in outputs:
            assert key not in text and key[8:] not in text


def test_the_python_api_takes_azure_settings(azure: FakeServer) -> None:
    import pipeline

    rows = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"py{i}"}]} for i in range(3)]
    results = list(pipeline.run(rows, endpoint="chat", azure_endpoint=_endpoint(azure), api_version=VERSION))
    assert [r["status"] for r in results] == ["succeeded"] * 3
