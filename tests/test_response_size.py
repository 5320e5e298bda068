"""The response size cap counts decoded bytes: a compression bomb fails its request and memory stays bounded.

A small aiohttp server in this module answers chat requests with gzip and deflate bombs (512 MiB of zeros
in about 500 KB), with and without Content-Length, and with a small compressed answer that must decode.
`pipeline run` runs as a real process on SQLite and PostgreSQL; its peak RSS (from wait4) must stay far
below one bomb, let alone the several in flight at once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from pipeline.send.bodies import Decoder, UndecodableBody
from tests.conftest import TEST_KEY
from tests.helpers import chat_line, parse_jsonl, write_jsonl

pytestmark = pytest.mark.integration

#: Decoded size of each bomb.
BOMB_BYTES = 512 * 1024 * 1024
#: The cap the run is given.
CAP = 1024 * 1024
#: Peak RSS allowed for the run: a bare run here peaks near 140 MiB; one bomb read whole is 512 MiB.
MAX_RSS_MIB = 320

#: zlib window bits: gzip, zlib-wrapped deflate, raw deflate (as some servers send "deflate").
WBITS = {"gzip": 31, "deflate": 15, "raw-deflate": -15}


@cache
def bomb(kind: str) -> bytes:
    """BOMB_BYTES of zeros, compressed."""
    packer = zlib.compressobj(9, zlib.DEFLATED, WBITS[kind])
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(BOMB_BYTES // len(zeros))) + packer.flush()


def compressed(kind: str, data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, WBITS[kind])
    return packer.compress(data) + packer.flush()


def _answer(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )


async def _chat(request: web.Request) -> web.StreamResponse:
    """The prompt names the answer: `<kind> <length|chunked> <bomb|small>`."""
    prompt = (await request.json())["messages"][-1]["content"]
    kind, framing, size = prompt.split()
    body = bomb(kind) if size == "bomb" else compressed(kind, _answer(f"decoded {kind} {framing}"))
    encoding = "gzip" if kind == "gzip" else "deflate"
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    if framing == "length":
        return web.Response(body=body, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(body), 16 * 1024):
        await response.write(body[start : start + 16 * 1024])
    await response.write_eof()
    return response


@pytest.fixture
def bomb_server() -> Iterator[str]:
    """The server's base URL; it runs in a thread with its own loop."""
    for kind in WBITS:
        bomb(kind)  # built before the server answers: never inside a request
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/v1"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


#: `python -m pipeline ARGS` that writes its own peak RSS (VmHWM, KiB) to $PEAK_FILE as it exits. The
#: kernel's ru_maxrss of a child counts the RSS it had before exec, i.e. the forking test process's (which
#: grows past this bound over a long session); VmHWM belongs to the program that was exec'd.
_MEASURED = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(kib)
atexit.register(_peak)
sys.argv = ["pipeline", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def _run_measured(args: list[str], env: dict[str, str], log: Path) -> tuple[int, int]:
    """Run `pipeline ARGS`; (exit code, peak RSS in MiB)."""
    peak = log.with_suffix(".peak")
    with open(log, "wb") as out:
        code = subprocess.run(
            [sys.executable, "-c", _MEASURED, *args],
            env={**env, "PEAK_FILE": str(peak)},
            stdout=out,
            stderr=out,
            timeout=600,
        ).returncode
    return code, int(peak.read_text()) // 1024


def test_bombs_fail_with_response_too_large_and_memory_stays_bounded(
    bomb_server: str, database_url: str, tmp_path: Path
) -> None:
    cases = [f"{kind} {framing}" for kind in WBITS for framing in ("length", "chunked")]
    lines = [chat_line(f"bomb {case}", f"{case} bomb") for case in cases]
    lines += [chat_line(f"small {case}", f"{case} small") for case in cases]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))},
        "OPENAI_API_KEY": TEST_KEY,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_MAX_RESPONSE_BYTES": str(CAP),
    }
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    code, peak_mib = _run_measured(["run", str(path), "--base-url", bomb_server], env, tmp_path / "run.log")
    log = (tmp_path / "run.log").read_text()
    assert code == 3, log  # the bombs failed, the rest succeeded
    print(
        f"peak RSS with {len(cases)} bombs of {BOMB_BYTES >> 20} MiB at a {CAP >> 20} MiB cap: {peak_mib} MiB"
    )
    assert peak_mib < MAX_RSS_MIB, peak_mib

    exported = subprocess.run(
        [sys.executable, "-m", "pipeline", "export", "--format", "jsonl"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    records = {r["custom_id"]: r for r in parse_jsonl(exported.stdout.decode())}
    for case in cases:
        failed, small = records[f"bomb {case}"], records[f"small {case}"]
        assert failed["status"] == "failed" and failed["error"]["type"] == "response_too_large", failed
        assert failed["attempts"] == 1  # never retried
        assert small["status"] == "succeeded" and small["output"] == f"decoded {case}", small


def test_the_decoder_never_inflates_more_than_asked() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    for kind in WBITS:
        decoder = Decoder("gzip" if kind == "gzip" else "deflate")
        packed = compressed(kind, data)
        chunks = [packed[start : start + 1000] for start in range(0, len(packed), 1000)]
        pieces = [piece for chunk in chunks for piece in decoder.feed(chunk, 4096)]
        assert max(len(p) for p in pieces) <= 4096 and b"".join(pieces) == data
        decoder.check_complete()
    two_members = compressed("gzip", b"first ") + compressed("gzip", b"second")
    assert b"".join(Decoder("gzip").feed(two_members, 3)) == b"first second"


def test_the_decoder_refuses_what_it_cannot_decode() -> None:
    with pytest.raises(UndecodableBody, match="'br' is not supported"):
        Decoder("br")
    truncated = Decoder("gzip")
    list(truncated.feed(compressed("gzip", b"x" * 1000)[:20], 100))
    with pytest.raises(UndecodableBody, match="truncated"):
        truncated.check_complete()
    with pytest.raises(UndecodableBody, match="does not decode"):
        list(Decoder("gzip").feed(b"\x1f\x8bnot gzip at all", 100))
