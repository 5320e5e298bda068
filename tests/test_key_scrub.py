"""An API key a server quotes in its answers (whole, or masked as OpenAI does) is scrubbed before anything
is stored, logged, printed or exported.

Real `pipeline run` and `pipeline resume` processes against the fake API over HTTP, which quotes the key of
every request in every error answer (`quote_key`), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipeline.cli import EXIT_PAUSED, EXIT_SOME_FAILED
from pipeline.fakeapi import FakeConfig, FakeServer
from pipeline.settings import Secret
from tests.helpers import chat_line, write_jsonl
from tests.leaks import dump_database

pytestmark = pytest.mark.integration

#: Keys whose last characters are not hex, so no request id can hold them by chance.
RIGHT = "sk-proj-RIGHTkeyQQ77xxPLMN-ZqWv"
WRONG = "sk-proj-WRONGkeyJJ55yyKLMN-YxRu"


@pytest.fixture
def quoting_fake() -> Iterator[FakeServer]:
    with FakeServer(FakeConfig(api_key=RIGHT, quote_key=True, seed=1)) as server:
        yield server


def _pipeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _pieces(key: str) -> list[str]:
    """What must appear nowhere: the key, most of it, its masked form and its last four characters."""
    return [key, key[8:], key[-4:], f"{key[:5]}****"]


def test_a_key_quoted_by_the_api_is_stored_logged_and_exported_nowhere(
    quoting_fake: FakeServer, database_url: str, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))},
        "OPENAI_API_KEY": WRONG,
        "OPENAI_BASE_URL": quoting_fake.url,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
    }
    lines = [chat_line(f"q{i}", f"question {i}") for i in range(20)]
    lines.append(chat_line("refused", 'fake:{"status": 400, "code": "invalid_value"}'))
    lines.append(chat_line("flaky", 'fake:{"status": 500, "times": 1}'))
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)

    # The wrong key: 401s quoting it whole and masked; the batch pauses with the API's message.
    paused = _pipeline(env, "run", str(path))
    assert paused.returncode == EXIT_PAUSED, paused.stderr
    batch_id = paused.stdout.split()[-1]
    status = orjson.loads(_pipeline(env, "status", batch_id, "--json").stdout)
    assert status["pause_reason"].startswith("HTTP 401: Incorrect API key provided: ***")
    # The right key: a 400 and a 500 quoting it; the 400's answer is stored as the row's result.
    env["OPENAI_API_KEY"] = RIGHT
    resumed = _pipeline(env, "resume", batch_id)
    assert resumed.returncode == EXIT_SOME_FAILED, resumed.stderr

    texts = [paused.stdout, paused.stderr, resumed.stdout, resumed.stderr]
    for args in (("status", batch_id, "--json"), ("errors", batch_id, "--json"), ("batches", "--json")):
        texts.append(_pipeline(env, *args).stdout)
    for fmt in ("csv", "jsonl", "openai"):
        texts.append(_pipeline(env, "export", batch_id, "--format", fmt).stdout)
    dump = dump_database(database_url)
    files = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    texts += [dump, files.decode("latin-1")]

    for key in (RIGHT, WRONG):
        for piece in _pieces(key):
            assert not [t for t in texts if piece in t], piece
    # The answers were stored, scrubbed: the attempts' messages and the 400's body say so.
    assert dump.count("your key: ***; masked: ***") >= 3, dump[:2000]
    errors = [orjson.loads(line) for line in texts[5].splitlines()]
    assert [e["custom_id"] for e in errors] == ["refused"] and "***" in errors[0]["message"]


def test_scrub_finds_the_forms_servers_quote() -> None:
    key = Secret(RIGHT)
    quoted = (
        f"Incorrect API key provided: {RIGHT[:8]}{'*' * 40}{RIGHT[-4:]}. Also {RIGHT}, "
        f"{RIGHT[:5]}****{RIGHT[-4:]}, …{RIGHT[-4:]}, {RIGHT[:20]}, the end... Sorry about that..."
    )
    scrubbed = key.scrub(quoted.encode()).decode()
    assert scrubbed == (
        "Incorrect API key provided: ***. Also ***, ***, ***, ***, the end... Sorry about that..."
    )
    assert not re.search("RIGHT|ZqWv", scrubbed)
    assert (
        key.scrub(b'{"choices": [{"text": "sk-proj is a prefix"}]}')
        == b'{"choices": [{"text": "sk-proj is a prefix"}]}'
    )
